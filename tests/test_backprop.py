"""Each seed equation on its own, and the seed's errata shown to fail."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_problem

import gated_jax as gj
from gated_jax import backprop


def _autodiff_r_vectors(params, acts, t):
    """dE/d(pre-activation) by jax.grad, layer by layer, for comparison."""

    def E3(a3):
        return jnp.sum(gj.model.error(a3, t))

    def E2(a2_L, a2_R, a2_LR):
        return E3(gj.model.layer3(params, a2_L, a2_R, a2_LR))

    def E1(a1_L, a1_R):
        return E2(*gj.model.layer2(params, a1_L, a1_R))

    return gj.RVectors(
        jax.grad(E3)(acts.a3),
        *jax.grad(E2, (0, 1, 2))(acts.a2_L, acts.a2_R, acts.a2_LR),
        *jax.grad(E1, (0, 1))(acts.a1_L, acts.a1_R),
    )


@pytest.mark.parametrize("batch", [(), (7,), (2, 3)], ids=str)
def test_each_r_vector_equals_autodiff_by_its_pre_activation(batch, x64):
    params, x_left, x_right, t = make_problem(dtype=jnp.float64, batch=batch)
    acts = gj.forward(params, x_left, x_right)
    got = gj.r_vectors(params, acts, t)
    want = _autodiff_r_vectors(params, acts, t)
    for name, g, w in zip(gj.RVectors._fields, got, want, strict=True):
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15, err_msg=name)


def test_layer_functions_alone_match_autodiff(x64):
    """r2_from_r3 given r3, r1_from_r2 given the true r2: each block by itself."""
    params, x_left, x_right, t = make_problem(dtype=jnp.float64, batch=(5,))
    acts = gj.forward(params, x_left, x_right)
    want = _autodiff_r_vectors(params, acts, t)
    r2 = backprop.r2_from_r3(params, acts, want.r3)
    np.testing.assert_allclose(jnp.stack(r2), jnp.stack(want[1:4]), rtol=1e-12, atol=1e-15)
    r1 = backprop.r1_from_r2(params, acts, *want[1:4])
    np.testing.assert_allclose(jnp.stack(r1), jnp.stack(want[4:]), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(backprop.r3_logistic(acts.a3, t), want.r3, rtol=1e-12)


def test_r3_is_the_seeds_closed_form(x64):
    a3 = jnp.linspace(-5.0, 5.0, 11)
    for t in (1.0, -1.0):
        np.testing.assert_allclose(
            backprop.r3_logistic(a3, t), -t / (jnp.exp(t * a3) + 1), rtol=1e-14
        )


def test_seed_sigma_form_fails_check_vjp_at_r2_L_and_r2_R(x64):
    """SPEC.md errata 1: the seed's sigma-form drops a2_LR; check_vjp says so."""
    problem = make_problem(dtype=jnp.float64, batch=(6,))
    report = gj.check_vjp(*problem, propagate=gj.errata.propagate_seed_sigma_form)
    assert not report.ok
    assert not report["r-vector  r2_L"].ok
    assert not report["r-vector  r2_R"].ok
    assert report["r-vector  r2_LR"].ok and report["r-vector  r3"].ok
    assert not report["grad vs autodiff  W2_L"].ok
    assert not report["finite diff (f64)  W2_L"].ok
    assert report["grad vs autodiff  W2_LR"].ok  # r2_LR is right, and so is its gradient
    assert "FAILED" in report.summary()


def test_seed_bracket_fails_check_vjp_at_layer_1(x64):
    """SPEC.md errata 2: the middle line of the layer-1 blocks."""
    problem = make_problem(dtype=jnp.float64, batch=(6,))
    report = gj.check_vjp(*problem, propagate=gj.errata.propagate_seed_bracket)
    assert not report.ok
    assert not report["r-vector  r1_L"].ok and not report["r-vector  r1_R"].ok
    assert all(report[f"r-vector  {n}"].ok for n in ("r3", "r2_L", "r2_R", "r2_LR"))
    assert not report["grad vs autodiff  W1_L"].ok
    assert report["grad vs autodiff  W2_L"].ok


def test_r_vectors_rejects_labels_of_the_wrong_shape():
    params, x_left, x_right, t = make_problem(batch=(6,))
    acts = gj.forward(params, x_left, x_right)
    with pytest.raises(ValueError, match=r"t has shape \(5,\), expected the batch shape \(6,\)"):
        gj.r_vectors(params, acts, t[:5])
