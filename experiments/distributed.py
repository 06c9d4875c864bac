"""Data-parallel training over a 1-D device mesh, on one host or several.

    python -m experiments.train --devices 4                     # 4 devices of this host
    python -m experiments.train --devices all --coordinator 10.0.0.1:1234 \\
        --num-processes 2 --process-id 0                        # one command per host

The engine is JAX's own sharding (GSPMD), nothing hand-made:

* the mesh is 1-D, its axis named `data` (DATA_AXIS), over `--devices N`
  devices of every process (`all`: each process's local devices);
* every minibatch is sharded along it, `NamedSharding(mesh, P("data"))`: the
  scan of `train.make_train_epoch` constrains each batch it gathers, so each
  device runs the forward and the custom-VJP backward on its B / devices rows;
* params, optimizer state, keys and metrics are replicated, `P()`; the
  compiler turns the batch mean of the loss into one all-reduce of the
  gradient (and of the metrics) per step. The backward itself is unchanged;
* the data sets are sharded by rows too: every device holds 1 / devices of
  them (`shard_rows`), and each process transfers only the rows of its own
  devices. The rows are padded to a multiple of the device count with t = 0
  rows, which the epoch never draws (it shuffles the first `n_train` rows)
  and the evaluation does not count. Each step's rows are fetched from the
  devices holding them by the compiler (a masked gather and an all-reduce of
  the batch), so the shuffle is the same global permutation as on one
  device: a run gives the same numbers on any number of devices and hosts,
  up to the order of floating-point sums (which `--symmetric` runs amplify
  over many epochs, as they amplify any rounding: README, "Scaling out").
  Exception: the digits-pairs image pool (a few hundred KB), from which
  fresh pairs are drawn every epoch, is replicated.

Several processes (`--coordinator HOST:PORT --num-processes P --process-id I`)
call `jax.distributed.initialize` before anything touches a device; all of
them run the same program on the global mesh, every process builds the
(deterministic) split but places only its rows, and only process 0 writes
metrics, plots, checkpoints and summary.json (`is_writer`). Checkpoints hold
plain host arrays, so a run saved under a mesh resumes on one device and the
other way round.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import data as data_lib

PyTree = Any

DATA_AXIS = "data"
ALL = "all"
CLI_NAMES = ("devices", "coordinator", "num_processes", "process_id")


# --------------------------------------------------------------------------
# Command line and start-up
# --------------------------------------------------------------------------


def parse_devices(text: str) -> int | str:
    """argparse type of --devices: a positive int or "all"."""
    if text.lower() == ALL:
        return ALL
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'all', got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the "devices and hosts" options (CLI_NAMES) to `parser`."""
    group = parser.add_argument_group("devices and hosts (experiments/distributed.py)")
    group.add_argument(
        "--devices",
        type=parse_devices,
        metavar="N|all",
        help="data-parallel over N devices of each process (all: every local device); "
        "the batch size must divide by the mesh's size (default: one device, no mesh; "
        "all with --coordinator)",
    )
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="several processes: the address of process 0 (jax.distributed.initialize)",
    )
    group.add_argument("--num-processes", type=int, help="with --coordinator: how many processes")
    group.add_argument("--process-id", type=int, help="with --coordinator: this process, 0..P-1")


def pop_cli_args(args: dict[str, Any]) -> dict[str, Any]:
    """Removes the CLI_NAMES entries from the parsed `args` and returns them (absent ones None)."""
    return {name: args.pop(name, None) for name in CLI_NAMES}


def initialize(coordinator: str, num_processes: int | None, process_id: int | None) -> None:
    """jax.distributed.initialize for process `process_id` of `num_processes`.

    Must run before anything touches a device. On CPU the cross-process
    collectives are gloo's (jax's default `jax_cpu_collectives_implementation`).

    Raises:
      ValueError: a malformed address or process numbers, or a failed start.
    """
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    if num_processes is None or process_id is None:
        raise ValueError("--coordinator needs --num-processes and --process-id")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process-id must be in 0..{num_processes - 1} for --num-processes "
            f"{num_processes}, got {process_id}"
        )
    # Cross-process collectives of the CPU backend: gloo is jax's default in
    # recent versions; older ones ship it but default to "none".
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"jax.distributed.initialize failed: {first}") from None


