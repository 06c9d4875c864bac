"""What a training run does when something goes wrong, and the exit code it ends with.

* Bad input (flags, `--data`, `--resume`): one line on stderr, nothing
  written, exit 2.
* A non-finite loss, gradient or update: with `--on-nonfinite stop` the run
  stops naming the epoch and step, keeps the last good checkpoint, exit 3;
  with `skip` such a step leaves the state as it was and is counted in
  metrics.jsonl ("skipped_steps").
* SIGINT or SIGTERM: a checkpoint at the next epoch boundary, then exit 130
  or 143; a second signal stops at once (the last complete checkpoint stays).
* SIGKILL: checkpoints are atomic and resuming cuts metrics.jsonl back to
  the checkpoint's epoch, so nothing is lost or counted twice.

The pure pieces (`all_finite`, `keep_if`, `epoch_metrics`) run inside the
compiled epoch: a step is checked on device, so an epoch stays one `lax.scan`
and nothing syncs with the host per step. The rest runs on the host between
epochs.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
Metrics = dict[str, jax.Array]

EXIT_BAD_INPUT = 2  # argparse's code for a usage error
EXIT_NONFINITE = 3
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, the shell's code for Ctrl-C
NONFINITE_POLICIES = ("stop", "skip")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class NonFiniteError(FloatingPointError):
    """Training met a non-finite loss, gradient or update and stopped (exit code 3)."""

    def __init__(self, message: str, *, epoch: int, step: int):
        super().__init__(message)
        self.epoch = epoch  # 1-based epoch that failed
        self.step = step  # 1-based step of that epoch


class Interrupted(Exception):
    """A stop signal arrived; the run saved a checkpoint at an epoch boundary."""

    def __init__(self, message: str, *, epoch: int, signum: int):
        super().__init__(message)
        self.epoch = epoch  # completed epochs, all in the saved checkpoint
        self.exit_code = 128 + signum


# --------------------------------------------------------------------------
# On device: is a step finite, and what the epoch reports
# --------------------------------------------------------------------------


def all_finite(tree: PyTree) -> jax.Array:
    """True (a bool scalar) when every floating leaf of `tree` is free of NaN and inf.

    The leaves are raveled into one vector first, so that the check is one
    reduction, not one per leaf: it runs every training step, and for a small
    model many tiny reductions cost more than one pass over all the values.
    """
    leaves = [
        jnp.ravel(leaf)
        for leaf in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    if not leaves:
        return jnp.array(True)
    dtype = jnp.result_type(*leaves)  # the widest: no finite value overflows
    return jnp.all(jnp.isfinite(jnp.concatenate([leaf.astype(dtype) for leaf in leaves])))


def keep_if(ok: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    """`new` where the scalar `ok` holds, else `old`, leaf by leaf (a select, no branch)."""
    return jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)


def epoch_metrics(steps: Metrics) -> Metrics:
    """An epoch's metrics from the stacked metrics of its steps.

    Args:
      steps: "loss", "accuracy" and "finite" (bool), each (n_steps,).

    Returns:
      "loss" and "accuracy": means over the finite steps (NaN if none);
      "skipped_steps": the count of non-finite steps (int32);
      "first_nonfinite_step": the 1-based index of the first one, 0 if none.
    """
    finite = steps["finite"]
    n_good = jnp.sum(finite)

    def mean(values: jax.Array) -> jax.Array:
        total = jnp.sum(jnp.where(finite, values, 0.0))
        return jnp.where(n_good > 0, total / jnp.maximum(n_good, 1), jnp.nan)

    bad = ~finite
    return {
        "loss": mean(steps["loss"]),
        "accuracy": mean(steps["accuracy"]),
        "skipped_steps": jnp.sum(bad, dtype=jnp.int32),
        "first_nonfinite_step": jnp.where(jnp.any(bad), jnp.argmax(bad) + 1, 0).astype(jnp.int32),
    }


# --------------------------------------------------------------------------
# On the host, between epochs
# --------------------------------------------------------------------------


def nonfinite_problem(policy: str, metrics: dict[str, Any], *, epoch: int, n_steps: int) -> str:
    """Why the epoch must stop training ("" when it need not).

    `stop` fails on any non-finite step; `skip` only when every step of the
    epoch was skipped (training would then go on without learning anything).
    """
    skipped = int(metrics["skipped_steps"])
    if not skipped or (policy == "skip" and skipped < n_steps):
        return ""
    first = int(metrics["first_nonfinite_step"])
    if policy == "skip":
        return f"all {n_steps} steps of epoch {epoch} had a non-finite loss or gradient"
    return (
        f"non-finite loss or gradient at epoch {epoch}, step {first} of {n_steps} "
        f"({skipped} such steps in the epoch)"
    )


def nonfinite_message(problem: str, workdir: pathlib.Path, kept: pathlib.Path | None) -> str:
    """The one-line message of a NonFiniteError: what, what was kept, what to do."""
    where = f"last good checkpoint kept: {kept}" if kept else "no checkpoint was written"
    return (
        f"{problem}; stopped, {where}. Continue with --resume {workdir} --on-nonfinite skip, "
        "or start again with a lower --lr or --clip"
    )


def read_metrics_lines(path: pathlib.Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl, tolerating one torn last line.

    A process killed while appending leaves a last line without its newline;
    that row's epoch was never checkpointed (rows are written before the
    checkpoint), so it is dropped. Any other bad line is an error.

    Raises:
      ValueError: naming the file and line of a row that is not a JSON object.
    """
    lines = path.read_text().split("\n")
    lines.pop()  # the torn last line, or "" after the last newline
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or "epoch" not in row:
            raise ValueError(f"{path}:{number}: not a metrics row: {line[:60]!r}")
        rows.append(row)
    return rows


