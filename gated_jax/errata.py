"""The seed's lines that SPEC.md's errata correct, implemented as written.

These are wrong on purpose. They exist so that anyone can watch the
verification facility reject them:

    report = gj.check_vjp(params, x_left, x_right, t, propagate=gj.errata.propagate_seed_sigma_form)
    assert not report.ok

Each function has the signature of `backprop.propagate` (params, acts, r3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gated_jax.backprop import RVectors
from gated_jax.backprop import r1_from_r2
from gated_jax.backprop import r2_from_r3
from gated_jax.model import Activations
from gated_jax.model import Params


def propagate_seed_sigma_form(params: Params, acts: Activations, r3: jax.Array) -> RVectors:
    """Errata 1: the seed's second lines of blocks L and R, without a2_LR.

    r2_L = r3 w3 sigma(a2_R) sigma'(a2_L)      (seed, as written)
    r2_R = r3 w3 sigma(a2_L) sigma'(a2_R)
    """
    s_L, s_R = jax.nn.sigmoid(acts.a2_L), jax.nn.sigmoid(acts.a2_R)
    r3_w3 = r3[..., None] * params.w3
    r2_L = r3_w3 * s_R * s_L * (1 - s_L)
    r2_R = r3_w3 * s_L * s_R * (1 - s_R)
    r2_LR = r3_w3 * s_L * s_R
    r1_L, r1_R = r1_from_r2(params, acts, r2_L, r2_R, r2_LR)
    return RVectors(r3, r2_L, r2_R, r2_LR, r1_L, r1_R)


def propagate_seed_bracket(params: Params, acts: Activations, r3: jax.Array) -> RVectors:
    """Errata 2: the middle line of the seed's layer-1 blocks, bracket as written.

    r1_L,q = sum_k (r2_L,k W2_L,kq sech(a1_L,q)^2 + r2_LR,k W2_LR,kq sech(a1_L,q))^2
    """
    r2_L, r2_R, r2_LR = r2_from_r3(params, acts, r3)
    sech_L, sech_R = 1 / jnp.cosh(acts.a1_L), 1 / jnp.cosh(acts.a1_R)

    def block(r2, W2, sech):
        terms = (
            r2[..., :, None] * W2 * sech[..., None, :] ** 2
            + r2_LR[..., :, None] * params.W2_LR * sech[..., None, :]
        ) ** 2
        return jnp.sum(terms, axis=-2)

    r1_L = block(r2_L, params.W2_L, sech_L)
    r1_R = block(r2_R, params.W2_R, sech_R)
    return RVectors(r3, r2_L, r2_R, r2_LR, r1_L, r1_R)
