"""Forward pass and initialisation: shapes, dtypes, batch axes, an independent reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_problem

import gated_jax as gj


def numpy_forward(params, x_left, x_right):
    """SPEC.md's table written again in float64 numpy, one example at a time."""
    p = {k: np.asarray(v, np.float64) for k, v in params._asdict().items()}
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    out = []
    for xl, xr in zip(
        np.asarray(x_left, np.float64).reshape(-1, x_left.shape[-1]),
        np.asarray(x_right, np.float64).reshape(-1, x_right.shape[-1]),
        strict=True,
    ):
        z_L = np.tanh(p["W1_L"] @ xl + p["b1_L"])
        z_R = np.tanh(p["W1_R"] @ xr + p["b1_R"])
        a2_L = p["W2_L"] @ z_L + p["b2_L"]
        a2_R = p["W2_R"] @ z_R + p["b2_R"]
        a2_LR = p["W2_LR"] @ (z_L + z_R) + p["b2_LR"]
        out.append(p["w3"] @ (sig(a2_L) * sig(a2_R) * a2_LR) + p["b3"])
    return np.array(out).reshape(x_left.shape[:-1])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_init_params_shapes_dtypes_and_scale(dtype, x64):
    params = gj.init_params(jax.random.key(1), 5, 3, 7, 4, dtype=dtype)
    expected = dict(
        W1_L=(7, 5),
        b1_L=(7,),
        W1_R=(7, 3),
        b1_R=(7,),
        W2_L=(4, 7),
        b2_L=(4,),
        W2_R=(4, 7),
        b2_R=(4,),
        W2_LR=(4, 7),
        b2_LR=(4,),
        w3=(4,),
        b3=(),
    )
    assert params._fields == tuple(expected)
    for name, leaf in params._asdict().items():
        assert leaf.shape == expected[name], name
        assert leaf.dtype == dtype, name
        if name.startswith("b"):
            assert not jnp.any(leaf), name
    # Glorot uniform: |W| <= sqrt(6 / (fan_in + fan_out)); W2_LR's fan_in is 2H.
    assert jnp.max(jnp.abs(params.W1_L)) <= np.sqrt(6 / (5 + 7))
    assert jnp.max(jnp.abs(params.W2_LR)) <= np.sqrt(6 / (2 * 7 + 4))
    assert jnp.max(jnp.abs(params.W2_LR)) > 0.5 * np.sqrt(6 / (2 * 7 + 4))


def test_init_params_is_deterministic_per_key():
    a = gj.init_params(jax.random.key(3), 4, 4, 5, 2)
    b = gj.init_params(jax.random.key(3), 4, 4, 5, 2)
    c = gj.init_params(jax.random.key(4), 4, 4, 5, 2)
    assert all(jnp.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not jnp.array_equal(a.W1_L, c.W1_L)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_left=0), "d_left"),
        (dict(hidden=-2), "hidden"),
        (dict(gates=2.5), "gates"),
        (dict(dtype=jnp.int32), "dtype"),
    ],
    ids=["zero-d_left", "negative-hidden", "float-gates", "int-dtype"],
)
def test_init_params_rejects_bad_arguments(kwargs, match):
    args = dict(d_left=3, d_right=3, hidden=4, gates=2) | kwargs
    with pytest.raises(ValueError, match=match):
        gj.init_params(jax.random.key(0), **args)


@pytest.mark.parametrize("batch", [(), (1,), (5,), (2, 3)], ids=str)
def test_forward_matches_numpy_reference(batch, x64):
    params, x_left, x_right, _ = make_problem(batch=batch, dtype=jnp.float64)
    acts = gj.forward(params, x_left, x_right)
    assert isinstance(acts, gj.Activations)
    assert acts.a3.shape == batch
    assert acts.a1_L.shape == (*batch, 7) and acts.a2_LR.shape == (*batch, 4)
    np.testing.assert_allclose(acts.a3, numpy_forward(params, x_left, x_right), rtol=1e-12)
    np.testing.assert_allclose(gj.logits(params, x_left, x_right), acts.a3, rtol=1e-12)


def test_numpy_reference_detects_a_wrong_forward(x64):
    params, x_left, x_right, _ = make_problem(dtype=jnp.float64)
    wrong = params._replace(b2_LR=params.b2_LR + 1e-3)
    assert not np.allclose(
        gj.forward(wrong, x_left, x_right).a3, numpy_forward(params, x_left, x_right), rtol=1e-9
    )


def test_batch_axes_equal_vmap_over_examples():
    params, x_left, x_right, _ = make_problem(batch=(2, 3))
    batched = gj.forward(params, x_left, x_right)
    per_example = jax.vmap(jax.vmap(gj.forward, (None, 0, 0)), (None, 0, 0))(
        params, x_left, x_right
    )
    for got, want in zip(batched, per_example, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_predict_proba_is_sigmoid_of_logits_in_unit_interval():
    params, x_left, x_right, _ = make_problem(batch=(50,))
    p = gj.predict_proba(params, x_left, x_right)
    assert p.shape == (50,) and p.dtype == jnp.float32
    assert jnp.all((p > 0) & (p < 1))
    np.testing.assert_allclose(p, jax.nn.sigmoid(gj.forward(params, x_left, x_right).a3))


def test_integer_inputs_are_cast_to_the_params_dtype():
    params, x_left, x_right, _ = make_problem()
    xi_l, xi_r = jnp.round(3 * x_left).astype(jnp.int32), jnp.round(3 * x_right).astype(jnp.int32)
    got = gj.forward(params, xi_l, xi_r).a3
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(
        got, gj.forward(params, xi_l.astype(jnp.float32), xi_r.astype(jnp.float32)).a3
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_dtypes_are_preserved(dtype, x64):
    params, x_left, x_right, t = make_problem(dtype=dtype)
    for leaf in gj.forward(params, x_left, x_right):
        assert leaf.dtype == dtype
    assert gj.loss(params, x_left, x_right, t).dtype == dtype
    assert gj.predict_proba(params, x_left, x_right).dtype == dtype
    for g in gj.grads(params, x_left, x_right, t):
        assert g.dtype == dtype
