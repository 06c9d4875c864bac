"""gated_jax: a gated two-branch network with its hand-derived backward in jax.custom_vjp.

The public names of SPEC.md, and the verification facility.
"""

from gated_jax import errata
from gated_jax.backprop import RVectors
from gated_jax.backprop import cotangents
from gated_jax.backprop import propagate
from gated_jax.model import Activations
from gated_jax.model import Params
from gated_jax.model import autodiff_loss
from gated_jax.model import forward
from gated_jax.model import init_params
from gated_jax.validate import check_shapes
from gated_jax.validate import validate_batch
from gated_jax.verify import CheckEntry
from gated_jax.verify import CheckReport
from gated_jax.verify import check_vjp
from gated_jax.verify import random_problem
from gated_jax.vjp import grads
from gated_jax.vjp import logits
from gated_jax.vjp import loss
from gated_jax.vjp import make_logits
from gated_jax.vjp import make_loss
from gated_jax.vjp import predict_proba
from gated_jax.vjp import r_vectors

__version__ = "0.1.0"

__all__ = [
    "Activations",
    "CheckEntry",
    "CheckReport",
    "Params",
    "RVectors",
    "autodiff_loss",
    "check_shapes",
    "check_vjp",
    "cotangents",
    "errata",
    "forward",
    "grads",
    "init_params",
    "logits",
    "loss",
    "make_logits",
    "make_loss",
    "predict_proba",
    "propagate",
    "r_vectors",
    "random_problem",
    "validate_batch",
]
