"""A hypothesis fuzz test of the public API (issue 6): random shapes, dtypes, NaNs,
labels and mismatched params or activations.

Every call either returns finite values that match a float64 numpy reference,
or raises ValueError/TypeError whose message names the argument at fault;
never another exception and never a silent broadcast. NaN inputs are the one
exception to "finite": the functions are pure and jit-compatible, so they do
not read values; a NaN stays in its own example (no other row is touched) and
`validate_batch`, the eager gate for outside data, names it.

Sizes and batch shapes come from short lists so that the eager primitives
compile a handful of times; most examples are mutations, which fail while
tracing and compile nothing.
"""

from __future__ import annotations

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings

import gated_jax as gj

SIZES = [(2, 3, 4, 2), (1, 1, 1, 1)]  # (D_L, D_R, H, Q)
BATCHES = [(), (3,), (2, 2), (0,)]
X_DTYPES = ["float32", "float16", "bfloat16", "int32", "bool", "float64"]
T_DTYPES = ["float32", "int32", "int8", "float16", "float64"]
ANCHORS = ("W1_L", "W1_R", "W2_L")  # the leaves H, Q, D_L and D_R are read from
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
    database=None,  # nothing written into the checkout; a failure prints its reproducer
)

# function -> the arguments it takes (acts stands for forward's output)
TAKES = {
    "forward": {"params", "x_left", "x_right"},
    "logits": {"params", "x_left", "x_right"},
    "predict_proba": {"params", "x_left", "x_right"},
    "loss": {"params", "x_left", "x_right", "t"},
    "autodiff_loss": {"params", "x_left", "x_right", "t"},
    "grads": {"params", "x_left", "x_right", "t"},
    "r_vectors": {"params", "acts", "t"},
    "validate_batch": {"params", "x_left", "x_right", "t"},
}
MUTATIONS = [
    "none", "nan", "labels", "param-axis", "param-grow", "x-width", "x-batch", "t-shape",
    "x-complex", "x-strings", "x-none", "t-bool", "t-strings", "acts-axis", "acts-width",
]  # fmt: skip


def _problem(rng, sizes, batch):
    D_L, D_R, H, Q = sizes
    shapes = {"W1_L": (H, D_L), "b1_L": (H,), "W1_R": (H, D_R), "b1_R": (H,), "W2_L": (Q, H),
              "b2_L": (Q,), "W2_R": (Q, H), "b2_R": (Q,), "W2_LR": (Q, H), "b2_LR": (Q,),
              "w3": (Q,), "b3": ()}  # fmt: skip
    params = gj.Params(**{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()})
    x_left = rng.normal(size=(*batch, D_L))
    x_right = rng.normal(size=(*batch, D_R))
    t = np.where(rng.random(batch) < 0.5, 1, -1)
    return params, x_left, x_right, t


def _cast(x, dtype):
    if dtype == "bool":
        return x > 0
    if dtype == "int32":
        return np.round(2 * x).astype(np.int32)
    return jnp.asarray(x).astype(dtype) if dtype == "bfloat16" else x.astype(dtype)


def _reference(params, x_left, x_right):
    """a3 in float64 numpy, from the inputs as the library reads them."""
    p = {k: np.asarray(v, np.float64) for k, v in params._asdict().items()}
    xl = np.asarray(jnp.asarray(x_left).astype(jnp.float32), np.float64)
    xr = np.asarray(jnp.asarray(x_right).astype(jnp.float32), np.float64)
    z_L, z_R = np.tanh(xl @ p["W1_L"].T + p["b1_L"]), np.tanh(xr @ p["W1_R"].T + p["b1_R"])
    a2_L, a2_R = z_L @ p["W2_L"].T + p["b2_L"], z_R @ p["W2_R"].T + p["b2_R"]
    a2_LR = (z_L + z_R) @ p["W2_LR"].T + p["b2_LR"]
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    return (sig(a2_L) * sig(a2_R) * a2_LR) @ p["w3"] + p["b3"]


def _as_f64(t):
    return np.asarray(jnp.asarray(t).astype(jnp.float32), np.float64)