def check_resume_data(config_file: pathlib.Path, info: dict[str, Any]) -> None:
    """Raises ValueError when the data now loaded does not fit the run being resumed.

    Args:
      config_file: the run's config.json; its "data_info" was written when the
        run started.
      info: the `Split.info` of the data loaded now.
    """
    workdir = config_file.parent
    try:
        saved_info = json.loads(config_file.read_text()).get("data_info") or {}
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{config_file}: not a valid run config ({e})") from None
    keys = ("d_left", "d_right", "n_train")
    changed = [
        f"{key} {info[key]} (was {saved_info[key]})"
        for key in keys
        if key in saved_info and key in info and saved_info[key] != info[key]
    ]
    if changed:
        source = info.get("source") or "the task"
        raise ValueError(
            f"--resume {workdir}: the data does not fit the run: {', '.join(changed)}; "
            f"{source} changed since the run started"
        )


def damaged_checkpoint(error: Exception, older: pathlib.Path | None) -> str:
    """A CheckpointError's message with what the user can do about it."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if older is not None:
        return f"{message}; delete that checkpoint to resume from {older.name}"
    return message


# --------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------

_requested: list[int] = []  # the signals received while `stop_on_signals` is active


def stop_requested() -> int | None:
    """The signal number of a pending stop request, or None."""
    return _requested[0] if _requested else None


def _on_signal(signum: int, frame: Any) -> None:
    del frame
    if _requested:
        raise KeyboardInterrupt  # a second signal: stop at once
    _requested.append(signum)
    sys.stderr.write(
        f"{signal.Signals(signum).name}: stopping after the epoch in progress, with a "
        "checkpoint (send it again to stop at once)\n"
    )
    sys.stderr.flush()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While active, SIGINT and SIGTERM ask for a stop at the next epoch boundary.

    The training loop polls `stop_requested()` between epochs; a second signal
    raises KeyboardInterrupt wherever the program is. Outside the main thread
    (where Python cannot install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    previous = {signum: signal.signal(signum, _on_signal) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _requested.clear()


def exit_with(prog: str, message: str, code: int, label: str = "error") -> None:
    """Writes `prog: label: message` (its first line) to stderr and exits with `code`."""
    line = message.strip().splitlines()[0] if message.strip() else "unknown error"
    sys.stderr.write(f"{prog}: {label}: {line}\n")
    sys.exit(code)
