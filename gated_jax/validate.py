"""Input checks: shapes at trace time, values eagerly.

`check_shapes` runs inside every public function while it is traced, so under
`jax.jit` it costs nothing at run time; it only reads static shapes and dtypes.
A mismatch is a `ValueError` naming the expected and the actual shape: batch
axes are never broadcast against each other. `check_activations` does the
same for the `acts` given to `r_vectors`, and `as_array` turns what is not an
array of numbers (None, strings) into a TypeError naming the argument.
`validate_batch` also reads values (labels, finiteness), so it is eager:
call it once on data you load.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
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
ACTIVATION_FIELDS = ("a1_L", "a1_R", "a2_L", "a2_R", "a2_LR", "a3")


def _is_real(dtype: Any) -> bool:
    """bool, integer or floating (bfloat16 and float8 included); not complex, str or object."""
    return dtype == np.bool_ or any(jnp.issubdtype(dtype, k) for k in (jnp.integer, jnp.floating))


def _kind(x: Any) -> str:
    dtype = getattr(x, "dtype", None)
    return f"{type(x).__name__} of dtype {dtype}" if dtype is not None else type(x).__name__


def as_array(name: str, x: Any) -> jax.Array:
    """`jnp.asarray(x)`, or a TypeError naming `name` for what is not an array of numbers.

    Arrays and tracers pass through untouched; Python numbers and (nested)
    lists are converted; None, strings, objects and ragged lists raise.
    """
    if isinstance(x, jax.Array):
        return x
    if x is None:
        raise TypeError(f"{name} must be an array of real numbers, got None")
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of real numbers, got {_kind(x)}") from None


def positive_int(name: str, value: Any) -> int:
    """`value` as an int when it is a positive Python or numpy integer (not bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


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
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(f"params.{name} must have a floating dtype, got {leaf.dtype}")
    if params.W1_L.ndim != 2:
        raise ValueError(f"params.W1_L has shape {params.W1_L.shape}, expected (H, D_L)")
    if params.W1_R.ndim != 2:
        raise ValueError(f"params.W1_R has shape {params.W1_R.shape}, expected (H, D_R)")
    if params.W2_L.ndim != 2:
        raise ValueError(f"params.W2_L has shape {params.W2_L.shape}, expected (Q, H)")
    H, D_L = params.W1_L.shape
    Q = params.W2_L.shape[0]
    D_R = params.W1_R.shape[-1]
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
    if not _is_real(x.dtype):
        raise TypeError(f"{name} must have a real or integer dtype, got {x.dtype}")


def _shaped(name: str, x: Any) -> Any:
    """`x` if it has a shape and a dtype (arrays, tracers, ShapeDtypeStruct), else as_array."""
    return x if hasattr(x, "shape") and hasattr(x, "dtype") else as_array(name, x)


def _check_labels(t: Any, batch: tuple[int, ...], source: str) -> Any:
    t = _shaped("t", t)
    _check_real("t", t)
    if t.dtype == np.bool_:
        raise TypeError("t has dtype bool; labels are -1 or +1 in a real or integer dtype")
    if tuple(t.shape) != batch:
        raise ValueError(
            f"t has shape {tuple(t.shape)}, expected the batch shape {batch} of {source}"
        )
    return t


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
    x_left, x_right = _shaped("x_left", x_left), _shaped("x_right", x_right)
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
        _check_labels(t, batch, "x_left")
    return batch


def check_activations(params: Any, acts: Any, t: Any) -> jax.Array:
    """Checks `acts` (from `forward`) and labels `t` against `params`; returns t as an array.

    Every field must have the batch shape (...) of acts.a3 followed by H or Q:
    a mismatched or broadcastable shape is an error, never broadcast.

    Raises:
      TypeError: `acts` is not an Activations, a field is not a floating array,
        or `t` is not real or is bool.
      ValueError: a field's or t's shape disagrees with params or with acts.a3.
    """
    _, _, H, Q = param_sizes(params)
    if getattr(acts, "_fields", None) != ACTIVATION_FIELDS:
        raise TypeError(
            f"acts must be a gated_jax.Activations with fields {ACTIVATION_FIELDS}, "
            f"got {type(acts).__name__}"
        )
    for name, leaf in zip(ACTIVATION_FIELDS, acts, strict=True):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(f"acts.{name} must be an array, got {type(leaf).__name__}")
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(f"acts.{name} must have a floating dtype, got {leaf.dtype}")
    batch = tuple(acts.a3.shape)
    for name in ACTIVATION_FIELDS[:-1]:
        width, symbol = (H, "H") if name.startswith("a1") else (Q, "Q")
        actual = tuple(getattr(acts, name).shape)
        if actual != (*batch, width):
            raise ValueError(
                f"acts.{name} has shape {actual}, expected (..., {symbol}) = {(*batch, width)} "
                f"(batch shape {batch} from acts.a3, {symbol}={width} from params)"
            )
    return _check_labels(t, batch, "acts.a3")


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
        if value.dtype == np.bool_ or not _is_real(value.dtype):
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
