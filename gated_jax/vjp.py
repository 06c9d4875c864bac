"""`logits` and `loss` as `jax.custom_vjp`: the seed's backward replaces autodiff.

Only wiring lives here: the forward values come from `model.forward`, the
backward from `backprop.propagate` and `backprop.cotangents`. `make_logits`
and `make_loss` take the r-vector propagation as an argument so that the
verification facility can check a different one (for example the seed's
literal text, `gated_jax.errata`) through exactly the same wiring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from gated_jax import backprop
from gated_jax.model import Activations
from gated_jax.model import Params
from gated_jax.model import as_float_input
from gated_jax.model import error
from gated_jax.model import forward
from gated_jax.validate import as_array
from gated_jax.validate import check_activations
from gated_jax.validate import check_shapes
from gated_jax.validate import param_sizes

Propagate = Callable[[Params, Activations, jax.Array], backprop.RVectors]


def _cotangent_like(primal: Any, ct: jax.Array) -> jax.Array:
    """The cotangent in the primal's dtype; float0 zeros for integer primals."""
    primal_dtype = jnp.result_type(primal)
    if not jnp.issubdtype(primal_dtype, jnp.inexact):
        return np.zeros(jnp.shape(primal), dtype=jax.dtypes.float0)
    return ct.astype(primal_dtype)


def _input_cotangents(
    params: Params, x_left: Any, x_right: Any, acts: Activations, rv: backprop.RVectors
) -> tuple[Params, jax.Array, jax.Array]:
    xl, xr = as_float_input(params, x_left), as_float_input(params, x_right)
    d_params, d_x_left, d_x_right = backprop.cotangents(params, xl, xr, acts, rv)
    d_params = Params(*(_cotangent_like(p, d) for p, d in zip(params, d_params, strict=True)))
    return d_params, _cotangent_like(x_left, d_x_left), _cotangent_like(x_right, d_x_right)


def _named_arrays(params: Any, **inputs: Any) -> list[jax.Array]:
    """Checks params, then converts each input to an array, naming the one that is not.

    A custom_vjp converts its arguments itself, with an error that names none
    of them; the public functions call this first.
    """
    param_sizes(params)
    return [as_array(name, value) for name, value in inputs.items()]


def make_logits(propagate: Propagate = backprop.propagate):
    """a3 as a custom_vjp whose backward is `propagate` with r3 := the cotangent."""

    @jax.custom_vjp
    def logits(params: Params, x_left: ArrayLike, x_right: ArrayLike) -> jax.Array:
        return forward(params, x_left, x_right).a3

    # (params, x_left, x_right) -> (a3, residuals)
    def logits_fwd(params, x_left, x_right):
        acts = forward(params, x_left, x_right)
        return acts.a3, (params, x_left, x_right, acts)

    # (residuals, g = dL/da3 with shape (...)) -> (dParams, dx_left, dx_right)
    def logits_bwd(res, g):
        params, x_left, x_right, acts = res
        rv = propagate(params, acts, g.astype(acts.a3.dtype))
        return _input_cotangents(params, x_left, x_right, acts, rv)

    logits.defvjp(logits_fwd, logits_bwd)

    def checked_logits(params: Params, x_left: ArrayLike, x_right: ArrayLike) -> jax.Array:
        """a3, shape (...), through the custom_vjp; arguments checked by name first."""
        return logits(params, *_named_arrays(params, x_left=x_left, x_right=x_right))

    return checked_logits


def _labels(t: ArrayLike, a3: jax.Array) -> jax.Array:
    return jnp.asarray(t).astype(a3.dtype)


def _batch_size(params: Params, x_left, x_right, t) -> int:
    batch = check_shapes(
        params, as_array("x_left", x_left), as_array("x_right", x_right), as_array("t", t)
    )
    n = int(np.prod(batch))
    if n == 0:
        raise ValueError(
            f"empty batch: x_left has batch shape {batch}; the loss is a mean over its examples"
        )
    return n


def make_loss(propagate: Propagate = backprop.propagate):
    """Mean logistic error as a custom_vjp with the seed's closed-form r3."""

    @jax.custom_vjp
    def loss(params: Params, x_left: ArrayLike, x_right: ArrayLike, t: ArrayLike) -> jax.Array:
        _batch_size(params, x_left, x_right, t)
        a3 = forward(params, x_left, x_right).a3
        return jnp.mean(error(a3, _labels(t, a3)))

    # (params, x_left, x_right, t) -> (mean E, residuals)
    def loss_fwd(params, x_left, x_right, t):
        _batch_size(params, x_left, x_right, t)
        acts = forward(params, x_left, x_right)
        t_f = _labels(t, acts.a3)
        return jnp.mean(error(acts.a3, t_f)), (params, x_left, x_right, t, acts)

    # (residuals, g = dL/d(mean E), a scalar) -> (dParams, dx_left, dx_right, dt)
    def loss_bwd(res, g):
        params, x_left, x_right, t, acts = res
        n = _batch_size(params, x_left, x_right, t)
        t_f = _labels(t, acts.a3)
        g_n = g.astype(acts.a3.dtype) / n  # d(mean E)/dE_i
        rv = propagate(params, acts, g_n * backprop.r3_logistic(acts.a3, t_f))
        d_params, d_x_left, d_x_right = _input_cotangents(params, x_left, x_right, acts, rv)
        # Labels are data, but a real t still gets its true derivative:
        # dE/dt = -a3 sigma(-t a3).
        d_t = _cotangent_like(t, -g_n * acts.a3 * jax.nn.sigmoid(-t_f * acts.a3))
        return d_params, d_x_left, d_x_right, d_t

    loss.defvjp(loss_fwd, loss_bwd)

    def checked_loss(params: Params, x_left: ArrayLike, x_right: ArrayLike, t: ArrayLike):
        """Mean E through the custom_vjp; arguments checked by name first."""
        return loss(params, *_named_arrays(params, x_left=x_left, x_right=x_right, t=t))

    return checked_loss


logits = make_logits()
loss = make_loss()


def grads(params: Params, x_left: ArrayLike, x_right: ArrayLike, t: ArrayLike) -> Params:
    """The gradient of `loss` with respect to params, from the r-vectors.

    Args:
      params: Params.
      x_left: (..., D_L).
      x_right: (..., D_R).
      t: (...) labels -1 or +1.

    Returns:
      Params holding d(mean E)/d(each leaf).
    """
    n = _batch_size(params, x_left, x_right, t)
    acts = forward(params, x_left, x_right)
    rv = backprop.propagate(params, acts, backprop.r3_logistic(acts.a3, _labels(t, acts.a3)) / n)
    d_params, _, _ = _input_cotangents(params, x_left, x_right, acts, rv)
    return d_params


def r_vectors(params: Params, acts: Activations, t: ArrayLike) -> backprop.RVectors:
    """`backprop.r_vectors` (the seed's r-vectors) after checking acts and t against params.

    The public `gj.r_vectors`: every field of `acts` must have the batch shape
    of acts.a3 and the width H or Q of params, so nothing is broadcast.

    Raises:
      TypeError, ValueError: from `validate.check_activations`, naming the field.
    """
    t = check_activations(params, acts, t)
    return backprop.r_vectors(params, acts, t)


def predict_proba(params: Params, x_left: ArrayLike, x_right: ArrayLike) -> jax.Array:
    """P(t = +1 | x) = sigma(a3), shape (...); differentiable through `logits`."""
    return jax.nn.sigmoid(logits(params, x_left, x_right))
