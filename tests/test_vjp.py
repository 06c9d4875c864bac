"""The custom VJP against autodiff: gradients, higher order, jit, vmap, numerics, labels."""

from __future__ import annotations

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_problem
from conftest import rel_err
from hypothesis import given
from hypothesis import settings

import gated_jax as gj
from gated_jax import backprop

ARGNUMS = (0, 1, 2)  # params, x_left, x_right

problems = st.tuples(
    st.integers(0, 2**16),  # seed
    st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
    st.sampled_from([(), (1,), (4,), (2, 3)]),
)


@jax.jit
def _custom_and_autodiff(params, x_left, x_right, t):
    """Both gradients in one compiled program (one compile per hypothesis example)."""
    custom = jax.grad(gj.loss, ARGNUMS)(params, x_left, x_right, t)
    autodiff = jax.grad(gj.autodiff_loss, ARGNUMS)(params, x_left, x_right, t)
    return custom, autodiff


@pytest.mark.parametrize(
    "dtype, tol", [(jnp.float64, 1e-10), (jnp.float32, 1e-5)], ids=["float64", "float32"]
)
@settings(max_examples=8, deadline=None)
@given(problem=problems)
def test_custom_vjp_equals_autodiff(dtype, tol, problem):
    seed, sizes, batch = problem
    with jax.enable_x64(dtype == jnp.float64):
        custom, autodiff = _custom_and_autodiff(*make_problem(seed, sizes, batch, dtype))
        for name, c, a in zip(
            (*gj.Params._fields, "x_left", "x_right"),
            jax.tree.leaves(custom),
            jax.tree.leaves(autodiff),
            strict=True,
        ):
            assert c.dtype == dtype
            assert rel_err(c, a) <= tol, name


def test_the_comparison_rejects_a_wrong_backward(x64):
    params, x_left, x_right, t = make_problem(dtype=jnp.float64)

    def off_by_a_little(params, acts, r3):
        return backprop.propagate(params, acts, r3)._replace(
            r1_L=backprop.propagate(params, acts, r3).r1_L * (1 + 1e-8)
        )

    wrong = jax.grad(gj.make_loss(off_by_a_little))(params, x_left, x_right, t)
    right = jax.grad(gj.autodiff_loss)(params, x_left, x_right, t)
    assert rel_err(wrong.W1_L, right.W1_L) > 1e-10
    assert rel_err(wrong.W2_L, right.W2_L) <= 1e-10  # only layer 1 is touched


def test_jax_grad_of_loss_runs_the_explicit_backward():
    params, x_left, x_right, t = make_problem()
    assert "custom_vjp_call" in str(jax.make_jaxpr(gj.loss)(params, x_left, x_right, t))
    calls = []

    def spy(params, acts, r3):
        calls.append(r3.shape)
        return backprop.propagate(params, acts, r3)

    g = jax.grad(gj.make_loss(spy))(params, x_left, x_right, t)
    assert calls == [(6,)]
    assert rel_err(g, gj.grads(params, x_left, x_right, t)) < 1e-6


def test_grads_equals_jax_grad_of_loss(x64):
    params, x_left, x_right, t = make_problem(dtype=jnp.float64, batch=(3, 4))
    got = gj.grads(params, x_left, x_right, t)
    assert isinstance(got, gj.Params)
    assert rel_err(got, jax.grad(gj.loss)(params, x_left, x_right, t)) <= 1e-12


def test_logits_vjp_serves_any_loss_on_a3(x64):
    """logits' backward takes r3 := the cotangent: here the loss is a squared error."""
    params, x_left, x_right, t = make_problem(dtype=jnp.float64, batch=(8,))

    def mse(logits_fn):
        def f(params, x_left, x_right):
            return jnp.mean((jax.nn.sigmoid(logits_fn(params, x_left, x_right)) - (t + 1) / 2) ** 2)

        return f

    custom = jax.grad(mse(gj.logits), ARGNUMS)(params, x_left, x_right)
    autodiff = jax.grad(mse(lambda *a: gj.forward(*a).a3), ARGNUMS)(params, x_left, x_right)
    assert rel_err(custom, autodiff) <= 1e-10


