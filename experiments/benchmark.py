"""Speed and memory of the explicit backward against autodiff and the matrix-product floor.

    python -m experiments.benchmark            # small, medium, large
    python -m experiments.benchmark --quick    # small and medium, fewer repeats

Measured in one process, interleaved: every repeat times each contender once
(in a rotating order) over `--number` calls, after warm-up, and the figures
are the median with min and max over the repeats. Ratios pair contenders of
the same run.

* gradient step: `jit(grad(gj.loss))` (the r-vector backward) against
  `jit(grad(gj.autodiff_loss))` (autodiff of the same forward);
* the floor: the step's 13 matrix products alone (5 forward, 8 backward; the
  same shapes, nothing else), the step's time as a multiple of it, and the
  achieved FLOP/s of the step;
* memory: the compiled temporary and argument bytes of each step
  (`jit(...).lower(...).compile().memory_analysis()`).

Writes a JSON of every figure (`--out`, default runs/benchmark-<time>.json)
with the machine (jax.devices(), CPU model, cores). This covers parts (a),
(d) and (e) of the benchmark issue; PyTorch, training throughput, ensembles
and plots are not measured yet.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from collections.abc import Sequence

import jax
import jax.numpy as jnp

import gated_jax as gj

# name: (B, D_L, D_R, H, Q)
SIZES = {
    "small": (256, 64, 64, 64, 32),
    "medium": (1024, 256, 256, 256, 128),
    "large": (4096, 784, 784, 1024, 512),
}


def step_flops(B: int, D_L: int, D_R: int, H: int, Q: int) -> int:
    """Multiply-adds x 2 of the 13 matrix products of one gradient step (no dx)."""
    forward = B * H * (D_L + D_R) + 3 * B * H * Q
    backward = B * H * (D_L + D_R) + 3 * B * Q * H + 3 * B * Q * H
    return 2 * (forward + backward)


def problem(B: int, D_L: int, D_R: int, H: int, Q: int, seed: int = 0):
    return gj.random_problem(seed, (D_L, D_R, H, Q), (B,), jnp.float32)


def matmul_floor(params: gj.Params, x_left, x_right, z, r1, r2):
    """The step's matrix products with the step's shapes, and nothing else."""
    fwd = (
        x_left @ params.W1_L.T,
        x_right @ params.W1_R.T,
        z @ params.W2_L.T,
        z @ params.W2_R.T,
        z @ params.W2_LR.T,
    )
    bwd = (
        r1.T @ x_left,
        r1.T @ x_right,
        r2.T @ z,
        r2.T @ z,
        r2.T @ z,
        r2 @ params.W2_L,
        r2 @ params.W2_R,
        r2 @ params.W2_LR,
    )
    return fwd, bwd


def contenders(B, D_L, D_R, H, Q) -> dict[str, tuple[Callable, tuple]]:
    params, x_left, x_right, t = problem(B, D_L, D_R, H, Q)
    z = jnp.tanh(x_left @ params.W1_L.T)
    r1 = jnp.ones((B, H), jnp.float32)
    r2 = jnp.ones((B, Q), jnp.float32)
    return {
        "custom": (jax.jit(jax.grad(gj.loss)), (params, x_left, x_right, t)),
        "autodiff": (jax.jit(jax.grad(gj.autodiff_loss)), (params, x_left, x_right, t)),
        "floor": (jax.jit(matmul_floor), (params, x_left, x_right, z, r1, r2)),
    }


def memory(fn: Callable, args: tuple) -> dict[str, int | None]:
    """Compiled memory of `fn` on `args`, in bytes (None where the backend says nothing)."""
    analysis = fn.lower(*args).compile().memory_analysis()
    fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
    return {f: getattr(analysis, f, None) if analysis is not None else None for f in fields}


def interleaved(
    fns: dict[str, tuple[Callable, tuple]], repeats: int, number: int
) -> dict[str, list[float]]:
    """Seconds per call of each contender, one figure per repeat, order rotated each repeat."""
    for fn, args in fns.values():  # warm-up: compile and run once
        jax.block_until_ready(fn(*args))
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, args = fns[name]
            tick = time.perf_counter()
            for _ in range(number):
                out = fn(*args)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - tick) / number)
    return times


def summarize(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def paired_ratio(a: list[float], b: list[float]) -> dict[str, float]:
    """The ratio a / b of each repeat (both timed in that repeat), summarized."""
    return summarize([x / y for x, y in zip(a, b, strict=True)])


def bench_size(name: str, repeats: int, number: int) -> dict:
    B, D_L, D_R, H, Q = SIZES[name]
    fns = contenders(B, D_L, D_R, H, Q)
    times = interleaved(fns, repeats, number)
    flops = step_flops(B, D_L, D_R, H, Q)
    custom = summarize(times["custom"])
    return {
        "size": name,
        "shape": {"B": B, "D_L": D_L, "D_R": D_R, "H": H, "Q": Q},
        "seconds": {k: summarize(v) for k, v in times.items()},
        "custom_over_autodiff": paired_ratio(times["custom"], times["autodiff"]),
        "custom_over_floor": paired_ratio(times["custom"], times["floor"]),
        "autodiff_over_floor": paired_ratio(times["autodiff"], times["floor"]),
        "step_flops": flops,
        "custom_gflops_per_s": flops / custom["median"] / 1e9,
        "memory": {k: memory(fn, args) for k, (fn, args) in fns.items() if k != "floor"},
        "repeats": repeats,
        "number": number,
    }


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "devices": [str(d) for d in jax.devices()],
        "cpu": cpu,
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def table(results: Sequence[dict]) -> str:
    head = (
        f"{'size':<7} {'custom ms':>10} {'autodiff ms':>12} {'floor ms':>9} "
        f"{'custom/autodiff':>22} {'custom/floor':>12} {'GFLOP/s':>8} {'temp MiB c/a':>13}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        s = r["seconds"]
        ratio = r["custom_over_autodiff"]
        mem = r["memory"]
        temps = [mem[k]["temp_size_in_bytes"] for k in ("custom", "autodiff")]
        temp = "/".join("?" if b is None else f"{b / 2**20:.1f}" for b in temps)
        lines.append(
            f"{r['size']:<7} {1e3 * s['custom']['median']:>10.3f} "
            f"{1e3 * s['autodiff']['median']:>12.3f} {1e3 * s['floor']['median']:>9.3f} "
            f"{ratio['median']:>6.3f} [{ratio['min']:.3f}-{ratio['max']:.3f}] "
            f"{r['custom_over_floor']['median']:>12.2f} {r['custom_gflops_per_s']:>8.1f} "
            f"{temp:>13}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small and medium, 7 repeats")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=None)
    parser.add_argument("--repeats", type=int, default=None, help="default 7 (quick) or 15")
    parser.add_argument("--number", type=int, default=None, help="calls per timing (default 5)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    sizes = args.sizes or (["small", "medium"] if args.quick else list(SIZES))
    repeats = args.repeats or (7 if args.quick else 15)
    number = args.number or 5
    if repeats < 1 or number < 1:
        parser.error("--repeats and --number must be >= 1")
    results = []
    for name in sizes:
        print(f"benchmarking {name} {SIZES[name]} ...", file=sys.stderr, flush=True)
        results.append(bench_size(name, repeats, number))
    print(table(results))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or pathlib.Path("runs") / f"benchmark-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "results": results}, indent=1) + "\n")
    print(f"saved {out}")
    return results


if __name__ == "__main__":
    main()