@st.composite
def cases(draw):
    sizes = draw(st.sampled_from(SIZES))
    batch = draw(st.sampled_from(BATCHES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    params, x_left, x_right, t = _problem(rng, sizes, batch)
    x_left = _cast(x_left, draw(st.sampled_from(X_DTYPES)))
    x_right = _cast(x_right, draw(st.sampled_from(X_DTYPES)))
    t = t.astype(draw(st.sampled_from(T_DTYPES)))
    mutation = draw(st.sampled_from(MUTATIONS))
    n = int(np.prod(batch))
    side = draw(st.sampled_from(["x_left", "x_right"]))
    args = {"params": params, "x_left": x_left, "x_right": x_right, "t": t}
    names, acts_change = (), None  # names: what an error must mention
    if mutation in ("nan", "labels", "x-batch") and n == 0:
        mutation = "none"  # these need an example to act on
    if mutation == "nan":
        row = draw(st.integers(0, n - 1))
        x = np.array(args[side], dtype=np.float32).reshape(n, -1)
        value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        x[row, draw(st.integers(0, x.shape[1] - 1))] = value
        args[side] = x.reshape(np.shape(args[side]))
        names = (side, row, value)
    elif mutation == "labels":
        row = draw(st.integers(0, n - 1))
        bad = np.array(t, dtype=np.float32).reshape(n)
        bad[row] = draw(st.sampled_from([0.0, 2.0, -0.5]))
        args["t"] = bad.reshape(np.shape(t))
        names = ("t",)
    elif mutation in ("param-axis", "param-grow"):
        fields = gj.Params._fields
        field = draw(st.sampled_from([f for f in fields if mutation == "param-axis" or
                                      f not in ANCHORS]))  # fmt: skip
        leaf = np.asarray(getattr(params, field))
        if mutation == "param-axis":  # (1, ...): the shape a broadcast would accept
            leaf = leaf[None]
        else:
            leaf = np.zeros((*leaf.shape[:-1], leaf.shape[-1] + 1) if leaf.ndim else (1,))
            leaf = leaf.astype(np.float32)
        args["params"] = params._replace(**{field: leaf})
        names = (f"params.{field}",)
    elif mutation == "x-width":
        x = np.asarray(args[side])
        args[side] = np.concatenate([x, x[..., :1]], axis=-1)
        names = (side,)
    elif mutation == "x-batch":  # a batch shape that would broadcast against the other
        args[side] = np.asarray(args[side])[None] if draw(st.booleans()) else (
            np.asarray(args[side]).reshape(n, -1)[:1])  # fmt: skip
        if args[side].shape[:-1] == np.shape(x_left)[:-1]:
            args[side] = args[side][None]
        names = ("x_right", "x_left")  # the message names both, from x_right's side
    elif mutation == "t-shape":
        args["t"] = np.asarray(t)[..., None] if draw(st.booleans()) else np.asarray(t)[None]
        names = ("t",)
    elif mutation == "x-complex":
        args[side] = np.asarray(x_left if side == "x_left" else x_right).astype(np.complex64)
        names = (side,)
    elif mutation == "x-strings":
        args[side] = np.full(np.shape(args[side]), "a")
        names = (side,)
    elif mutation == "x-none":
        args[side] = None
        names = (side,)
    elif mutation == "t-bool":
        args["t"] = np.asarray(t) > 0
        names = ("t",)
    elif mutation == "t-strings":
        args["t"] = np.full(np.shape(t), "yes")
        names = ("t",)
    elif mutation in ("acts-axis", "acts-width"):
        acts_change = (draw(st.sampled_from(gj.Activations._fields)), mutation)
        # a3 gives the batch shape, so a wrong a3 shows in the first field checked
        names = ("acts.",) if acts_change[0] == "a3" else (f"acts.{acts_change[0]}",)
    return mutation, args, names, acts_change, (sizes, batch)


def _changed_acts(acts, change):
    field, kind = change
    leaf = getattr(acts, field)
    if kind == "acts-axis":
        leaf = leaf[None]
    else:
        leaf = jnp.concatenate([leaf, leaf], axis=-1) if field != "a3" else leaf[..., None]
    return acts._replace(**{field: leaf})


def _must_raise(mutation, function, args_taken):
    if mutation in ("none", "nan", "labels"):
        return function == "validate_batch" and mutation != "none"
    if mutation.startswith("param"):
        return True
    if mutation.startswith("acts"):
        return function == "r_vectors"
    target = "t" if mutation.startswith("t-") else "x"
    return any(arg.startswith(target) for arg in args_taken)


def _good_acts(params, x_left, x_right):
    """forward of the unmutated inputs, for r_vectors."""
    return gj.forward(params, x_left, x_right)


def _run(function, args, acts):
    p, xl, xr, t = args["params"], args["x_left"], args["x_right"], args["t"]
    if function == "r_vectors":
        return gj.r_vectors(p, acts, t)
    if function == "validate_batch":
        return gj.validate_batch(p, xl, xr, t)
    if function in ("loss", "autodiff_loss", "grads"):
        return getattr(gj, function)(p, xl, xr, t)
    return getattr(gj, function)(p, xl, xr)


def _check_values(function, out, args, acts, mutation, names, sizes, batch):
    """Values of a call that returned: finite and equal to the reference."""
    H, Q = sizes[2], sizes[3]
    if function == "validate_batch":
        assert out is None
        return
    if function == "r_vectors":  # its inputs are acts and t, whatever happened to x
        a3, t = np.asarray(acts.a3, np.float64), _as_f64(args["t"])
        np.testing.assert_allclose(out.r3, -t / (np.exp(t * a3) + 1), rtol=2e-4, atol=2e-5)
        assert out.r1_L.shape == (*batch, H) and out.r2_L.shape == (*batch, Q)
    else:
        a3 = _reference(args["params"], args["x_left"], args["x_right"])
    if mutation == "nan":  # the other examples are untouched; a NaN stays NaN
        if function in ("forward", "logits"):
            got = np.asarray(out.a3 if function == "forward" else out, np.float64).reshape(-1)
            want = _reference(args["params"], args["x_left"], args["x_right"]).reshape(-1)
            row, value = names[1], names[2]
            others = np.arange(got.size) != row
            np.testing.assert_allclose(got[others], want[others], rtol=2e-4, atol=2e-5)
            assert not np.isnan(value) or np.isnan(got[row]), function
        return  # a mean over a NaN example is NaN, as it should be; inf may saturate tanh
    leaves = [np.asarray(leaf, np.float64) for leaf in jax.tree_util.tree_leaves(out)]
    assert all(np.isfinite(leaf).all() for leaf in leaves), (function, out)
    tol = {"rtol": 2e-4, "atol": 2e-5}
    if function == "forward":
        assert out.a1_L.shape == (*batch, H) and out.a2_LR.shape == (*batch, Q)
        np.testing.assert_allclose(out.a3, a3, **tol)
    elif function == "logits":
        np.testing.assert_allclose(out, a3, **tol)
    elif function == "predict_proba":
        np.testing.assert_allclose(out, 1 / (1 + np.exp(-a3)), **tol)
    elif function in ("loss", "autodiff_loss"):
        assert out.shape == ()
        np.testing.assert_allclose(out, np.mean(np.logaddexp(0, -_as_f64(args["t"]) * a3)), **tol)
    elif function == "grads":  # test_vjp compares every leaf with autodiff; here b3's
        assert [g.shape for g in out] == [np.shape(q) for q in args["params"]]
        t = _as_f64(args["t"])
        np.testing.assert_allclose(out.b3, np.mean(-t / (np.exp(t * a3) + 1)), **tol)


@FUZZ
@given(cases())
def test_public_functions_return_correct_values_or_name_the_argument(case):
    mutation, args, names, acts_change, (sizes, batch) = case
    if not mutation.startswith("param") and mutation not in (
        "x-width", "x-batch", "x-complex", "x-strings", "x-none"
    ):  # fmt: skip
        acts = _good_acts(args["params"], args["x_left"], args["x_right"])
    else:
        acts = _good_acts(*_problem(np.random.default_rng(0), sizes, batch)[:3])
    if acts_change is not None:
        acts = _changed_acts(acts, acts_change)
    for function, takes in TAKES.items():
        must_raise = _must_raise(mutation, function, takes - {"params"})
        expected = names
        if function == "validate_batch":  # it wants numbers from files, not bools
            bool_x = [k for k in ("x_left", "x_right") if np.asarray(args[k]).dtype == bool]
            must_raise = must_raise or bool(bool_x)
            expected = (*names, *bool_x)
        if (
            function in ("loss", "autodiff_loss", "grads", "validate_batch")
            and int(np.prod(batch)) == 0
            and not must_raise
        ):
            must_raise, expected = True, ("x_left",)  # a mean over no example, or no data
        try:
            out = _run(function, args, acts)
        except (ValueError, TypeError) as e:
            assert must_raise, f"{function} raised on {mutation}: {e}"
            message = str(e)
            wanted = [n for n in expected if isinstance(n, str)]
            assert any(n in message for n in wanted), (
                f"{function}: {message!r} names none of {wanted}"
            )
            continue
        assert not must_raise, f"{function} returned on {mutation} (names {expected})"
        _check_values(function, out, args, acts, mutation, names, sizes, batch)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"key": 5}, TypeError, "key"),
        ({"key": None}, TypeError, "key"),
        ({"d_left": 0}, ValueError, "d_left"),
        ({"d_right": 2.0}, ValueError, "d_right"),
        ({"hidden": True}, ValueError, "hidden"),
        ({"gates": -1}, ValueError, "gates"),
        ({"dtype": jnp.int32}, ValueError, "dtype"),
        ({"dtype": "banana"}, ValueError, "dtype"),
    ],
    ids=[
        "key-int",
        "key-none",
        "d_left-0",
        "d_right-float",
        "hidden-bool",
        "gates-neg",
        "dtype-int",
        "dtype-name",
    ],
)
def test_init_params_names_the_bad_argument(kwargs, error, name):
    args = {"key": jax.random.key(0), "d_left": 2, "d_right": 3, "hidden": 4, "gates": 2}
    with pytest.raises(error, match=name):
        gj.init_params(**{**args, **kwargs})


def test_init_params_takes_numpy_integers_and_bfloat16():
    def start(key):  # traced only: the checks run while tracing
        params = gj.init_params(key, np.int64(2), 3, np.int32(4), 2, jnp.bfloat16)
        x = jnp.ones((5, 2), jnp.bfloat16), jnp.ones((5, 3), jnp.bfloat16)
        return params, gj.logits(params, *x), gj.loss(params, *x, jnp.ones(5, jnp.int8))

    params, a3, loss = jax.eval_shape(start, jax.random.key(0))
    assert params.W1_L.shape == (4, 2) and params.W1_L.dtype == jnp.bfloat16
    assert a3.shape == (5,) and loss.shape == ()
