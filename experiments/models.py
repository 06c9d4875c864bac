"""Models for the experiments: the gated network and the baselines it is compared with.

A `Model` is four pure functions and a name. Every function is jit- and
vmap-compatible over its params (an ensemble of seeds is a stack of params
with a leading axis), and every loss is the mean logistic error on targets
t in {-1, +1}: mean(softplus(-t * logits)).

* `gated(hidden, gates, grad="custom")`: the gated two-branch network of
  SPEC.md. With grad="custom" the loss is `gj.loss`, so `jax.grad` runs the
  hand-derived backward (the r-vectors); with grad="autodiff" it is
  `gj.autodiff_loss`, plain autodiff of the same forward, for comparison.
* `mlp(hidden)`: a tanh MLP with two hidden layers of width `hidden` on
  concat(x_left, x_right).
* `logreg()`: a linear model on concat(x_left, x_right).
* `mlp_matching(n_params, d_left, d_right)`: the MLP whose width gives about
  `n_params` parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

import gated_jax as gj

PRNGKey = jax.Array
PyTree = Any

GRADS = ("custom", "autodiff")


class Model(NamedTuple):
    """A named family of pure functions over one params pytree.

    init(key, d_left, d_right) -> params
    logits(params, x_left (..., D_L), x_right (..., D_R)) -> (...)
    loss(params, x_left, x_right, t (...)) -> () mean logistic error
    """

    name: str
    init: Callable[[PRNGKey, int, int], PyTree]
    logits: Callable[[PyTree, ArrayLike, ArrayLike], jax.Array]
    loss: Callable[[PyTree, ArrayLike, ArrayLike, ArrayLike], jax.Array]


def param_count(params: PyTree) -> int:
    """Number of scalars in every leaf of `params` (one model, not a stack)."""
    return sum(int(math.prod(jnp.shape(leaf))) for leaf in jax.tree_util.tree_leaves(params))


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _mean_logistic(logits: jax.Array, t: ArrayLike) -> jax.Array:
    """mean(softplus(-t * logits)), the mean of E = ln(1 + exp(-t a))."""
    t = jnp.asarray(t).astype(logits.dtype)
    return jnp.mean(jax.nn.softplus(-t * logits))


# --------------------------------------------------------------------------
# The gated network
# --------------------------------------------------------------------------


def _gated_autodiff_logits(params: gj.Params, x_left: ArrayLike, x_right: ArrayLike) -> jax.Array:
    return gj.forward(params, x_left, x_right).a3


def gated(hidden: int, gates: int, grad: str = "custom") -> Model:
    """The gated two-branch network (SPEC.md) with H = hidden, Q = gates.

    Args:
      hidden: H, the width of both tanh layers.
      gates: Q, the number of gated units.
      grad: "custom" differentiates through the explicit backward
        (`gj.loss`, a custom_vjp); "autodiff" through `gj.autodiff_loss`.

    Returns:
      The Model; its params are `gj.Params`.
    """
    _check_positive("hidden", hidden)
    _check_positive("gates", gates)
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {', '.join(GRADS)}, got {grad!r}")

    def init(key: PRNGKey, d_left: int, d_right: int) -> gj.Params:
        return gj.init_params(key, d_left, d_right, hidden, gates)

    if grad == "custom":
        logits, loss = gj.logits, gj.loss
    else:
        logits, loss = _gated_autodiff_logits, gj.autodiff_loss
    return Model(name=f"gated-h{hidden}-q{gates}-{grad}", init=init, logits=logits, loss=loss)


# --------------------------------------------------------------------------
# Baselines on concat(x_left, x_right)
# --------------------------------------------------------------------------


class MLPParams(NamedTuple):
    """Two tanh layers of width H and a linear output, on x = concat(x_L, x_R)."""

    W1: jax.Array  # (H, D_L + D_R)
    b1: jax.Array  # (H,)
    W2: jax.Array  # (H, H)
    b2: jax.Array  # (H,)
    w3: jax.Array  # (H,)
    b3: jax.Array  # ()


class LogRegParams(NamedTuple):
    """a = w . concat(x_L, x_R) + b."""

    w: jax.Array  # (D_L + D_R,)
    b: jax.Array  # ()


def _glorot(key: PRNGKey, shape: tuple[int, ...], fan_in: int, fan_out: int) -> jax.Array:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def _concat(x_left: ArrayLike, x_right: ArrayLike) -> jax.Array:
    x_left, x_right = jnp.asarray(x_left), jnp.asarray(x_right)
    if x_left.shape[:-1] != x_right.shape[:-1]:
        raise ValueError(
            f"x_left batch shape {x_left.shape[:-1]} differs from x_right's {x_right.shape[:-1]}"
        )
    x = jnp.concatenate([x_left, x_right], axis=-1)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.float32)


def _mlp_logits(params: MLPParams, x_left: ArrayLike, x_right: ArrayLike) -> jax.Array:
    x = _concat(x_left, x_right)
    h1 = jnp.tanh(x @ params.W1.T + params.b1)
    h2 = jnp.tanh(h1 @ params.W2.T + params.b2)
    return h2 @ params.w3 + params.b3


def mlp(hidden: int) -> Model:
    """A tanh MLP with two hidden layers of width `hidden` on concat(x_L, x_R).

    With D = D_L + D_R it has H^2 + (D + 3) H + 1 parameters (see `mlp_matching`).
    """
    _check_positive("hidden", hidden)
    H = hidden

    def init(key: PRNGKey, d_left: int, d_right: int) -> MLPParams:
        _check_positive("d_left", d_left)
        _check_positive("d_right", d_right)
        d = d_left + d_right
        k1, k2, k3 = jax.random.split(key, 3)
        return MLPParams(
            W1=_glorot(k1, (H, d), d, H),
            b1=jnp.zeros((H,), jnp.float32),
            W2=_glorot(k2, (H, H), H, H),
            b2=jnp.zeros((H,), jnp.float32),
            w3=_glorot(k3, (H,), H, 1),
            b3=jnp.zeros((), jnp.float32),
        )

    def loss(params: MLPParams, x_left: ArrayLike, x_right: ArrayLike, t: ArrayLike) -> jax.Array:
        return _mean_logistic(_mlp_logits(params, x_left, x_right), t)

    return Model(name=f"mlp-h{hidden}", init=init, logits=_mlp_logits, loss=loss)


def mlp_matching(n_params: int, d_left: int, d_right: int) -> Model:
    """The `mlp` whose parameter count is closest to `n_params`.

    The count is H^2 + (D + 3) H + 1 with D = d_left + d_right; H is the
    positive root rounded to the nearer of its two neighbouring integers.
    """
    _check_positive("n_params", n_params)
    _check_positive("d_left", d_left)
    _check_positive("d_right", d_right)
    d = d_left + d_right

    def count(h: int) -> int:
        return h * h + (d + 3) * h + 1

    root = (-(d + 3) + math.sqrt((d + 3) ** 2 + 4 * (n_params - 1))) / 2
    lo = max(1, math.floor(root))
    hidden = min((lo, lo + 1), key=lambda h: (abs(count(h) - n_params), h))
    return mlp(hidden)


def _logreg_logits(params: LogRegParams, x_left: ArrayLike, x_right: ArrayLike) -> jax.Array:
    return _concat(x_left, x_right) @ params.w + params.b


def logreg() -> Model:
    """Logistic regression on concat(x_L, x_R), zero-initialised (the loss is convex)."""

    def init(key: PRNGKey, d_left: int, d_right: int) -> LogRegParams:
        del key  # a convex problem needs no random start
        _check_positive("d_left", d_left)
        _check_positive("d_right", d_right)
        return LogRegParams(
            w=jnp.zeros((d_left + d_right,), jnp.float32), b=jnp.zeros((), jnp.float32)
        )

    def loss(
        params: LogRegParams, x_left: ArrayLike, x_right: ArrayLike, t: ArrayLike
    ) -> jax.Array:
        return _mean_logistic(_logreg_logits(params, x_left, x_right), t)

    return Model(name="logreg", init=init, logits=_logreg_logits, loss=loss)


def build(name: str, *, hidden: int, gates: int, grad: str = "custom") -> Model:
    """A model by CLI name: "gated", "mlp" (width `hidden`) or "logreg"."""
    if name == "gated":
        return gated(hidden, gates, grad)
    if name == "mlp":
        return mlp(hidden)
    if name == "logreg":
        return logreg()
    raise ValueError(f"unknown model {name!r}; choose one of gated, mlp, logreg")
