"""The verification facility: its report, and every kind of check shown to fail once."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_problem

import gated_jax as gj
from gated_jax import backprop
from gated_jax import verify


@pytest.fixture(scope="module")
def report_f64():
    with jax.enable_x64(True):
        return gj.check_vjp(*make_problem(dtype=jnp.float64, batch=(2, 3)))


def test_correct_backward_passes_every_check(report_f64):
    assert report_f64.ok, str(report_f64)
    names = [e.name for e in report_f64.entries]
    for leaf in (*gj.Params._fields, "x_left", "x_right"):
        assert f"grad vs autodiff  {leaf}" in names
        assert f"finite diff (f64)  {leaf}" in names
    for r in gj.RVectors._fields:
        assert f"r-vector  {r}" in names
    worst_grad = max(e.max_rel_err for e in report_f64.entries if e.name.startswith("grad"))
    assert worst_grad < 1e-12


def test_report_prints_a_table_and_a_summary(report_f64):
    text = str(report_f64)
    header = text.splitlines()[1]
    for column in ("entry", "max abs err", "max rel err", "tolerance", "ok"):
        assert column in header
    assert "float64, batch (2, 3)" in text
    assert text.splitlines()[-1] == f"all {len(report_f64.entries)} checks ok"


def test_failure_names_the_worst_entry_and_its_index(x64):
    params, x_left, x_right, t = make_problem(dtype=jnp.float64, batch=(6,))

    def wrong_at_one_element(params, acts, r3):
        rv = backprop.propagate(params, acts, r3)
        return rv._replace(r2_R=rv.r2_R.at[4, 2].multiply(3.0))

    report = gj.check_vjp(params, x_left, x_right, t, propagate=wrong_at_one_element)
    assert not report.ok
    entry = report["r-vector  r2_R"]
    assert not entry.ok and entry.worst_index == (4, 2)
    assert report["r-vector  r2_L"].ok
    assert "FAILED" in report.summary() and "index" in report.summary()
    assert "FAIL" in report.table()


def test_float32_uses_float32_tolerances():
    report = gj.check_vjp(*make_problem(dtype=jnp.float32))
    assert report.ok, str(report)
    assert report["grad vs autodiff  W1_L"].tol == 1e-5
    assert report["finite diff (f64)  W1_L"].tol == 1e-6


def test_linearity_check_rejects_an_affine_backward(x64):
    def affine(params, acts, r3):
        return backprop.propagate(params, acts, r3 + 1e-3)

    report = gj.check_vjp(*make_problem(dtype=jnp.float64), propagate=affine)
    assert not report["linear: vjp(0) = 0"].ok
    assert not report["linear: vjp(g1 + g2) = vjp(g1) + vjp(g2)"].ok


def test_scaling_check_rejects_a_nonlinear_backward(x64):
    def quadratic(params, acts, r3):
        return backprop.propagate(params, acts, r3 * jnp.abs(r3))

    report = gj.check_vjp(*make_problem(dtype=jnp.float64), propagate=quadratic)
    assert report["linear: vjp(0) = 0"].ok
    assert not report["linear: vjp(c g) = c vjp(g)"].ok


def test_finite_difference_check_rejects_a_wrong_gradient_alone(x64):
    """A 1e-4 error in dE/dW1_L: caught by finite differences in float64."""

    def slightly_wrong(params, acts, r3):
        rv = backprop.propagate(params, acts, r3)
        return rv._replace(r1_L=rv.r1_L * (1 + 1e-4))

    report = gj.check_vjp(*make_problem(dtype=jnp.float64), propagate=slightly_wrong)
    assert not report["finite diff (f64)  W1_L"].ok
    assert report["finite diff (f64)  W2_L"].ok


def test_structure_check_rejects_a_wrong_shape_or_dtype():
    primals = (jnp.zeros((2, 3), jnp.float32), jnp.zeros((4,), jnp.int32))
    good = (
        jax.ShapeDtypeStruct((2, 3), jnp.float32),
        jax.ShapeDtypeStruct((4,), jax.dtypes.float0),
    )
    assert verify._cotangent_structure("s", primals, good).ok
    bad_dtype = (jax.ShapeDtypeStruct((2, 3), jnp.float64), good[1])
    bad_shape = (jax.ShapeDtypeStruct((3, 2), jnp.float32), good[1])
    int_ct = (good[0], jax.ShapeDtypeStruct((4,), jnp.int32))
    for cts in (bad_dtype, bad_shape, int_ct, good[:1]):
        entry = verify._cotangent_structure("s", primals, cts)
        assert not entry.ok and entry.detail


def test_compare_measures_relative_to_the_reference_scale():
    e = verify.compare("x", np.array([1.0, 2.0, 4.01]), np.array([1.0, 2.0, 4.0]), 1e-2)
    assert e.ok and e.worst_index == (2,)
    np.testing.assert_allclose(e.max_rel_err, 0.01 / 4.0)
    assert not verify.compare("x", np.array([1.0, np.nan]), np.array([1.0, 2.0]), 1.0).ok
    assert not verify.compare("x", np.zeros(2), np.zeros(3), 1.0).ok
    assert not verify.compare("x", np.ones(2), np.zeros(2), 1.0).ok
    assert verify.compare("x", np.zeros(2), np.zeros(2), 0.0).ok


def test_integer_inputs_and_labels_are_checked_too():
    params, x_left, x_right, t = make_problem()
    report = gj.check_vjp(params, jnp.round(x_left).astype(jnp.int32), x_right, t.astype(jnp.int32))
    assert report.ok, str(report)
    assert "grad vs autodiff  x_left" not in [e.name for e in report.entries]


@pytest.mark.slow
def test_verify_script_passes_the_full_grid_and_exits_0():
    result = subprocess.run(
        [sys.executable, "-m", "experiments.verify"], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 configurations failed" in result.stdout


def _run_small_grid(*args):
    """experiments.verify's main on a small grid, in a fresh process (it exits)."""
    code = (
        "import sys, experiments.verify as v; v.SIZES = ((3, 2, 4, 3),); "
        f"v.BATCH_SHAPES = ((2, 3),); sys.exit(v.main({list(args)!r}))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


def test_verify_script_exits_0_on_the_library_backward():
    result = _run_small_grid()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 configurations" in result.stdout and "0 configurations failed" in result.stdout


def test_verify_script_exits_1_on_the_seeds_sigma_form():
    result = _run_small_grid("--propagate", "seed-sigma-form")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL" in result.stdout and "r-vector  r2_L" in result.stdout
