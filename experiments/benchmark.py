"""Speed and memory of the explicit backward: the benchmark suite.

    python -m experiments.benchmark            # everything, about 10 min on 2 CPU cores
    python -m experiments.benchmark --quick    # about 1.5 min: fewer sizes and repeats

Parts, each written to one JSON (`--out`, default runs/benchmark-<time>.json)
with the machine it ran on, and plotted (`--plots`, default next to the JSON):

a. gradient step: `jit(grad(gj.loss))` (the r-vector backward, "custom")
   against `jit(grad(gj.autodiff_loss))` (autodiff of the same forward);
b. PyTorch: the same step in eager autograd and under `torch.compile`, timed
   by `experiments.bench_torch` in a process of its own (PyTorch's OpenMP
   threads keep spinning after a step and would slow down JAX code timed
   next in the same process); skipped, and said so, when torch is missing;
c. training throughput: examples per second of an epoch, scan-fused against
   a per-step Python loop (`experiments.bench_train`) and a PyTorch loop;
d. the floor: the step's 13 matrix products alone (5 forward, 8 backward;
   the same shapes, nothing else), the step as a multiple of it, and the
   step's achieved FLOP/s;
e. memory: compiled temporary and argument bytes of each step
   (`jit(...).lower(...).compile().memory_analysis()`), and the residuals
   each loss keeps between its forward and its backward (`jax.vjp`);
f. ensembles: K models trained at once with vmap, time per model, each
   with its own shuffle and with the minibatches shared;
and a sweep of the step's time against the batch size and the width, for
the log-log plots. `--devices` runs the scaling-out benchmark instead
(`experiments.bench_devices`: data-parallel examples/s on 1, 2, 4 devices).

Timing: after warm-up (compile and one call), every repeat times each
contender once, over `--number` calls, in an order rotated each repeat; each
figure is the median with min and max over the repeats, and each ratio is
the median of per-repeat ratios of contenders timed in the same repeat.
PyTorch's figures come from its own process, run right after the JAX ones:
ratios against them are ratios of medians.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

import gated_jax as gj
from experiments import bench_train

# name: (B, D_L, D_R, H, Q)
SIZES = {
    "small": (256, 64, 64, 64, 32),
    "medium": (1024, 256, 256, 256, 128),
    "large": (4096, 784, 784, 1024, 512),
}
# The sweep: batch sizes at medium width, and widths (D = H = 2Q) at batch 1024.
SWEEP_BATCH = (64, 256, 1024, 4096)
SWEEP_WIDTH = (64, 128, 256, 512, 1024)
QUICK_SWEEP_BATCH = (64, 256, 1024)
QUICK_SWEEP_WIDTH = (64, 128, 256)
ENSEMBLE_KS = (1, 2, 4, 8, 16)
TORCH_TIMEOUT_S = 3600


def step_flops(B: int, D_L: int, D_R: int, H: int, Q: int) -> int:
    """Multiply-adds x 2 of the 13 matrix products of one gradient step (no dx)."""
    forward = B * H * (D_L + D_R) + 3 * B * H * Q
    backward = B * H * (D_L + D_R) + 3 * B * Q * H + 3 * B * Q * H
    return 2 * (forward + backward)


def problem(B: int, D_L: int, D_R: int, H: int, Q: int, seed: int = 0):
    return gj.random_problem(seed, (D_L, D_R, H, Q), (B,), jnp.float32)


def matmul_floor(params: gj.Params, x_left, x_right, z, r1, r2):
    """The step's 13 matrix products with the step's shapes, and nothing else.

    `z`, `r1` and `r2` stack the step's distinct operands (z: z_L, z_R,
    z_L + z_R; r1: r1_L, r1_R; r2: r2_L, r2_R, r2_LR): with one shared array
    XLA would merge the identical products r2^T z and time 11 of them.
    """
    z_L, z_R, z_LR = z
    r1_L, r1_R = r1
    r2_L, r2_R, r2_LR = r2
    fwd = (
        x_left @ params.W1_L.T,
        x_right @ params.W1_R.T,
        z_L @ params.W2_L.T,
        z_R @ params.W2_R.T,
        z_LR @ params.W2_LR.T,
    )
    bwd = (
        r1_L.T @ x_left,
        r1_R.T @ x_right,
        r2_L.T @ z_L,
        r2_R.T @ z_R,
        r2_LR.T @ z_LR,
        r2_L @ params.W2_L,
        r2_R @ params.W2_R,
        r2_LR @ params.W2_LR,
    )
    return fwd, bwd


def contenders(B, D_L, D_R, H, Q) -> dict[str, tuple[Callable, tuple]]:
    """name -> (jitted function, its arguments): custom, autodiff and floor."""
    params, x_left, x_right, t = problem(B, D_L, D_R, H, Q)
    keys = jax.random.split(jax.random.key(1), 3)
    z = jnp.tanh(jax.random.normal(keys[0], (3, B, H), jnp.float32))
    r1 = jax.random.normal(keys[1], (2, B, H), jnp.float32)
    r2 = jax.random.normal(keys[2], (3, B, Q), jnp.float32)
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


def residuals(loss: Callable, args: tuple) -> dict[str, int]:
    """What `jax.vjp(loss, *args)` keeps for the backward, beyond the arguments.

    The pullback is a pytree whose leaves are the residuals; a leaf that is
    one of the arguments costs no memory of its own, every other leaf does.
    This is what a backward run apart from its forward (`jax.vjp`, a scan
    over steps, remat) must hold between the two.
    """
    arg_ids = {id(leaf) for leaf in jax.tree_util.tree_leaves(args)}
    _, pullback = jax.vjp(loss, *args)
    leaves = jax.tree_util.tree_leaves(pullback)
    saved = [leaf for leaf in leaves if id(leaf) not in arg_ids]
    return {
        "saved_bytes": sum(leaf.nbytes for leaf in saved),
        "saved_arrays": len(saved),
        "argument_arrays": len(leaves) - len(saved),
    }


def interleaved(
    calls: dict[str, Callable[[], Any]], repeats: int, number: int
) -> dict[str, list[float]]:
    """Seconds per call of each zero-argument callable, one figure per repeat.

    Warm-up first (each called once and waited for); then every repeat times
    each callable over `number` calls, waiting for the last result, in an
    order rotated by one each repeat.
    """
    for call in calls.values():
        jax.block_until_ready(call())
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            call = calls[name]
            tick = time.perf_counter()
            for _ in range(number):
                out = call()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - tick) / number)
    return times


def _bind(fns: dict[str, tuple[Callable, tuple]]) -> dict[str, Callable[[], Any]]:
    return {name: (lambda fn=fn, args=args: fn(*args)) for name, (fn, args) in fns.items()}


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, min and max; and the quartiles q1, q3 (the spread without outliers)."""
    q1, _, q3 = (
        statistics.quantiles(samples, n=4, method="inclusive")
        if len(samples) > 1
        else [samples[0]] * 3
    )
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "q1": q1,
        "q3": q3,
    }


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """The ratio a / b of each repeat (both timed in that repeat), summarized."""
    return summarize([x / y for x, y in zip(a, b, strict=True)])


