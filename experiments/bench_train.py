"""Training throughput and ensembles: parts (c) and (f) of the benchmark.

Both time whole epochs of `experiments.train`'s own pieces (`make_train_step`,
`make_train_epoch`, the gated model with its explicit backward, Adam) on
synthetic data of a benchmark size, so what is measured is what a training
run executes:

* `throughput`: examples per second of one epoch, as the scan-fused epoch
  (`make_train_epoch`: one compiled `lax.scan` over the minibatches) and as a
  per-step loop (Python calls one jitted step per minibatch, the same gather
  of the minibatch's rows inside it, nothing synchronised until the end);
* `ensembles`: K models trained at once with `jax.vmap` over stacked params,
  optimizer states and shuffle keys, the data shared: seconds per epoch, per
  model, and as a multiple of one model.

`experiments.benchmark` runs these; timings are interleaved like its own.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import models
from experiments import train as train_lib
from experiments.data import Dataset

LEARNING_RATE = 1e-3  # Adam, as in the PyTorch loop of experiments.bench_torch


def synthetic_data(key: jax.Array, n: int, d_left: int, d_right: int) -> Dataset:
    """n examples: standard normal inputs and labels +-1 drawn independently."""
    k_left, k_right, k_t = jax.random.split(key, 3)
    return Dataset(
        x_left=jax.random.normal(k_left, (n, d_left), jnp.float32),
        x_right=jax.random.normal(k_right, (n, d_right), jnp.float32),
        t=jnp.where(jax.random.bernoulli(k_t, 0.5, (n,)), 1.0, -1.0).astype(jnp.float32),
    )


def _setup(shape: Sequence[int], steps: int):
    B, D_L, D_R, H, Q = shape
    model = models.build("gated", hidden=H, gates=Q, grad="custom")
    optimizer = optax.adam(LEARNING_RATE)
    data = synthetic_data(jax.random.key(1), steps * B, D_L, D_R)
    params = model.init(jax.random.key(0), D_L, D_R)
    return model, optimizer, data, params


def epoch_functions(shape: Sequence[int], steps: int) -> dict[str, Callable[[], object]]:
    """Zero-argument callables, each training one epoch of `steps` minibatches.

    "scan_epoch" is one call of the compiled `make_train_epoch`; "step_loop"
    is `steps` calls of a compiled `make_train_step` from Python. Both draw a
    fresh permutation of the rows per epoch and gather each minibatch on
    device, and both start every epoch from the same params (the figure is
    throughput, not progress). Each returns the trained state unsynchronised.
    """
    B = shape[0]
    model, optimizer, data, params = _setup(shape, steps)
    opt_state = optimizer.init(params)
    key = jax.random.key(2)

    scan_epoch = jax.jit(train_lib.make_train_epoch(model, optimizer, B))
    train_step = train_lib.make_train_step(model, optimizer)

    @jax.jit
    def permutation(key):
        return jax.random.permutation(key, steps * B)

    @jax.jit
    def loop_step(state, data, order, index):
        rows = jax.lax.dynamic_slice_in_dim(order, index * B, B)
        batch = jax.tree_util.tree_map(lambda a: a[rows], data)
        return train_step(state, batch)

    def step_loop():
        state = train_lib.TrainState(params, opt_state)
        order = permutation(key)
        for index in range(steps):
            state, _ = loop_step(state, data, order, np.int32(index))
        return state

    return {"scan_epoch": lambda: scan_epoch(params, opt_state, key, data), "step_loop": step_loop}


def ensemble_functions(
    shape: Sequence[int], steps: int, ks: Sequence[int], *, shared_order: bool = False
) -> dict[str, Callable[[], object]]:
    """One zero-argument callable per K: an epoch of K models trained at once.

    `make_train_epoch` vmapped over (params, opt_state, key) with the data
    shared (in_axes=(0, 0, 0, None)), as `experiments.compare` trains seeds:
    each model draws its own shuffle. With `shared_order` the K models take
    the same minibatches in the same order (the first model's key,
    in_axes=(0, 0, None, None)) and differ only in their initial params; the
    minibatch is then one array for all K, so the layer-1 products of every
    model, x W1^T and r1^T x, become one matrix product K times as wide
    instead of K small ones.
    """
    B, D_L, D_R = shape[:3]
    model, optimizer, data, _ = _setup(shape, steps)
    key_axis = None if shared_order else 0
    epoch = jax.jit(
        jax.vmap(train_lib.make_train_epoch(model, optimizer, B), (0, 0, key_axis, None))
    )
    fns = {}
    for k in ks:
        keys = jax.random.split(jax.random.key(3), k)
        params = jax.vmap(model.init, (0, None, None))(keys, D_L, D_R)
        opt_state = jax.vmap(optimizer.init)(params)
        order_keys = keys[0] if shared_order else keys
        fns[f"K={k}"] = lambda params=params, opt_state=opt_state, keys=order_keys: epoch(
            params, opt_state, keys, data
        )
    return fns
