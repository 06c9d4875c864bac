"""Checks the explicit backward over a grid of random configurations.

    python -m experiments.verify            # the full grid
    python -m experiments.verify --quick    # one size per batch shape and dtype
    python -m experiments.verify --propagate seed-sigma-form   # watch the seed's text fail

Each configuration (sizes with D_L != D_R, batch shapes (), (1,), (n,), (a, b),
float32 and float64) runs `gj.check_vjp`. The table shows, per entry, the
worst relative error over all configurations of each dtype. Exit code 1 when
any check fails.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import gated_jax as gj

SIZES = ((3, 5, 4, 2), (8, 6, 7, 5), (20, 12, 16, 9))  # (D_L, D_R, H, Q)
BATCH_SHAPES = ((), (1,), (7,), (2, 3))
DTYPES = ("float32", "float64")
PROPAGATES = {
    "library": gj.propagate,
    "seed-sigma-form": gj.errata.propagate_seed_sigma_form,
    "seed-bracket": gj.errata.propagate_seed_bracket,
}


def run_grid(configs, propagate, seed: int = 0, verbose: bool = False):
    """Runs check_vjp on every (sizes, batch_shape, dtype); returns [(config, report)]."""
    results = []
    for i, (sizes, batch_shape, dtype) in enumerate(configs):
        with jax.enable_x64(dtype == "float64"):
            problem = gj.random_problem(seed + i, sizes, batch_shape, jnp.dtype(dtype))
            report = gj.check_vjp(*problem, propagate=propagate, seed=seed + i)
        results.append(((sizes, batch_shape, dtype), report))
        status = "ok" if report.ok else "FAIL"
        print(
            f"[{i + 1:2d}/{len(configs)}] {dtype} D_L,D_R,H,Q={sizes} batch={batch_shape}: "
            f"{status}  ({report.summary()})",
            flush=True,
        )
        if verbose or not report.ok:
            print(report.table(), flush=True)
    return results


def worst_table(results) -> str:
    """Per entry, the worst relative error of each dtype over the grid."""
    names = [e.name for e in results[0][1].entries]
    worst = {(n, d): (0.0, 0.0, True) for n in names for d in DTYPES}
    for (_, _, dtype), report in results:
        for e in report.entries:
            rel, tol, ok = worst.get((e.name, dtype), (0.0, 0.0, True))
            worst[(e.name, dtype)] = (max(rel, e.max_rel_err), max(tol, e.tol), ok and e.ok)
    width = max(len(n) for n in names)
    head = (
        f"{'entry (worst over the grid)':<{width}}  {'f32 rel err':>11}  {'f32 tol':>7}  "
        f"{'f64 rel err':>11}  {'f64 tol':>7}  ok"
    )
    lines = [head, "-" * len(head)]
    for n in names:
        r32, t32, ok32 = worst[(n, "float32")]
        r64, t64, ok64 = worst[(n, "float64")]
        lines.append(
            f"{n:<{width}}  {r32:>11.2e}  {t32:>7.0e}  {r64:>11.2e}  {t64:>7.0e}  "
            f"{'ok' if ok32 and ok64 else 'FAIL'}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.verify",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="one size per batch shape and dtype")
    parser.add_argument(
        "--propagate",
        choices=sorted(PROPAGATES),
        default="library",
        help="the r-vector pass to check (the seed's literal lines fail)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print every report's table")
    args = parser.parse_args(argv)

    sizes = SIZES[1:2] if args.quick else SIZES
    configs = [(s, b, d) for d, s, b in itertools.product(DTYPES, sizes, BATCH_SHAPES)]
    start = time.perf_counter()
    results = run_grid(configs, PROPAGATES[args.propagate], args.seed, args.verbose)
    print()
    print(worst_table(results))
    failed = [(c, r) for c, r in results if not r.ok]
    seconds = time.perf_counter() - start
    n_checks = sum(len(r.entries) for _, r in results)
    print(
        f"\n{len(results)} configurations, {n_checks} checks, "
        f"{len(failed)} configurations failed, {seconds:.0f} s"
    )
    for (sizes, batch, dtype), report in failed[:3]:
        print(f"FAILED {dtype} {sizes} {batch}: {report.summary()}")
    print(f"jax {jax.__version__}, devices {jax.devices()}, numpy {np.__version__}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
