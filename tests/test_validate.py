"""Bad input: shape errors at trace time, value errors from validate_batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_problem

import gated_jax as gj


@pytest.fixture
def problem():
    return make_problem(sizes=(5, 3, 7, 4), batch=(6,))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda p, xl, xr, t: (p, xl[:, :4], xr, t),
            r"x_left has shape \(6, 4\), expected \(\.\.\., D_L\) = \(\.\.\., 5\)",
        ),
        (
            lambda p, xl, xr, t: (p, xl, xr[:, :2], t),
            r"x_right has shape \(6, 2\), expected \(\.\.\., D_R\) = \(\.\.\., 3\)",
        ),
        (
            lambda p, xl, xr, t: (p, xl, xr[:5], t),
            r"x_right has batch shape \(5,\) but x_left has \(6,\)",
        ),
        (
            lambda p, xl, xr, t: (p, xl, xr[None], t),
            r"x_right has batch shape \(1, 6\) but x_left has \(6,\)",
        ),
        (
            lambda p, xl, xr, t: (p, xl, xr, t[:, None]),
            r"t has shape \(6, 1\), expected the batch shape \(6,\)",
        ),
        (
            lambda p, xl, xr, t: (p, xl, xr, t[0]),
            r"t has shape \(\), expected the batch shape \(6,\)",
        ),
        (lambda p, xl, xr, t: (p, xl[0, 0], xr, t), r"x_left has shape \(\), expected"),
        (
            lambda p, xl, xr, t: (p._replace(W2_LR=p.W2_LR[:, :6]), xl, xr, t),
            r"params.W2_LR has shape \(4, 6\), expected \(Q, H\) = \(4, 7\)",
        ),
        (
            lambda p, xl, xr, t: (p._replace(b3=p.b3[None]), xl, xr, t),
            r"params.b3 has shape \(1,\), expected \(\) = \(\)",
        ),
        (
            lambda p, xl, xr, t: (p._replace(W1_R=p.W1_R[:6]), xl, xr, t),
            r"params.W1_R has shape \(6, 3\), expected \(H, D_R\) = \(7, 3\)",
        ),
        (lambda p, xl, xr, t: (p, xl[:0], xr[:0], t[:0]), r"empty batch"),
    ],
    ids=[
        "D_L",
        "D_R",
        "batch-length",
        "batch-rank",
        "t-rank",
        "t-scalar",
        "x-scalar",
        "W2_LR",
        "b3",
        "W1_R",
        "empty",
    ],
)
def test_shape_mismatches_raise_at_trace_time(problem, change, message, jit):
    args = change(*problem)
    loss = jax.jit(gj.loss) if jit else gj.loss
    with pytest.raises(ValueError, match=message):
        loss(*args)
    with pytest.raises(ValueError, match=message):
        gj.validate_batch(*args)


def test_forward_never_broadcasts_batch_axes(problem):
    params, x_left, x_right, _ = problem
    with pytest.raises(ValueError, match="never broadcast"):
        gj.forward(params, x_left[None, :1], x_right)
    with pytest.raises(ValueError, match="never broadcast"):
        jax.jit(gj.predict_proba)(params, x_left, x_right[:1])


def test_params_of_the_wrong_type_are_a_type_error(problem):
    params, x_left, x_right, t = problem
    with pytest.raises(TypeError, match=r"params must be a gated_jax\.Params"):
        gj.loss(params._asdict(), x_left, x_right, t)
    with pytest.raises(TypeError, match=r"params.W1_L must have a floating dtype"):
        gj.forward(params._replace(W1_L=params.W1_L.astype(jnp.int32)), x_left, x_right)


def test_complex_and_boolean_labels_are_rejected(problem):
    params, x_left, x_right, t = problem
    with pytest.raises(TypeError, match="t has dtype bool"):
        gj.loss(params, x_left, x_right, t > 0)
    with pytest.raises(TypeError, match="x_left must have a real or integer dtype"):
        gj.forward(params, x_left.astype(jnp.complex64), x_right)


def test_validate_batch_accepts_good_data(problem):
    assert gj.validate_batch(*problem) is None
    params, x_left, x_right, t = problem
    gj.validate_batch(params, np.asarray(x_left), np.asarray(x_right), np.asarray(t, np.int64))


def test_validate_batch_counts_bad_labels_and_names_the_first(problem):
    params, x_left, x_right, t = problem
    bad = np.asarray(t).copy()
    bad[[2, 4]] = [0.0, 2.0]
    with pytest.raises(
        ValueError, match=r"t has 2 labels other than -1 and \+1; the first at index \(2,\) is 0.0"
    ):
        gj.validate_batch(params, x_left, x_right, bad)
    labels_01 = np.array([0, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match=r"t has 4 labels .* first at index \(0,\) is 0$"):
        gj.validate_batch(params, x_left, x_right, labels_01)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_validate_batch_counts_non_finite_values(problem, value):
    params, x_left, x_right, t = problem
    bad = np.asarray(x_right).copy()
    bad[3, 1] = value
    bad[5, 0] = value
    with pytest.raises(
        ValueError, match=r"x_right has 2 non-finite values .* first at index \(3, 1\)"
    ):
        gj.validate_batch(params, x_left, bad, t)
    bad_params = params._replace(w3=params.w3.at[2].set(value))
    with pytest.raises(ValueError, match=r"params.w3 has 1 non-finite"):
        gj.validate_batch(bad_params, x_left, x_right, t)


def test_validate_batch_rejects_non_numeric_dtypes(problem):
    params, x_left, x_right, t = problem
    with pytest.raises(ValueError, match=r"x_left has non-numeric dtype <U"):
        gj.validate_batch(params, np.full((6, 5), "a"), x_right, t)
    with pytest.raises(ValueError, match="t has non-numeric dtype object"):
        gj.validate_batch(params, x_left, x_right, np.array([1, -1, None, 1, 1, 1], dtype=object))


def test_validate_batch_is_eager_only(problem):
    with pytest.raises(ValueError, match="outside jit"):
        jax.jit(gj.validate_batch)(*problem)
