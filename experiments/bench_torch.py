"""The PyTorch side of the benchmark (issue 4, parts b and c): the same network, eager and compiled.

    python -m experiments.bench_torch --sizes small medium large --json OUT
    OMP_WAIT_POLICY=PASSIVE python -m experiments.bench_torch ...   # recorded in the JSON

Needs PyTorch (`pip install -e .[bench]`), which is never a core dependency:
nothing in `gated_jax` or the other experiments imports this module.
`experiments.benchmark` runs it in a subprocess of its own, because PyTorch's
OpenMP threads keep spinning after a step and would slow down JAX code timed
next in the same process.

The network mirrors `gated_jax.model.forward` operation for operation, with
weights stored (out, in) as in `gj.Params` (a layer is `F.linear`, x W^T + b),
and the loss is mean softplus(-t a3), written as logaddexp(-t a3, 0) as
`jax.nn.softplus` is (torch's softplus turns linear above 20, which is not
the same function). Parameters come from numpy arrays, so a test can load
the very params of `gj.random_problem` and compare gradients with jax.grad.

Figures, float32, with `torch.set_num_threads(os.cpu_count())`:

* gradient step (part b): zero grads, forward, `loss.backward()`, in eager
  autograd (`torch_eager`) and with the forward and loss under
  `torch.compile(dynamic=False)` and backward by autograd (`torch_compile`).
  The problem is `benchmark.problem` (the same params and batch as the JAX
  side). The compiled function's first step (Dynamo, AOTAutograd and
  Inductor compile forward and backward) is timed on its own as
  `compile_seconds` and excluded; it depends on Inductor's on-disk cache, so a
  second run compiles faster. Timing is interleaved as in
  `benchmark.interleaved`: warm-up, then every repeat times each contender
  over `--number` calls in a rotating order; seconds per call are summarized
  by `benchmark.summarize` (median, min, max over repeats).
* training throughput (part c): a loop of torch.optim.Adam (lr 1e-3) steps on
  the size's batch size B over one epoch of `--steps` batches of synthetic
  data made up front (standard normal inputs, labels +-1), in examples per
  second over `--train-repeats` epochs; eager, and compiled where compiling
  worked (the same compiled forward and loss; Adam stays eager). On large
  this is most of the run (2 x 5 epochs of 50 steps of 1-2 s on 2 cores):
  `--train-sizes small` or `--no-train-epoch` keeps it short.

`--shapes B,D_L,D_R,H,Q ...` adds rows for more shapes (benchmark.py's sweep),
named by that string, with the gradient step only.

If torch.compile fails (no C compiler, say), its error string is recorded in
the JSON, its figures are null and the table says "skipped". Writes the JSON
to `--json` and prints a short table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

import gated_jax as gj
from experiments.benchmark import SIZES
from experiments.benchmark import paired_ratio
from experiments.benchmark import problem
from experiments.benchmark import summarize

FIELDS = gj.Params._fields
LR = 1e-3
MAX_ERROR_CHARS = 2000  # of a torch.compile error kept in the JSON


class GatedNet(torch.nn.Module):
    """The gated two-branch network, one torch Parameter per field of `gj.Params`."""

    def __init__(self, params: Mapping[str, np.ndarray], dtype: torch.dtype | None = None):
        """Copies `params` (a mapping or `gj.Params` of arrays), in their dtype unless given."""
        super().__init__()
        if hasattr(params, "_asdict"):
            params = params._asdict()
        for name in FIELDS:
            value = torch.tensor(np.asarray(params[name]), dtype=dtype)
            self.register_parameter(name, torch.nn.Parameter(value))

    def forward(self, x_left: torch.Tensor, x_right: torch.Tensor) -> torch.Tensor:
        """a3 of a batch (..., D_L), (..., D_R), as `gj.forward(...).a3`."""
        z_L = torch.tanh(F.linear(x_left, self.W1_L, self.b1_L))
        z_R = torch.tanh(F.linear(x_right, self.W1_R, self.b1_R))
        a2_L = F.linear(z_L, self.W2_L, self.b2_L)
        a2_R = F.linear(z_R, self.W2_R, self.b2_R)
        a2_LR = F.linear(z_L + z_R, self.W2_LR, self.b2_LR)
        gated = torch.sigmoid(a2_L) * torch.sigmoid(a2_R) * a2_LR
        return gated @ self.w3 + self.b3


def objective(
    model: GatedNet, x_left: torch.Tensor, x_right: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Mean E = softplus(-t a3) of a batch, as `gj.loss` (SPEC.md errata 4)."""
    a3 = model(x_left, x_right)
    return torch.logaddexp(-t * a3, a3.new_zeros(())).mean()


