"""The gated two-branch network as pure functions (SPEC.md, table "Notation").

    layer 1   a1_L = W1_L x_L + b1_L            a1_R = W1_R x_R + b1_R
              z_L = tanh(a1_L)                   z_R = tanh(a1_R)
    layer 2   a2_L = W2_L z_L + b2_L             a2_R = W2_R z_R + b2_R
              a2_LR = W2_LR (z_L + z_R) + b2_LR
    layer 3   a3 = w3 . (sigma(a2_L) * sigma(a2_R) * a2_LR) + b3

Weights are stored (out, in) as in the seed. Every function takes any number
of leading batch axes (none is one example); a layer on a batch is `z @ W.T`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from gated_jax.validate import as_array
from gated_jax.validate import check_shapes
from gated_jax.validate import param_sizes
from gated_jax.validate import positive_int

PRNGKey = jax.Array


class Params(NamedTuple):
    """Weights and biases of the gated network (shapes as in SPEC.md)."""

    W1_L: jax.Array  # (H, D_L)
    b1_L: jax.Array  # (H,)
    W1_R: jax.Array  # (H, D_R)
    b1_R: jax.Array  # (H,)
    W2_L: jax.Array  # (Q, H)
    b2_L: jax.Array  # (Q,)
    W2_R: jax.Array  # (Q, H)
    b2_R: jax.Array  # (Q,)
    W2_LR: jax.Array  # (Q, H)
    b2_LR: jax.Array  # (Q,)
    w3: jax.Array  # (Q,)
    b3: jax.Array  # ()


class Activations(NamedTuple):
    """Pre-activations of every layer for a batch of shape (...)."""

    a1_L: jax.Array  # (..., H)
    a1_R: jax.Array  # (..., H)
    a2_L: jax.Array  # (..., Q)
    a2_R: jax.Array  # (..., Q)
    a2_LR: jax.Array  # (..., Q)
    a3: jax.Array  # (...)


def _glorot_uniform(key: PRNGKey, shape, fan_in: int, fan_out: int, dtype) -> jax.Array:
    limit = jnp.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def init_params(
    key: PRNGKey,
    d_left: int,
    d_right: int,
    hidden: int,
    gates: int,
    dtype: DTypeLike = jnp.float32,
) -> Params:
    """Glorot-uniform weights, zero biases.

    Glorot (Xavier) uniform, limit sqrt(6 / (fan_in + fan_out)), suits the tanh
    and sigmoid units here. W2_LR acts on z_L + z_R, whose variance is twice
    that of one branch, so its fan_in is counted as 2H to keep a2_LR at the
    scale of a2_L and a2_R.

    Args:
      key: a PRNG key.
      d_left, d_right: input sizes D_L and D_R.
      hidden: H, the width of both tanh layers.
      gates: Q, the number of gated units.
      dtype: a floating dtype for every leaf.

    Returns:
      Params with the shapes of SPEC.md.
    """
    d_left, d_right, hidden, gates = (
        positive_int(f"init_params: {name}", value)
        for name, value in (
            ("d_left", d_left),
            ("d_right", d_right),
            ("hidden", hidden),
            ("gates", gates),
        )
    )
    try:
        floating = jnp.issubdtype(dtype, jnp.floating)
    except TypeError:  # not a dtype at all, e.g. a misspelt name
        floating = False
    if not floating:
        raise ValueError(f"init_params: dtype must be floating, got {dtype!r}")
    dtype = jnp.dtype(dtype)
    H, Q = hidden, gates
    try:
        k1l, k1r, k2l, k2r, k2lr, k3 = jax.random.split(key, 6)
    except (TypeError, ValueError):
        raise TypeError(
            "init_params: key must be one PRNG key (jax.random.key(seed) or "
            f"jax.random.PRNGKey(seed)), got {type(key).__name__} "
            f"{getattr(key, 'shape', '')} {getattr(key, 'dtype', '')}".rstrip()
        ) from None
    zeros = lambda n: jnp.zeros((n,), dtype)  # noqa: E731
    return Params(
        W1_L=_glorot_uniform(k1l, (H, d_left), d_left, H, dtype),
        b1_L=zeros(H),
        W1_R=_glorot_uniform(k1r, (H, d_right), d_right, H, dtype),
        b1_R=zeros(H),
        W2_L=_glorot_uniform(k2l, (Q, H), H, Q, dtype),
        b2_L=zeros(Q),
        W2_R=_glorot_uniform(k2r, (Q, H), H, Q, dtype),
        b2_R=zeros(Q),
        W2_LR=_glorot_uniform(k2lr, (Q, H), 2 * H, Q, dtype),
        b2_LR=zeros(Q),
        w3=_glorot_uniform(k3, (Q,), Q, 1, dtype),
        b3=jnp.zeros((), dtype),
    )


def as_float_input(params: Params, x: ArrayLike, name: str = "x") -> jax.Array:
    """Integer and boolean inputs become the params' dtype; floats are kept.

    Raises:
      TypeError: naming `name`, for what is not an array of numbers (None, strings).
    """
    x = as_array(name, x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(params.W1_L.dtype)
    return x


def layer1(params: Params, x_left: jax.Array, x_right: jax.Array) -> tuple[jax.Array, jax.Array]:
    """a1_L = W1_L x_L + b1_L, a1_R = W1_R x_R + b1_R."""
    a1_L = x_left @ params.W1_L.T + params.b1_L
    a1_R = x_right @ params.W1_R.T + params.b1_R
    return a1_L, a1_R


def layer2(
    params: Params, a1_L: jax.Array, a1_R: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """a2_L = W2_L z_L + b2_L, a2_R = W2_R z_R + b2_R, a2_LR = W2_LR (z_L + z_R) + b2_LR."""
    z_L, z_R = jnp.tanh(a1_L), jnp.tanh(a1_R)
    a2_L = z_L @ params.W2_L.T + params.b2_L
    a2_R = z_R @ params.W2_R.T + params.b2_R
    a2_LR = (z_L + z_R) @ params.W2_LR.T + params.b2_LR
    return a2_L, a2_R, a2_LR


def gated_units(a2_L: jax.Array, a2_R: jax.Array, a2_LR: jax.Array) -> jax.Array:
    """sigma(a2_L) * sigma(a2_R) * a2_LR, the input of layer 3."""
    return jax.nn.sigmoid(a2_L) * jax.nn.sigmoid(a2_R) * a2_LR


def layer3(params: Params, a2_L: jax.Array, a2_R: jax.Array, a2_LR: jax.Array) -> jax.Array:
    """a3 = w3 . (sigma(a2_L) * sigma(a2_R) * a2_LR) + b3."""
    return gated_units(a2_L, a2_R, a2_LR) @ params.w3 + params.b3


def forward(params: Params, x_left: ArrayLike, x_right: ArrayLike) -> Activations:
    """All pre-activations, by plain JAX (no custom derivative rule).

    Args:
      params: the network's Params.
      x_left: (..., D_L) left inputs.
      x_right: (..., D_R) right inputs, with the same leading shape.

    Returns:
      Activations; a3 has shape (...).

    Raises:
      ValueError: at trace time, when shapes disagree (see `validate.check_shapes`).
    """
    param_sizes(params)  # a wrong params type is named before the inputs are read
    x_left = as_float_input(params, x_left, "x_left")
    x_right = as_float_input(params, x_right, "x_right")
    check_shapes(params, x_left, x_right)
    a1_L, a1_R = layer1(params, x_left, x_right)
    a2_L, a2_R, a2_LR = layer2(params, a1_L, a1_R)
    a3 = layer3(params, a2_L, a2_R, a2_LR)
    return Activations(a1_L, a1_R, a2_L, a2_R, a2_LR, a3)


def error(a3: jax.Array, t: jax.Array) -> jax.Array:
    """E = ln(1 + exp(-t a3)) per example, as softplus(-t a3) (SPEC.md errata 4)."""
    return jax.nn.softplus(-t * a3)


def autodiff_loss(params: Params, x_left: ArrayLike, x_right: ArrayLike, t: ArrayLike) -> jax.Array:
    """Mean E by plain JAX, with no custom rule: the reference that autodiff differentiates."""
    a3 = forward(params, x_left, x_right).a3
    t = as_array("t", t)
    batch = check_shapes(params, as_array("x_left", x_left), as_array("x_right", x_right), t)
    if math.prod(batch) == 0:
        raise ValueError(
            f"empty batch: x_left has batch shape {batch}; the loss is a mean over its examples"
        )
    return jnp.mean(error(a3, t.astype(a3.dtype)))
