"""Training throughput of data-parallel training on 1, 2, 4, ... devices.

    python -m experiments.bench_devices                  # 1, 2 and 4 devices, the main job
    python -m experiments.bench_devices --quick          # fewer pairs and epochs (~1 min)
    python -m experiments.bench_devices --devices 1 8    # any device counts
    python -m experiments.bench_devices --repeats 3      # a busy machine: median of 3 cycles

Each device count runs in a fresh subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=N set before jax is imported,
so a CPU machine shows N host devices; on an accelerator machine the first N
real devices are used (the flag touches only the CPU backend). The worker
trains the main job (digits-pairs, H = 256, Q = 64, batch 128 pairs, both
orders: 256 examples a step) with `train.train_and_evaluate(..., mesh=...)`,
exactly the code `python -m experiments.train --devices N` runs, and reports
examples per second from the median epoch time (compile excluded) and the
final train loss. That loss differs between device counts in the third
digit: the device count changes only the order of float32 sums, but the main
job's `--symmetric` start (mirrored branches) amplifies any rounding
difference, as a 1-ulp change of one weight does on one device; without
`--symmetric` the runs agree to about 1e-6 after 4 epochs.

Forced host devices share the machine's cores: on a 2-core CPU they cannot
run faster than one device, and the per-step all-reduce makes them slower.
The figure that matters there is that the program runs and gives the same
numbers; the speed-up needs real devices (GPUs or TPUs).

Writes a JSON (`--out`, default runs/bench-devices-<time>.json) and prints a
table. `main(argv)` returns the JSON's dict; `measure(devices, ...)` is the
same without the CLI.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

DEFAULT_DEVICES = (1, 2, 4)
WORKER_TIMEOUT_S = 900
FORCE_FLAG = "--xla_force_host_platform_device_count"
# name: (n_train_pairs, n_test_pairs, epochs); the main job has 25,000 / 10,000 pairs.
SIZES = {"full": (25000, 10000, 4), "quick": (5000, 2000, 3)}


def worker_env(devices: int) -> dict[str, str]:
    """os.environ with XLA_FLAGS forcing `devices` host devices (any older count replaced)."""
    env = dict(os.environ)
    flags = re.sub(rf"{FORCE_FLAG}=\S+", "", env.get("XLA_FLAGS", "")).split()
    env["XLA_FLAGS"] = " ".join([*flags, f"{FORCE_FLAG}={devices}"])
    return env


def run_worker(devices: int, size: str, hidden: int, gates: int) -> dict[str, Any]:
    """One device count in a subprocess; its JSON, or {"devices", "error"} if it failed."""
    cmd = [sys.executable, "-m", "experiments.bench_devices", "--worker", str(devices)]
    cmd += ["--size", size, "--hidden", str(hidden), "--gates", str(gates)]
    repo = pathlib.Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run(
            cmd,
            cwd=repo,
            env=worker_env(devices),
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"devices": devices, "error": f"timed out after {WORKER_TIMEOUT_S} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"devices": devices, "error": f"exit {proc.returncode}: {tail[0]}"}
    return json.loads(lines[-1])


def worker(devices: int, size: str, hidden: int, gates: int) -> dict[str, Any]:
    """Trains the main job on a mesh of `devices` devices in this process; its figures."""
    import jax

    from experiments import distributed
    from experiments import train

    n_train_pairs, n_test_pairs, epochs = SIZES[size]
    config = train.TrainConfig(
        n_train_pairs=n_train_pairs,
        n_test_pairs=n_test_pairs,
        hidden=hidden,
        gates=gates,
        epochs=epochs,
        ckpt_every=epochs,
    )
    mesh = distributed.make_mesh(devices)
    with tempfile.TemporaryDirectory() as tmp:
        tick = time.perf_counter()
        summary = train.train_and_evaluate(
            config, pathlib.Path(tmp) / "run", quiet=True, write_plots=False, mesh=mesh
        )
        wall = time.perf_counter() - tick
        seconds = [row["seconds"] for row in train.read_metrics(pathlib.Path(tmp) / "run")]
    steps = train.steps_per_epoch(n_train_pairs, config.batch_size)
    examples = steps * config.batch_size * 2  # symmetric: both orders of every pair
    median = statistics.median(seconds)
    return {
        "devices": devices,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "examples_per_epoch": examples,
        "epochs": epochs,
        "epoch_seconds": seconds,
        "examples_per_second": examples / median,
        "compile_seconds": summary["compile_seconds"],
        "wall_seconds": wall,
        "train_loss": summary["train_loss"],
        "test_accuracy": summary["test_accuracy"],
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def measure(
    devices: Sequence[int] = DEFAULT_DEVICES,
    *,
    quick: bool = False,
    hidden: int = 256,
    gates: int = 64,
    repeats: int = 1,
) -> dict[str, Any]:
    """Runs every device count in its own subprocess; the figures and the settings.

    With `repeats` > 1 the device counts are cycled through that many times
    (so a busy machine slows them alike) and each row keeps the repeat with
    the median examples/s; every repeat is in the row's "repeats".
    """
    size = "quick" if quick else "full"
    n_train_pairs, n_test_pairs, epochs = SIZES[size]
    runs = {n: [] for n in devices}
    for _ in range(repeats):
        for n in devices:
            runs[n].append(run_worker(n, size, hidden, gates))
    rows = [_median_run(runs[n]) for n in devices]
    base = next((r for r in rows if "error" not in r), None)
    for row in rows:
        if base is not None and "error" not in row:
            row["speedup_vs_first"] = row["examples_per_second"] / base["examples_per_second"]
    return {
        "what": "digits-pairs main job, data parallel over a 1-D mesh (train --devices N)",
        "settings": {
            "n_train_pairs": n_train_pairs,
            "n_test_pairs": n_test_pairs,
            "epochs": epochs,
            "hidden": hidden,
            "gates": gates,
            "batch_pairs": 128,
            "examples_per_step": 256,
        },
        "machine": machine(),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "rows": rows,
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median examples/s (the lower middle one), all of them attached."""
    good = sorted((r for r in runs if "error" not in r), key=lambda r: r["examples_per_second"])
    if not good:
        return runs[-1]
    row = dict(good[(len(good) - 1) // 2])
    row["repeats"] = [r.get("examples_per_second", r.get("error")) for r in runs]
    return row


def table(result: dict[str, Any]) -> str:
    """A markdown table of `measure`'s rows."""
    lines = [
        "| devices | examples/s | vs first | median epoch (s) | compile (s) | final train loss |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['devices']} | failed: {row['error']} | | | | |")
            continue
        lines.append(
            f"| {row['devices']} | {row['examples_per_second']:,.0f} | "
            f"{row['speedup_vs_first']:.2f}x | {statistics.median(row['epoch_seconds']):.3f} | "
            f"{row['compile_seconds']:.1f} | {row['train_loss']:.6f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.bench_devices",
        description="Examples/s of data-parallel training on 1, 2, 4 (forced host) devices.",
    )
    p.add_argument(
        "--devices",
        type=int,
        nargs="+",
        default=list(DEFAULT_DEVICES),
        help="device counts, each in its own subprocess (1 2 4)",
    )
    p.add_argument("--quick", action="store_true", help="5,000 pairs, 3 epochs")
    p.add_argument("--repeats", type=int, default=1, help="cycles over the device counts (1)")
    p.add_argument("--hidden", type=int, default=256, help="H (256)")
    p.add_argument("--gates", type=int, default=64, help="Q (64)")
    p.add_argument("--out", metavar="FILE.json", help="runs/bench-devices-<time>.json")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--size", choices=tuple(SIZES), default="full", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parses `argv`, measures, prints the table and writes the JSON; returns the JSON's dict."""
    args = build_parser().parse_args(argv)
    if args.worker is not None:  # inside a subprocess started by run_worker
        result = worker(args.worker, args.size, args.hidden, args.gates)
        print(json.dumps(result))
        return result
    if any(n < 1 for n in args.devices):
        build_parser().error(f"--devices must be positive, got {args.devices}")
    if args.repeats < 1:
        build_parser().error(f"--repeats must be positive, got {args.repeats}")
    result = measure(
        args.devices, quick=args.quick, hidden=args.hidden, gates=args.gates, repeats=args.repeats
    )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = pathlib.Path(args.out or f"runs/bench-devices-{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