def gradients(params_numpy: Mapping[str, np.ndarray], x_left, x_right, t) -> dict[str, np.ndarray]:
    """dE/d(every field) of the mean loss by torch autograd, in the dtype of `params_numpy`.

    The reference for the tests: the same numbers as `jax.grad(gj.loss)` on
    the same params and batch (inputs and labels are cast to the params' dtype).
    """
    model = GatedNet(params_numpy)
    dtype = model.W1_L.dtype
    as_tensor = lambda a: torch.tensor(np.asarray(a), dtype=dtype)  # noqa: E731
    objective(model, as_tensor(x_left), as_tensor(x_right), as_tensor(t)).backward()
    return {name: p.grad.detach().numpy() for name, p in model.named_parameters()}


def grad_step(loss_fn: Callable, model: GatedNet, batch: tuple) -> Callable[[], torch.Tensor]:
    """One gradient step as a zero-argument call: zero grads, forward and loss, backward."""

    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model, *batch)
        loss.backward()
        return loss

    return step


def train_epoch(
    loss_fn: Callable, model: GatedNet, optimizer: torch.optim.Optimizer, data: tuple
) -> Callable[[int], None]:
    """`run(n)`: n Adam steps over the first n batches of `data` (steps, B, ...)."""

    def run(n: int) -> None:
        for i in range(n):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model, *(d[i] for d in data)).backward()
            optimizer.step()

    return run


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, number: int
) -> dict[str, list[float]]:
    """Seconds per call of each contender, as `benchmark.interleaved` (no warm-up here).

    Every repeat times each contender once over `number` calls, in an order
    rotated by one each repeat. PyTorch on CPU returns when the work is done,
    so no synchronisation is needed.
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = fns[name]
            tick = time.perf_counter()
            for _ in range(number):
                fn()
            times[name].append((time.perf_counter() - tick) / number)
    return times


def compile_objective() -> Callable:
    """A fresh `torch.compile` of `objective`, with shapes specialised (one size per compile)."""
    torch._dynamo.reset()  # every size compiles from scratch, whatever ran before
    return torch.compile(objective, dynamic=False)


def synthetic_epoch(steps: int, B: int, D_L: int, D_R: int, seed: int = 0) -> tuple:
    """`steps` batches made up front: standard normal inputs, labels +-1, float32."""
    rng = np.random.default_rng(seed)
    x_left = rng.standard_normal((steps, B, D_L), np.float32)
    x_right = rng.standard_normal((steps, B, D_R), np.float32)
    t = np.where(rng.random((steps, B)) < 0.5, 1.0, -1.0).astype(np.float32)
    return tuple(torch.from_numpy(a) for a in (x_left, x_right, t))


def error_string(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + " ..."


def bench_size(
    name: str,
    shape: Sequence[int],
    repeats: int,
    number: int,
    steps: int,
    train_repeats: int,
    use_compile: bool = True,
    train: bool = True,
) -> dict:
    """Every figure of one size, shape (B, D_L, D_R, H, Q) (see the module docstring)."""
    B, D_L, D_R, H, Q = shape
    params, x_left, x_right, t = problem(B, D_L, D_R, H, Q)
    params_np = {k: np.asarray(v) for k, v in params._asdict().items()}
    batch = tuple(torch.tensor(np.asarray(a)) for a in (x_left, x_right, t))

    model = GatedNet(params_np)
    steps_fns = {"torch_eager": grad_step(objective, model, batch)}
    compiled, compile_seconds, compile_error, compile_loss_diff = None, None, None, None
    if use_compile:
        try:
            compiled = compile_objective()
            step = grad_step(compiled, model, batch)
            tick = time.perf_counter()
            loss = step()  # compiles forward and backward
            compile_seconds = time.perf_counter() - tick
            compile_loss_diff = abs(loss.item() - objective(model, *batch).item())
            steps_fns["torch_compile"] = step
        except Exception as err:  # a failed compile is a figure, not a crash
            compiled, compile_error = None, error_string(err)
            print(f"  torch.compile skipped: {compile_error[:200]}", file=sys.stderr)
    for fn in steps_fns.values():  # warm-up
        fn()
    times = interleaved(steps_fns, repeats, number)
    seconds = {k: summarize(v) for k, v in times.items()}
    seconds.setdefault("torch_compile", None)

    train_figures: dict[str, dict | None] | None = None
    if train:
        data = synthetic_epoch(steps, B, D_L, D_R)
        loss_fns = {"torch_eager": objective}
        if compiled is not None:
            loss_fns["torch_compile"] = compiled
        epochs = {}
        for key, loss_fn in loss_fns.items():
            net = GatedNet(params_np)
            run = train_epoch(loss_fn, net, torch.optim.Adam(net.parameters(), lr=LR), data)
            run(min(steps, 2))  # warm-up: Adam's state, the compiled graph's guards
            epochs[key] = lambda run=run: run(steps)
        epoch_times = interleaved(epochs, train_repeats, 1)
        train_figures = {k: summarize([steps * B / s for s in v]) for k, v in epoch_times.items()}
        train_figures.setdefault("torch_compile", None)

    return {
        "size": name,
        "shape": {"B": B, "D_L": D_L, "D_R": D_R, "H": H, "Q": Q},
        "seconds": seconds,
        "compile_over_eager": (
            paired_ratio(times["torch_compile"], times["torch_eager"])
            if "torch_compile" in times
            else None
        ),
        "compile_seconds": compile_seconds,
        "compile_error": compile_error,
        "compile_loss_abs_diff": compile_loss_diff,
        "train_examples_per_s": train_figures,
        "repeats": repeats,
        "number": number,
        "train_steps": steps,
        "train_repeats": train_repeats,
    }


def table(results: Sequence[dict]) -> str:
    w = max([7, *(len(r["size"]) for r in results)])
    head = (
        f"{'size':<{w}} {'eager ms':>10} {'compiled ms':>12} {'compiled/eager':>22} "
        f"{'compile s':>10} {'train ex/s eager':>17} {'train ex/s compiled':>20}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        s, ratio, tr = r["seconds"], r["compile_over_eager"], r["train_examples_per_s"] or {}
        compiled = s["torch_compile"]
        lines.append(
            f"{r['size']:<{w}} {1e3 * s['torch_eager']['median']:>10.3f} "
            + (f"{1e3 * compiled['median']:>12.3f} " if compiled else f"{'skipped':>12} ")
            + (
                f"{ratio['median']:>6.3f} [{ratio['min']:.3f}-{ratio['max']:.3f}] "
                if ratio
                else f"{'-':>22} "
            )
            + (
                f"{r['compile_seconds']:>10.1f} "
                if r["compile_seconds"] is not None
                else f"{'-':>10} "
            )
            + "".join(
                f"{tr[k]['median']:>{width}.0f}" if tr.get(k) else f"{'-':>{width}}"
                for k, width in (("torch_eager", 17), ("torch_compile", 21))
            )
        )
    return "\n".join(lines)


def parse_shape(text: str) -> tuple[int, ...]:
    """Parses "B,D_L,D_R,H,Q" into five positive ints (an argparse type)."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 5 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected five positive ints B,D_L,D_R,H,Q, got {text!r}")
    return shape


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench_torch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=None)
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        default=[],
        metavar="B,D_L,D_R,H,Q",
        help="more shapes, gradient step only, named by the string (benchmark.py's sweep)",
    )
    parser.add_argument("--repeats", type=int, default=15, help="gradient-step repeats (15)")
    parser.add_argument("--number", type=int, default=5, help="calls per timing (default 5)")
    parser.add_argument("--steps", type=int, default=50, help="batches per training epoch (50)")
    parser.add_argument("--train-repeats", type=int, default=5, help="epochs timed (default 5)")
    parser.add_argument(
        "--train-epoch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure training throughput (default on)",
    )
    parser.add_argument(
        "--train-sizes",
        nargs="+",
        choices=list(SIZES),
        default=None,
        help="sizes whose training throughput is measured (default: every --sizes entry)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time torch.compile (default on)",
    )
    parser.add_argument("--json", type=pathlib.Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    if min(args.repeats, args.number, args.steps, args.train_repeats) < 1:
        parser.error("--repeats, --number, --steps and --train-repeats must be >= 1")
    torch.set_num_threads(os.cpu_count() or 1)
    sizes = args.sizes if args.sizes is not None else ([] if args.shapes else list(SIZES))
    train_sizes = sizes if args.train_sizes is None else args.train_sizes
    runs = [(name, SIZES[name], args.train_epoch and name in train_sizes) for name in sizes]
    runs += [(",".join(map(str, shape)), shape, False) for shape in args.shapes]
    results = []
    for name, shape, train in runs:
        print(f"benchmarking torch {name} {shape} ...", file=sys.stderr, flush=True)
        results.append(
            bench_size(
                name,
                shape,
                args.repeats,
                args.number,
                args.steps,
                args.train_repeats,
                use_compile=args.compile,
                train=train,
            )
        )
    doc = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "results": results,
    }
    print(table(results))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.json or pathlib.Path("runs") / f"bench-torch-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"saved {out}")
    return doc


if __name__ == "__main__":
    main()