@pytest.mark.parametrize("fn", ["loss", "logits"])
def test_reverse_over_reverse_through_the_explicit_backward(fn, x64):
    from jax.test_util import check_grads

    params, x_left, x_right, t = make_problem(dtype=jnp.float64, batch=(3,), sizes=(3, 2, 4, 3))
    if fn == "loss":
        f = lambda p, xl, xr: gj.loss(p, xl, xr, t)  # noqa: E731
    else:
        f = lambda p, xl, xr: jnp.sum(jnp.sin(gj.logits(p, xl, xr)))  # noqa: E731
    check_grads(f, (params, x_left, x_right), order=2, modes=["rev"], eps=1e-4)


def test_hessian_vector_products_equal_autodiff(x64):
    params, x_left, x_right, t = make_problem(dtype=jnp.float64, batch=(5,))
    v = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)), params)

    def hvp(loss_fn):
        grad = jax.grad(lambda p: loss_fn(p, x_left, x_right, t))
        return jax.jvp(grad, (params,), (v,))[1]

    def hvp_rev(loss_fn):  # reverse over reverse
        grad = jax.grad(lambda p: loss_fn(p, x_left, x_right, t))
        return jax.grad(lambda p: jax.tree.reduce(jnp.add, jax.tree.map(jnp.vdot, grad(p), v)))(
            params
        )

    want = hvp(gj.autodiff_loss)
    assert rel_err(hvp_rev(gj.loss), want) <= 1e-10
    assert rel_err(hvp_rev(gj.loss), hvp_rev(gj.autodiff_loss)) <= 1e-10


class TestVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_value_and_grad(self):
        params, x_left, x_right, t = make_problem()
        value, grad = self.variant(jax.value_and_grad(gj.loss))(params, x_left, x_right, t)
        np.testing.assert_allclose(value, gj.autodiff_loss(params, x_left, x_right, t), rtol=1e-6)
        assert rel_err(grad, jax.grad(gj.autodiff_loss)(params, x_left, x_right, t)) <= 1e-5


def test_jit_does_not_retrace_on_repeated_calls():
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, x_left, x_right, t):
        return jax.value_and_grad(gj.loss)(params, x_left, x_right, t)

    for seed in range(4):  # new values, same shapes: one trace
        step(*make_problem(seed=seed))
    with pytest.raises(AssertionError, match="traced"):  # new shapes: the guard fires
        step(*make_problem(batch=(9,)))


def test_per_example_gradients_by_vmap_average_to_the_batch_gradient(x64):
    params, x_left, x_right, t = make_problem(dtype=jnp.float64, batch=(10,))
    per_example = jax.vmap(jax.grad(gj.loss), (None, 0, 0, 0))(params, x_left, x_right, t)
    assert per_example.W1_L.shape == (10, 7, 5)
    mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), per_example)
    assert rel_err(mean, gj.grads(params, x_left, x_right, t)) <= 1e-12
    assert rel_err(per_example.w3[0], gj.grads(params, x_left[0], x_right[0], t[0]).w3) <= 1e-12


def test_vmap_over_a_stacked_ensemble_equals_a_python_loop():
    members = [make_problem(seed=s)[0] for s in range(4)]
    _, x_left, x_right, t = make_problem(seed=9)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)
    fn = jax.value_and_grad(gj.loss)
    values, grads = jax.jit(jax.vmap(fn, (0, None, None, None)))(stacked, x_left, x_right, t)
    for i, member in enumerate(members):
        v, g = fn(member, x_left, x_right, t)
        np.testing.assert_allclose(values[i], v, rtol=1e-6)
        assert rel_err(jax.tree.map(lambda s, i=i: s[i], grads), g) <= 1e-5
    probs = jax.vmap(gj.predict_proba, (0, None, None))(stacked, x_left, x_right)
    assert probs.shape == (4, 6)


@pytest.mark.parametrize("t_value", [1.0, -1.0], ids=["t=+1", "t=-1"])
def test_extreme_logits_float32_stay_finite_with_the_right_limits(t_value):
    params, x_left, x_right, _ = make_problem(batch=(4,))
    params = params._replace(b3=jnp.asarray(1e4, jnp.float32))  # a3 ~ +1e4
    t = jnp.full((4,), t_value, jnp.float32)
    a3 = gj.forward(params, x_left, x_right).a3
    assert jnp.all(jnp.abs(a3 - 1e4) < 10)
    value, g = jax.value_and_grad(gj.loss, ARGNUMS)(params, x_left, x_right, t)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves((value, g)))
    r3 = gj.r_vectors(params, gj.forward(params, x_left, x_right), t).r3
    if t_value == 1.0:  # correct with huge margin: E -> 0, r3 -> 0
        assert float(value) == 0.0
        np.testing.assert_array_equal(r3, 0.0)
        assert float(g[0].b3) == 0.0
    else:  # wrong with huge margin: E -> a3, r3 -> +1
        np.testing.assert_allclose(value, jnp.mean(a3), rtol=1e-6)
        np.testing.assert_allclose(r3, 1.0)
        np.testing.assert_allclose(g[0].b3, 1.0)


