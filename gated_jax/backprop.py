"""The backward pass of the seed (`seed/backward_propagation.md`), block by block.

r is the derivative of one example's error E with respect to a pre-activation
(SPEC.md, "Backward pass: the r-vectors"). Each function below is one block of
the seed and uses its symbols; where the code departs from the seed's text it
cites SPEC.md's errata. For a batch every r-vector has a leading shape (...)
and belongs to its own example: summed over the batch they are the
derivatives of the summed error.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gated_jax.model import Activations
from gated_jax.model import Params
from gated_jax.model import gated_units


class RVectors(NamedTuple):
    """dE/d(pre-activation) for every layer, per example."""

    r3: jax.Array  # (...)
    r2_L: jax.Array  # (..., Q)
    r2_R: jax.Array  # (..., Q)
    r2_LR: jax.Array  # (..., Q)
    r1_L: jax.Array  # (..., H)
    r1_R: jax.Array  # (..., H)


def r3_logistic(a3: jax.Array, t: jax.Array) -> jax.Array:
    """Seed R(3): r3 = -t / (exp(t a3) + 1), computed as -t sigma(-t a3) (errata 4)."""
    return -t * jax.nn.sigmoid(-t * a3)


def r2_from_r3(
    params: Params, acts: Activations, r3: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Seed R(2), blocks L, R and LR: (r2_L, r2_R, r2_LR), each (..., Q).

        r2_L  = r3 w3 sigma(a2_R) sigma'(a2_L) a2_LR
        r2_R  = r3 w3 sigma(a2_L) sigma'(a2_R) a2_LR
        r2_LR = r3 w3 sigma(a2_L) sigma(a2_R)

    The factor a2_LR of r2_L and r2_R is in the first (exponential) line of the
    seed's blocks and missing from the sigma-form under it (errata 1); the
    seed's `w3^T diag(...)` are elementwise products (errata 3).
    """
    s_L, s_R = jax.nn.sigmoid(acts.a2_L), jax.nn.sigmoid(acts.a2_R)
    r3_w3 = r3[..., None] * params.w3
    r2_LR = r3_w3 * s_L * s_R
    r2_L = r2_LR * (1 - s_L) * acts.a2_LR  # = r3 w3 s_R [s_L (1 - s_L)] a2_LR
    r2_R = r2_LR * (1 - s_R) * acts.a2_LR  # = r3 w3 s_L [s_R (1 - s_R)] a2_LR
    return r2_L, r2_R, r2_LR


def r1_from_r2(
    params: Params, acts: Activations, r2_L: jax.Array, r2_R: jax.Array, r2_LR: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Seed R(1), blocks L and R: (r1_L, r1_R), each (..., H).

        r1_L = sech^2(a1_L) * (W2_L^T r2_L + W2_LR^T r2_LR)
        r1_R = sech^2(a1_R) * (W2_R^T r2_R + W2_LR^T r2_LR)

    The last line of each seed block (errata 2: the middle line misplaces a
    bracket). sech^2(a) = 1 - tanh(a)^2. W2_LR^T r2_LR enters both blocks and
    is computed once.
    """
    W2_LR_T_r2_LR = r2_LR @ params.W2_LR
    sech2_L = 1 - jnp.tanh(acts.a1_L) ** 2
    sech2_R = 1 - jnp.tanh(acts.a1_R) ** 2
    r1_L = sech2_L * (r2_L @ params.W2_L + W2_LR_T_r2_LR)
    r1_R = sech2_R * (r2_R @ params.W2_R + W2_LR_T_r2_LR)
    return r1_L, r1_R


def propagate(params: Params, acts: Activations, r3: jax.Array) -> RVectors:
    """All r-vectors from r3 = dE/da3, shape (...): layer 3 -> 2 -> 1."""
    r2_L, r2_R, r2_LR = r2_from_r3(params, acts, r3)
    r1_L, r1_R = r1_from_r2(params, acts, r2_L, r2_R, r2_LR)
    return RVectors(r3, r2_L, r2_R, r2_LR, r1_L, r1_R)


def r_vectors(params: Params, acts: Activations, t: jax.Array) -> RVectors:
    """The seed's r-vectors of the logistic error E = ln(1 + exp(-t a3)).

    Args:
      params: Params.
      acts: Activations of a batch of shape (...), from `forward`.
      t: labels -1 or +1, shape (...), any real or integer dtype.

    Returns:
      RVectors, one per example (not divided by the batch size).
    """
    a3 = acts.a3
    t = jnp.asarray(t)
    if t.shape != a3.shape:
        raise ValueError(f"t has shape {t.shape}, expected the batch shape {a3.shape} of acts.a3")
    return propagate(params, acts, r3_logistic(a3, t.astype(a3.dtype)))


def _sum_outer(r: jax.Array, z: jax.Array) -> jax.Array:
    """sum over the batch of the outer products r z^T, as one matrix product."""
    return jnp.einsum("...i,...j->ij", r, z)


def _sum_batch(r: jax.Array, feature_ndim: int) -> jax.Array:
    batch_axes = tuple(range(r.ndim - feature_ndim))
    return jnp.sum(r, axis=batch_axes)


def cotangents(
    params: Params, x_left: jax.Array, x_right: jax.Array, acts: Activations, rv: RVectors
) -> tuple[Params, jax.Array, jax.Array]:
    """dE/d(weights), dE/dx_L and dE/dx_R from the r-vectors (SPEC.md's table).

    Each weight gradient is one matrix product that contracts the batch axes
    (`einsum('...i,...j->ij')`), never a stack of per-example outer products.

    Returns:
      (Params of gradients summed over the batch, dx_left (..., D_L), dx_right (..., D_R)).
    """
    z_L, z_R = jnp.tanh(acts.a1_L), jnp.tanh(acts.a1_R)
    h = gated_units(acts.a2_L, acts.a2_R, acts.a2_LR)  # s_L * s_R * a2_LR
    d_params = Params(
        W1_L=_sum_outer(rv.r1_L, x_left),
        b1_L=_sum_batch(rv.r1_L, 1),
        W1_R=_sum_outer(rv.r1_R, x_right),
        b1_R=_sum_batch(rv.r1_R, 1),
        W2_L=_sum_outer(rv.r2_L, z_L),
        b2_L=_sum_batch(rv.r2_L, 1),
        W2_R=_sum_outer(rv.r2_R, z_R),
        b2_R=_sum_batch(rv.r2_R, 1),
        W2_LR=_sum_outer(rv.r2_LR, z_L + z_R),
        b2_LR=_sum_batch(rv.r2_LR, 1),
        w3=jnp.einsum("...,...q->q", rv.r3, h),
        b3=_sum_batch(rv.r3, 0),
    )
    return d_params, rv.r1_L @ params.W1_L, rv.r1_R @ params.W1_R
