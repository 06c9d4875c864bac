"""The gated network against baselines, several seeds of each trained at once.

    python -m experiments.compare --task digits-pairs --seeds 5
    python -m experiments.compare --task breast-cancer --seeds 5 --epochs 60

Three models share the training loop of `experiments.train` (the same
optimizer, schedule, batch size, epochs and data): the gated network, a tanh
MLP with about as many parameters, and logistic regression. The seeds of a
model are one stack of params: `jax.vmap` of the compiled epoch over
(params, opt_state, key), so all seeds of a model train in one program. Seed
s uses the keys of `train --seed <seed + s>` (the data split stays that of
`--seed`). Prints a markdown table of test accuracy (mean, std, min, max over
seeds) and parameter counts, and saves it with `--out` (default
runs/compare-<task>-<time>.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import pathlib
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import gated_jax as gj
from experiments import data as data_lib
from experiments import models
from experiments import train as train_lib


@dataclasses.dataclass(frozen=True)
class Result:
    """One model's test accuracies over the seeds."""

    model: str
    param_count: int
    test_accuracy: np.ndarray  # (seeds,)
    test_loss: np.ndarray  # (seeds,)
    seconds: float  # training of all seeds, compile excluded


def baselines(config: train_lib.TrainConfig, d_left: int, d_right: int) -> list[models.Model]:
    """The gated network of `config`, an MLP with about its parameter count, logreg."""
    gated = models.gated(config.hidden, config.gates, config.grad)
    n_gated = models.param_count(
        jax.eval_shape(lambda key: gated.init(key, d_left, d_right), jax.random.key(0))
    )
    return [gated, models.mlp_matching(n_gated, d_left, d_right), models.logreg()]


def train_seeds(
    model: models.Model, config: train_lib.TrainConfig, split: data_lib.Split, seeds: int
) -> Result:
    """Trains `seeds` copies of `model` at once (vmap over stacked params)."""
    train, test = (data_lib.Dataset(*map(jnp.asarray, part)) for part in (split.train, split.test))
    pool = train_lib.pair_pool(split) if train_lib.uses_pair_pool(config) else None
    n_train = config.n_train_pairs if pool is not None else int(train.t.shape[0])
    optimizer = train_lib.make_optimizer(config, n_train)
    train_epoch = train_lib.make_train_epoch(
        model, optimizer, config.batch_size, symmetric=config.symmetric
    )
    evaluate = train_lib.make_evaluate(model)

    init_keys, train_keys = (
        jnp.stack(keys)
        for keys in zip(*(train_lib.run_keys(config.seed + s) for s in range(seeds)), strict=True)
    )
    d_left, d_right = int(train.x_left.shape[1]), int(train.x_right.shape[1])

    def init(key):
        params = model.init(key, d_left, d_right)
        if config.symmetric and isinstance(params, gj.Params):  # train's Siamese start
            params = train_lib.mirror_branches(params)
        return params

    params = jax.vmap(init)(init_keys)
    opt_state = jax.vmap(optimizer.init)(params)

    def one_seed(params, opt_state, key):
        data_key, shuffle_key = jax.random.split(key)
        data = train_lib.epoch_data(
            data_key, train, pool, n_pairs=config.n_train_pairs, input_noise=config.input_noise
        )
        return train_epoch(params, opt_state, shuffle_key, data)

    @jax.jit
    def run_epoch(params, opt_state, index):
        keys = jax.vmap(train_lib.epoch_key, (0, None))(train_keys, index)
        params, opt_state, _ = jax.vmap(one_seed)(params, opt_state, keys)
        return params, opt_state

    run_epoch = run_epoch.lower(params, opt_state, 0).compile()
    tick = time.perf_counter()
    for index in range(config.epochs):
        params, opt_state = run_epoch(params, opt_state, index)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - tick
    metrics = jax.device_get(jax.jit(jax.vmap(evaluate, (0, None)))(params, test))
    one = jax.tree_util.tree_map(lambda leaf: leaf[0], params)
    return Result(
        model=model.name,
        param_count=models.param_count(one),
        test_accuracy=np.asarray(metrics["accuracy"]),
        test_loss=np.asarray(metrics["loss"]),
        seconds=seconds,
    )


def markdown_table(results: Sequence[Result], title: str) -> str:
    """The comparison as a markdown table (accuracy in percent)."""
    lines = [
        f"### {title}",
        "",
        "| model | params | test accuracy mean ± std (%) | min | max | test loss mean "
        "| train time, all seeds (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        acc = 100 * r.test_accuracy
        lines.append(
            f"| {r.model} | {r.param_count:,} | {acc.mean():.2f} ± {acc.std(ddof=0):.2f} "
            f"| {acc.min():.2f} | {acc.max():.2f} | {r.test_loss.mean():.4f} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = train_lib._Parser(
        prog="python -m experiments.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = train_lib.TrainConfig()
    parser.add_argument("--task", choices=train_lib.TASK_OPTIONS, default=defaults.task)
    parser.add_argument("--seeds", type=int, default=5, help="models per kind (default 5)")
    parser.add_argument("--epochs", type=int, default=None, help="default: train's default")
    parser.add_argument("--hidden", type=int, default=defaults.hidden)
    parser.add_argument("--gates", type=int, default=defaults.gates)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="markdown file to write")
    return parser


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    config = train_lib.TrainConfig(
        task=args.task,
        hidden=args.hidden,
        gates=args.gates,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        **({} if args.epochs is None else {"epochs": args.epochs}),
    )
    try:
        config = train_lib.resolve_config(config)
        train_lib.check_config(config)
        split = train_lib.load_split(config)
        train_lib.check_against_data(config, split)
    except ValueError as e:
        parser.error(str(e))
    d_left, d_right = int(split.train.x_left.shape[1]), int(split.train.x_right.shape[1])
    results = []
    for model in baselines(config, d_left, d_right):
        print(f"training {args.seeds} x {model.name} ...", flush=True)
        results.append(train_seeds(model, config, split, args.seeds))
    title = (
        f"{config.task}: {args.seeds} seeds, {config.epochs} epochs, {config.optimizer} "
        f"lr {config.lr}, batch {config.batch_size}"
    )
    table = markdown_table(results, title)
    print(table)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or pathlib.Path("runs") / f"compare-{config.task}-{stamp}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    print(f"saved {out}")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