def make_mesh(devices: int | str = ALL) -> Mesh:
    """A 1-D mesh named DATA_AXIS over `devices` local devices of every process.

    Device order is process by process, so process p holds one contiguous
    block of every array sharded along the mesh.

    Raises:
      ValueError: more devices asked for than a process has.
    """
    local = jax.local_device_count()
    per_process = local if devices == ALL else devices
    if isinstance(per_process, bool) or not isinstance(per_process, int) or per_process < 1:
        raise ValueError(f"--devices must be a positive integer or 'all', got {devices!r}")
    if per_process > local:
        raise ValueError(
            f"--devices {devices}: this process has {local} device(s) "
            f"({jax.default_backend()}); on a CPU, set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=N before jax starts"
        )
    chosen = []
    for process in range(jax.process_count()):
        mine = [d for d in jax.devices() if d.process_index == process]
        chosen.extend(sorted(mine, key=lambda d: d.id)[:per_process])
    return Mesh(np.array(chosen), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def setup(
    devices: int | str | None = None,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> Mesh | None:
    """The CLI's entry: starts jax.distributed when asked and returns the mesh.

    Returns None (plain single-device training) when neither --devices nor
    --coordinator is given; with --coordinator, --devices defaults to "all".

    Raises:
      ValueError: bad options (`initialize`, `make_mesh`).
    """
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            raise ValueError("--num-processes and --process-id need --coordinator")
        return None if devices is None else make_mesh(devices)
    initialize(coordinator, num_processes, process_id)
    return make_mesh(ALL if devices is None else devices)


# --------------------------------------------------------------------------
# Processes: who writes, waiting for each other
# --------------------------------------------------------------------------


def is_writer() -> bool:
    """Whether this process writes the run's files (process 0; always, with one process)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits until every process reaches the barrier `name` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# --------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows along the mesh: the sharding of every minibatch and data set."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device: params, optimizer state, keys, metrics."""
    return NamedSharding(mesh, P())


def check_batch_size(mesh: Mesh, batch_size: int) -> None:
    """Raises ValueError unless `batch_size` divides by the mesh's device count."""
    if batch_size % mesh.size:
        raise ValueError(
            f"--batch-size {batch_size} does not divide by the {mesh.size} devices of the mesh; "
            f"choose a multiple of {mesh.size}"
        )


def epoch_options(mesh: Mesh, n_train: int) -> dict[str, Any]:
    """The keyword arguments of `train.make_train_epoch` for data parallelism over `mesh`."""
    return {"n_examples": n_train, "batch_sharding": batch_sharding(mesh)}


def pad_rows(data: data_lib.Dataset, multiple: int) -> data_lib.Dataset:
    """`data` with rows appended up to a multiple of `multiple`: zero inputs, t = 0.

    A t = 0 row is no example (labels are -1 or +1): `train.make_evaluate`
    does not count it, and the epoch never draws rows past its n_examples.
    """
    n = int(np.shape(data.t)[0])
    extra = -n % multiple
    if not extra:
        return data
    arrays = map(np.asarray, data)
    return data_lib.Dataset(
        *(np.concatenate([a, np.zeros((extra, *a.shape[1:]), a.dtype)]) for a in arrays)
    )


def shard_rows(mesh: Mesh, data: data_lib.Dataset) -> data_lib.Dataset:
    """Global arrays of `data`'s rows (padded, `pad_rows`) sharded along the mesh.

    `jax.make_array_from_callback` asks each process only for the rows of its
    own devices, so a process transfers its slice and nothing else.
    """
    padded = pad_rows(data, mesh.size)
    sharding = batch_sharding(mesh)

    def place(array: np.ndarray) -> jax.Array:
        return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

    return data_lib.Dataset(*(place(np.asarray(a)) for a in padded))


def replicate(mesh: Mesh, tree: PyTree) -> PyTree:
    """Every array leaf of `tree` copied to every device of the mesh (None stays None)."""
    return jax.device_put(tree, replicated(mesh))


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------


def fingerprint(tree: PyTree) -> str:
    """sha256 of this process's copy of every leaf of `tree` (replicated or host arrays).

    Two processes holding bitwise-equal params print the same fingerprint.
    """
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def describe(mesh: Mesh | None) -> Mapping[str, Any]:
    """JSON facts of the run's layout: devices in the mesh and processes."""
    if mesh is None:
        return {"devices": 1, "processes": jax.process_count(), "mesh": None}
    return {
        "devices": int(mesh.size),
        "processes": jax.process_count(),
        "mesh": {DATA_AXIS: int(mesh.size)},
        "device_kind": mesh.devices.flat[0].device_kind,
    }


def process_line(params: PyTree) -> str:
    """The line each process prints at the end of a multi-process run."""
    return (
        f"process {jax.process_index()} of {jax.process_count()}: "
        f"params sha256 {fingerprint(params)}"
    )
