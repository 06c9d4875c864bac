"""Input checks: shapes at trace time, values eagerly.

`check_shapes` runs inside every public function while it is traced, so under
`jax.jit` it costs nothing at run time; it only reads static shapes and dtypes.
A mismatch is a `ValueError` naming the expected and the actual shape: batch
axes are never broadcast against each other. `validate_batch` also reads
values (labels, finiteness), so it is eager: call it once on data you load.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

PARAM_FIELDS = (
    "W1_L",
    "b1_L",
    "W1_R",
    "b1_R",
    "W2_L",
    "b2_L",
    "W2_R",
    "b2_R",
    "W2_LR",
    "b2_LR",
    "w3",
    "b3",
)


def param_sizes(params: Any) -> tuple[int, int, int, int]:
    """Checks every leaf of `params` against W1_L and W1_R; returns (D_L, D_R, H, Q).

    Raises:
      TypeError: `params` is not a Params, or a leaf is not a floating array.
      ValueError: a leaf's shape disagrees with the others.
    """
    if getattr(params, "_fields", None) != PARAM_FIELDS:
        raise TypeError(
            f"params must be a gated_jax.Params with fields {PARAM_FIELDS}, "
            f"got {type(params).__name__}"
        )
    for name, leaf in zip(PARAM_FIELDS, params, strict=True):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(f"params.{name} must be an array, got {type(leaf).__name__}")
        if not np.issubdtype(leaf.dtype, np.floating):
            raise TypeError(f"params.{name} must have a floating dtype, got {leaf.dtype}")
    if params.W1_L.ndim != 2:
        raise ValueError(f"params.W1_L has shape {params.W1_L.shape}, expected (H, D_L)")
    if params.W2_L.ndim != 2:
        raise ValueError(f"params.W2_L has shape {params.W2_L.shape}, expected (Q, H)")
    H, D_L = params.W1_L.shape
    Q = params.W2_L.shape[0]
    D_R = params.W1_R.shape[-1] if params.W1_R.ndim == 2 else -1
    expected = {
        "W1_R": ((H, D_R), "(H, D_R)"),
        "b1_L": ((H,), "(H,)"),
        "b1_R": ((H,), "(H,)"),
        "W2_L": ((Q, H), "(Q, H)"),
        "b2_L": ((Q,), "(Q,)"),
        "W2_R": ((Q, H), "(Q, H)"),
        "b2_R": ((Q,), "(Q,)"),
        "W2_LR": ((Q, H), "(Q, H)"),
        "b2_LR": ((Q,), "(Q,)"),
        "w3": ((Q,), "(Q,)"),
        "b3": ((), "()"),
    }
    for name, (shape, symbols) in expected.items():
        actual = tuple(getattr(params, name).shape)
        if actual != shape:
            raise ValueError(
                f"params.{name} has shape {actual}, expected {symbols} = {shape} "
                f"(H={H}, D_L={D_L} from params.W1_L; Q={Q} from params.W2_L)"
            )
    return D_L, D_R, H, Q


def _check_real(name: str, x: Any) -> None:
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.issubdtype(
        x.dtype, np.complexfloating
    ):
        raise TypeError(f"{name} must have a real or integer dtype, got {x.dtype}")


def check_shapes(params: Any, x_left: Any, x_right: Any, t: Any = None) -> tuple[int, ...]:
    """Checks static shapes and dtypes; returns the batch shape (...).

    Args:
      params: Params.
      x_left: (..., D_L).
      x_right: (..., D_R), the same leading shape as x_left.
      t: optional labels, shape (...).

    Raises:
      TypeError: a non-numeric or complex dtype, or labels of dtype bool.
      ValueError: a shape that disagrees with params or with the other inputs.
    """
    D_L, D_R, _, _ = param_sizes(params)
    for name, x, d, symbol in (("x_left", x_left, D_L, "D_L"), ("x_right", x_right, D_R, "D_R")):
        _check_real(name, x)
        if x.ndim < 1 or x.shape[-1] != d:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, expected (..., {symbol}) = (..., {d})"
            )
    batch = tuple(x_left.shape[:-1])
    if tuple(x_right.shape[:-1]) != batch:
        raise ValueError(
            f"x_right has batch shape {tuple(x_right.shape[:-1])} but x_left has {batch}: "
            "the leading axes must be equal (they are never broadcast)"
        )
    if t is not None:
        _check_real("t", t)
        if t.dtype == np.bool_:
            raise TypeError("t has dtype bool; labels are -1 or +1 in a real or integer dtype")
        if tuple(t.shape) != batch:
            raise ValueError(
                f"t has shape {tuple(t.shape)}, expected the batch shape {batch} of x_left"
            )
    return batch


def _first_index(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def validate_batch(params: Any, x_left: Any, x_right: Any, t: Any) -> None:
    """Eager checks of a batch's values, for data that comes from outside.

    Shapes as in `check_shapes`; then every array must be numeric and finite,
    the batch non-empty, and every label -1 or +1.

    Raises:
      ValueError: naming the argument, the count of offending values and the
        index of the first one.
      TypeError: from `check_shapes`, for a wrong params structure.
    """
    arrays = {}
    for name, value in (("x_left", x_left), ("x_right", x_right), ("t", t)):
        if isinstance(value, jax.core.Tracer):
            raise ValueError(f"validate_batch reads values: call it outside jit ({name})")
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.number) or np.issubdtype(
            value.dtype, np.complexfloating
        ):
            raise ValueError(f"{name} has non-numeric dtype {value.dtype}")
        arrays[name] = value
    try:
        batch = check_shapes(params, arrays["x_left"], arrays["x_right"], arrays["t"])
    except TypeError as e:
        if str(e).startswith(("params", "t has dtype bool")):
            raise
        raise ValueError(str(e)) from None
    if int(np.prod(batch)) == 0:
        raise ValueError(f"empty batch: x_left has shape {arrays['x_left'].shape}")
    named = [(f"params.{n}", np.asarray(v)) for n, v in zip(PARAM_FIELDS, params, strict=True)]
    for name, value in [*arrays.items(), *named]:
        bad = ~np.isfinite(value)
        if bad.any():
            raise ValueError(
                f"{name} has {int(bad.sum())} non-finite values (NaN or inf); "
                f"the first at index {_first_index(bad)}"
            )
    t_arr = arrays["t"]
    bad = (t_arr != 1) & (t_arr != -1)
    if bad.any():
        first = _first_index(bad)
        raise ValueError(
            f"t has {int(bad.sum())} labels other than -1 and +1; "
            f"the first at index {first} is {t_arr[first].item()!r}"
        )