def test_the_seed_formula_as_written_overflows_where_ours_does_not():
    a3 = jnp.asarray([1e4, -1e4], jnp.float32)
    t = jnp.asarray([-1.0, 1.0], jnp.float32)
    naive_E = jnp.log(1 + jnp.exp(-t * a3))  # errata 4: as the seed writes it
    assert not jnp.all(jnp.isfinite(naive_E))
    np.testing.assert_allclose(jax.nn.softplus(-t * a3), 1e4)
    np.testing.assert_allclose(backprop.r3_logistic(a3, t), -t)


@pytest.mark.parametrize("label_dtype", [jnp.int32, jnp.int8, jnp.float32], ids=str)
def test_integer_labels_work_and_give_float0_cotangents(label_dtype):
    params, x_left, x_right, t = make_problem()
    t_cast = t.astype(label_dtype)
    value, vjp = jax.vjp(gj.loss, params, x_left, x_right, t_cast)
    np.testing.assert_allclose(value, gj.loss(params, x_left, x_right, t), rtol=1e-6)
    d_params, _, _, d_t = vjp(jnp.ones_like(value))
    assert rel_err(d_params, gj.grads(params, x_left, x_right, t)) <= 1e-6
    if jnp.issubdtype(label_dtype, jnp.integer):
        assert d_t.dtype == jax.dtypes.float0 and d_t.shape == t.shape
    else:
        assert d_t.dtype == label_dtype
    np.testing.assert_array_equal(
        jax.grad(gj.loss)(params, x_left, x_right, t_cast).w3,
        jax.grad(gj.loss)(params, x_left, x_right, t).w3,
    )


def test_a_real_label_gets_its_true_derivative(x64):
    params, x_left, x_right, t = make_problem(dtype=jnp.float64)
    got = jax.grad(gj.loss, 3)(params, x_left, x_right, t)
    want = jax.grad(gj.autodiff_loss, 3)(params, x_left, x_right, t)
    assert rel_err(got, want) <= 1e-12


def test_integer_inputs_get_float0_cotangents():
    params, x_left, x_right, _ = make_problem()
    xi = jnp.round(x_left).astype(jnp.int32)
    _, vjp = jax.vjp(gj.logits, params, xi, x_right)
    _, d_xl, d_xr = vjp(jnp.ones(6))
    assert d_xl.dtype == jax.dtypes.float0 and d_xl.shape == xi.shape
    assert d_xr.dtype == jnp.float32 and d_xr.shape == x_right.shape


def test_mixed_dtypes_give_cotangents_in_each_primals_dtype(x64):
    params, x_left, x_right, t = make_problem(dtype=jnp.float32)
    x_left64 = x_left.astype(jnp.float64)
    _, vjp = jax.vjp(gj.loss, params, x_left64, x_right, t)
    d_params, d_xl, d_xr, d_t = vjp(jnp.ones((), jnp.float64))
    assert all(g.dtype == jnp.float32 for g in d_params)
    assert d_xl.dtype == jnp.float64 and d_xr.dtype == jnp.float32 and d_t.dtype == jnp.float32


def test_weight_gradients_are_sums_of_per_example_outer_products(x64):
    params, x_left, x_right, t = make_problem(dtype=jnp.float64, batch=(2, 3))
    acts = gj.forward(params, x_left, x_right)
    rv = gj.r_vectors(params, acts, t)
    d_params, d_xl, _ = gj.cotangents(params, x_left, x_right, acts, rv)
    loop = sum(np.outer(rv.r1_L[i, j], x_left[i, j]) for i in range(2) for j in range(3))
    np.testing.assert_allclose(d_params.W1_L, loop, rtol=1e-12)
    np.testing.assert_allclose(d_xl[1, 2], params.W1_L.T @ rv.r1_L[1, 2], rtol=1e-12)
    z = jnp.tanh(acts.a1_L) + jnp.tanh(acts.a1_R)
    loop = sum(np.outer(rv.r2_LR[i, j], z[i, j]) for i in range(2) for j in range(3))
    np.testing.assert_allclose(d_params.W2_LR, loop, rtol=1e-12)