def shape_dict(shape: Sequence[int]) -> dict[str, int]:
    return dict(zip(("B", "D_L", "D_R", "H", "Q"), shape, strict=True))


# --------------------------------------------------------------------------
# (a), (d), (e): one gradient step
# --------------------------------------------------------------------------


def bench_step(name: str, shape: Sequence[int], repeats: int, number: int) -> dict:
    """Custom vs autodiff vs the matrix-product floor at one shape, with memory."""
    fns = contenders(*shape)
    times = interleaved(_bind(fns), repeats, number)
    flops = step_flops(*shape)
    custom = summarize(times["custom"])
    return {
        "size": name,
        "shape": shape_dict(shape),
        "seconds": {k: summarize(v) for k, v in times.items()},
        "custom_over_autodiff": paired_ratio(times["custom"], times["autodiff"]),
        "custom_over_floor": paired_ratio(times["custom"], times["floor"]),
        "autodiff_over_floor": paired_ratio(times["autodiff"], times["floor"]),
        "step_flops": flops,
        "custom_gflops_per_s": flops / custom["median"] / 1e9,
        "memory": {k: memory(fn, args) for k, (fn, args) in fns.items() if k != "floor"},
        "residuals": {
            "custom": residuals(gj.loss, fns["custom"][1]),
            "autodiff": residuals(gj.autodiff_loss, fns["autodiff"][1]),
        },
        "repeats": repeats,
        "number": number,
    }


