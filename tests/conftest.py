"""Shared fixtures: PRNG keys, float64 on request, and small random problems."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gated_jax as gj


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x64():
    """float64 for one test only: jax.enable_x64 as a context, never globally."""
    with jax.enable_x64(True):
        yield


def make_problem(seed=0, sizes=(5, 3, 7, 4), batch=(6,), dtype=jnp.float32):
    """Random params (random biases, so gates are not all 1/2) and a batch with labels +-1."""
    return gj.random_problem(seed, sizes, batch, dtype)


def rel_err(a, b):
    """max |a - b| / max |b| over all leaves of two pytrees."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    num = max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(la, lb, strict=True)
    )
    den = max(float(np.max(np.abs(np.asarray(y, np.float64)))) for y in lb)
    return num / den