def sweep(shapes: Sequence[Sequence[int]], repeats: int, number: int) -> list[dict]:
    """Custom and autodiff step times over `shapes` (no floor, no memory)."""
    rows = []
    for shape in shapes:
        fns = contenders(*shape)
        del fns["floor"]
        times = interleaved(_bind(fns), repeats, number)
        rows.append(
            {
                "shape": shape_dict(shape),
                "seconds": {k: summarize(v) for k, v in times.items()},
                "custom_over_autodiff": paired_ratio(times["custom"], times["autodiff"]),
            }
        )
    return rows


def sweep_shapes(quick: bool) -> dict[str, list[tuple[int, ...]]]:
    B, D_L, D_R, H, Q = SIZES["medium"]
    batches = QUICK_SWEEP_BATCH if quick else SWEEP_BATCH
    widths = QUICK_SWEEP_WIDTH if quick else SWEEP_WIDTH
    return {
        "batch": [(b, D_L, D_R, H, Q) for b in batches],
        "width": [(B, w, w, w, w // 2) for w in widths],
    }


# --------------------------------------------------------------------------
# (c), (f): training
# --------------------------------------------------------------------------


def bench_throughput(name: str, shape: Sequence[int], steps: int, repeats: int) -> dict:
    """Examples per second of an epoch: scan-fused vs a per-step loop."""
    times = interleaved(bench_train.epoch_functions(shape, steps), repeats, 1)
    examples = steps * shape[0]
    return {
        "size": name,
        "shape": shape_dict(shape),
        "steps": steps,
        "examples_per_s": {k: summarize([examples / s for s in v]) for k, v in times.items()},
        "scan_over_loop": paired_ratio(times["step_loop"], times["scan_epoch"]),
        "repeats": repeats,
    }


def bench_ensembles(
    name: str, shape: Sequence[int], steps: int, ks: Sequence[int], repeats: int
) -> dict:
    """Seconds per epoch of K models trained at once, per model, and over K = 1.

    Two ways: "own_order" (each model its own shuffle, as experiments.compare
    trains seeds) and "shared_order" (the same minibatches for all K), timed
    interleaved in the same repeats.
    """
    calls = {}
    for way in ("own_order", "shared_order"):
        fns = bench_train.ensemble_functions(shape, steps, ks, shared_order=way == "shared_order")
        calls.update({f"{way} {k}": fn for k, fn in fns.items()})
    times = interleaved(calls, repeats, 1)

    def rows(way: str) -> list[dict]:
        one = times[f"{way} K={ks[0]}"]
        return [
            {
                "K": k,
                "seconds": summarize(times[f"{way} K={k}"]),
                "seconds_per_model": summarize([s / k for s in times[f"{way} K={k}"]]),
                "over_one_model": paired_ratio(times[f"{way} K={k}"], one),
            }
            for k in ks
        ]

    return {
        "size": name,
        "shape": shape_dict(shape),
        "steps": steps,
        "rows": rows("own_order"),
        "shared_order_rows": rows("shared_order"),
        "repeats": repeats,
    }


# --------------------------------------------------------------------------
# (b), (c): PyTorch, in a process of its own
# --------------------------------------------------------------------------


def torch_figures(args: Sequence[str]) -> dict:
    """`python -m experiments.bench_torch ARGS` in a subprocess: its JSON, or why not.

    Returns {"skipped": reason} when torch is not installed or the run fails.
    """
    try:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return {"skipped": "torch is not installed (pip install -e '.[bench]')"}
    except (ImportError, ValueError) as e:  # a broken install
        return {"skipped": f"torch cannot be found: {e}"}
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "torch.json"
        cmd = [sys.executable, "-m", "experiments.bench_torch", *args, "--json", str(out)]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=TORCH_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            return {"skipped": f"timed out after {TORCH_TIMEOUT_S} s: {' '.join(cmd)}"}
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"skipped": f"bench_torch exited {proc.returncode}: {tail[0]}"}
        return json.loads(out.read_text())


# --------------------------------------------------------------------------
# Machine, tables, plots
# --------------------------------------------------------------------------


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
        "platform": jax.default_backend(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS"),
    }


def _ms(s: dict[str, float]) -> str:
    return f"{1e3 * s['median']:.3f}"


def _ratio(r: dict[str, float]) -> str:
    """median [min-max], and the interquartile range where `r` has it."""
    text = f"{r['median']:.3f} [{r['min']:.2f}-{r['max']:.2f}]"
    return text + (f" IQR {r['q1']:.2f}-{r['q3']:.2f}" if "q1" in r else "")


def _markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _torch_row(torch: dict, size: str) -> dict | None:
    return next((r for r in torch.get("results", []) if r.get("size") == size), None)


def _torch_seconds(row: dict | None, which: str) -> dict | None:
    return None if row is None else (row.get("seconds") or {}).get(which)


def tables(doc: dict) -> str:
    """Markdown tables of every part of `doc` (the JSON main writes)."""
    out = []
    steps, torch = doc.get("steps", []), doc.get("torch", {})
    if steps:
        rows = []
        for r in steps:
            mem = r["memory"]
            temps = [mem[k]["temp_size_in_bytes"] for k in ("custom", "autodiff")]
            temp = " / ".join("?" if b is None else f"{b / 2**20:.1f}" for b in temps)
            res = r["residuals"]
            saved = " / ".join(
                f"{res[k]['saved_bytes'] / 2**20:.2f}" for k in ("custom", "autodiff")
            )
            rows.append(
                [
                    f"{r['size']} {tuple(r['shape'].values())}",
                    _ms(r["seconds"]["custom"]),
                    _ms(r["seconds"]["autodiff"]),
                    _ms(r["seconds"]["floor"]),
                    _ratio(r["custom_over_autodiff"]),
                    _ratio(r["custom_over_floor"]),
                    f"{r['custom_gflops_per_s']:.1f}",
                    temp,
                    saved,
                ]
            )
        out.append(
            "(a, d, e) gradient step\n\n"
            + _markdown(
                [
                    "size (B, D_L, D_R, H, Q)",
                    "custom ms",
                    "autodiff ms",
                    "floor ms",
                    "custom / autodiff",
                    "custom / floor",
                    "custom GFLOP/s",
                    "temp MiB custom / autodiff",
                    "residuals MiB custom / autodiff",
                ],
                rows,
            )
        )
    if torch.get("results"):
        rows = []
        for r in steps:
            row = _torch_row(torch, r["size"])
            custom = r["seconds"]["custom"]["median"]
            cells = [r["size"], _ms(r["seconds"]["custom"])]
            for which in ("torch_eager", "torch_compile"):
                s = _torch_seconds(row, which)
                cells += ["-", "-"] if s is None else [_ms(s), f"{s['median'] / custom:.2f}"]
            rows.append(cells)
        out.append(
            f"(b) PyTorch {torch.get('torch')} ({torch.get('threads')} threads, own process)\n\n"
            + _markdown(
                [
                    "size",
                    "custom ms",
                    "torch eager ms",
                    "eager / custom",
                    "torch.compile ms",
                    "compile / custom",
                ],
                rows,
            )
        )
    elif torch.get("skipped"):
        out.append(f"(b) PyTorch: skipped: {torch['skipped']}")
    for r in doc.get("throughput", []):
        eps = r["examples_per_s"]
        row = _torch_row(torch, r["size"]) or {}
        t_eps = (row.get("train_examples_per_s") or {}).get("torch_eager")
        rows = [
            ["scan-fused epoch", f"{eps['scan_epoch']['median']:,.0f}", "1.00"],
            [
                "per-step jitted loop",
                f"{eps['step_loop']['median']:,.0f}",
                f"{1 / r['scan_over_loop']['median']:.2f}",
            ],
        ]
        if t_eps:
            ratio = t_eps["median"] / eps["scan_epoch"]["median"]
            rows.append(["PyTorch eager loop", f"{t_eps['median']:,.0f}", f"{ratio:.2f}"])
        out.append(
            f"(c) training throughput, {r['size']} {tuple(r['shape'].values())}, "
            f"{r['steps']} steps of Adam; scan / loop {_ratio(r['scan_over_loop'])}\n\n"
            + _markdown(["epoch as", "examples / s", "of scan-fused"], rows)
        )
    ens = doc.get("ensembles")
    if ens:
        rows = [
            [
                str(own["K"]),
                _ms(own["seconds_per_model"]),
                _ratio(own["over_one_model"]),
                _ms(shared["seconds_per_model"]),
                _ratio(shared["over_one_model"]),
            ]
            for own, shared in zip(ens["rows"], ens["shared_order_rows"], strict=True)
        ]
        out.append(
            f"(f) ensembles, {ens['size']} {tuple(ens['shape'].values())}, "
            f"{ens['steps']} steps per epoch (own: each model its own shuffle; "
            "shared: the same minibatches for all K)\n\n"
            + _markdown(
                [
                    "K",
                    "own: ms per model",
                    "own: time / one model",
                    "shared: ms per model",
                    "shared: time / one model",
                ],
                rows,
            )
        )
    return "\n\n".join(out)


def plot_scaling(doc: dict, path: os.PathLike | str) -> pathlib.Path:
    """Step time against batch size and against width, log-log, one line per contender."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from experiments.plots import save_figure

    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    torch = doc.get("torch", {})
    for ax, axis, key in zip(fig.subplots(1, 2), ("batch", "width"), ("B", "H"), strict=True):
        rows = doc["sweep"][axis]
        xs = [r["shape"][key] for r in rows]
        lines = {
            name: [r["seconds"][name]["median"] for r in rows] for name in ("custom", "autodiff")
        }
        for which in ("torch_eager", "torch_compile"):
            found = [
                _torch_seconds(_torch_row(torch, ",".join(map(str, r["shape"].values()))), which)
                for r in rows
            ]
            if any(found):
                lines[which.replace("_", " ")] = [None if s is None else s["median"] for s in found]
        for name, ys in lines.items():
            pts = [(x, 1e3 * y) for x, y in zip(xs, ys, strict=True) if y is not None]
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        fixed = rows[0]["shape"]
        ax.set_xlabel(
            f"batch size B (D={fixed['D_L']}, H={fixed['H']}, Q={fixed['Q']})"
            if axis == "batch"
            else f"width D = H = 2Q (B={fixed['B']})"
        )
        ax.set_ylabel("ms per gradient step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"gradient step, float32, {doc['machine']['cpu']} ({doc['machine']['cores']} cores)"
    )
    return save_figure(fig, path)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _write_json(path: pathlib.Path, doc: dict) -> None:
    """Atomic: a temporary file in the same directory, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="about 1.5 min: fewer sizes, repeats")
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=None, help="for (a)-(e)")
    p.add_argument("--repeats", type=int, default=None, help="default 5 (quick) or 31")
    p.add_argument("--number", type=int, default=None, help="calls per timing (default 5)")
    p.add_argument("--steps", type=int, default=None, help="minibatches per epoch, (c) and (f)")
    p.add_argument(
        "--parts",
        nargs="+",
        choices=("step", "torch", "train", "ensembles", "sweep"),
        default=None,
        help="which parts to run (default all)",
    )
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch (parts b, c)")
    p.add_argument(
        "--devices",
        action="store_true",
        help="instead: data-parallel examples/s on 1, 2 and 4 devices (experiments.bench_devices)",
    )
    p.add_argument("--out", type=pathlib.Path, default=None, help="JSON file to write")
    p.add_argument("--plots", type=pathlib.Path, default=None, help="PNG directory")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.devices:  # scaling out is its own benchmark, one process per device count
        from experiments import bench_devices

        forward = ["--quick"] if args.quick else []
        forward += [] if args.repeats is None else ["--repeats", str(args.repeats)]
        forward += [] if args.out is None else ["--out", str(args.out)]
        return bench_devices.main(forward)
    quick = args.quick
    sizes = args.sizes or (["small", "medium"] if quick else list(SIZES))
    repeats = (5 if quick else 31) if args.repeats is None else args.repeats
    number = 5 if args.number is None else args.number
    steps = (10 if quick else 50) if args.steps is None else args.steps
    parts = set(args.parts or ("step", "torch", "train", "ensembles", "sweep"))
    if args.no_torch:
        parts.discard("torch")
    if min(repeats, number, steps) < 1:
        parser.error("--repeats, --number and --steps must be >= 1")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or pathlib.Path("runs") / f"benchmark-{stamp}.json"
    plot_dir = args.plots or out.parent
    doc: dict[str, Any] = {
        "machine": machine(),
        "settings": {"quick": quick, "repeats": repeats, "number": number, "steps": steps},
    }

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if "step" in parts:
        doc["steps"] = []
        for name in sizes:
            say(f"(a, d, e) step {name} {SIZES[name]} ...")
            doc["steps"].append(bench_step(name, SIZES[name], repeats, number))
    if "train" in parts:
        say(f"(c) training throughput, small, {steps} steps ...")
        doc["throughput"] = [bench_throughput("small", SIZES["small"], steps, repeats)]
    if "ensembles" in parts:
        say(f"(f) ensembles K = {ENSEMBLE_KS}, small ...")
        doc["ensembles"] = bench_ensembles("small", SIZES["small"], steps, ENSEMBLE_KS, repeats)
    if "sweep" in parts:
        shapes = sweep_shapes(quick)
        say(f"sweep: {len(shapes['batch'])} batch sizes, {len(shapes['width'])} widths ...")
        doc["sweep"] = {axis: sweep(s, max(3, repeats // 3), number) for axis, s in shapes.items()}
    if "torch" in parts:
        say("(b, c) PyTorch in its own process ...")
        torch_args = ["--sizes", *sizes, "--repeats", str(repeats), "--number", str(number)]
        torch_args += ["--steps", str(steps), "--train-sizes", "small"]
        torch_args += ["--train-repeats", str(repeats)]
        if "sweep" in parts:
            shapes = [s for axis in doc["sweep"].values() for s in axis]
            torch_args += ["--shapes", *(",".join(map(str, r["shape"].values())) for r in shapes)]
        doc["torch"] = torch_figures(torch_args)
    print(tables(doc))
    _write_json(out, doc)
    print(f"saved {out}")
    if "sweep" in parts:
        plot_dir.mkdir(parents=True, exist_ok=True)
        print(f"saved {plot_scaling(doc, plot_dir / (out.stem + '-scaling.png'))}")
    return doc


if __name__ == "__main__":
    main()
