"""Evaluate a trained run: `python -m experiments.evaluate RUN_DIR [--data FILE.npz]`.

Loads RUN_DIR/config.json and the run's latest checkpoint (the templates
are built from the saved settings exactly as training built them), then
scores the run's test set, rebuilt deterministically from the saved task
and seed, or the examples of a .npz file. Prints the mean logistic loss,
the accuracy, the ROC AUC (scikit-learn) and the confusion counts, with
+1 the positive class and a logit > 0 the prediction +1.

Errors (no run, no checkpoint, a bad file) are one line on stderr and exit
code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import roc_auc_score

from experiments import checkpoint
from experiments import data as data_lib
from experiments import models
from experiments import train as train_lib

PyTree = Any
PARTS = ("all", "train", "test")


def load_run(
    run_dir: str | pathlib.Path,
) -> tuple[train_lib.TrainConfig, models.Model, PyTree, int, tuple[int, int]]:
    """(config, model, params, epoch, (D_L, D_R)) of a run's latest checkpoint.

    Raises:
      ValueError: no or bad config.json.
      checkpoint.CheckpointError: no checkpoint, or one that does not match
        the saved settings.
    """
    run_dir = pathlib.Path(run_dir)
    config = train_lib.read_config(run_dir)
    saved = json.loads((run_dir / train_lib.CONFIG_FILE).read_text())
    info = saved.get("data_info", {})
    try:
        n_train, d_left, d_right = (int(info[k]) for k in ("n_train", "d_left", "d_right"))
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{run_dir}/config.json: data_info lacks n_train, d_left, d_right"
        ) from None
    model = models.build(config.model, hidden=config.hidden, gates=config.gates, grad=config.grad)
    optimizer = train_lib.make_optimizer(config, n_train)
    init_key, train_key = train_lib.run_keys(config.seed)
    # Shapes and dtypes are all a template needs: nothing is computed.
    params, opt_state = jax.eval_shape(
        lambda key: (lambda p: (p, optimizer.init(p)))(model.init(key, d_left, d_right)), init_key
    )
    restored = checkpoint.restore_checkpoint(
        run_dir, params_template=params, opt_state_template=opt_state, key_template=train_key
    )
    return config, model, restored.params, restored.epoch, (d_left, d_right)


def load_examples(
    config: train_lib.TrainConfig, data_file: str | None, part: str | None, labels: str | None
) -> tuple[data_lib.Dataset, str]:
    """The examples to score and a description of them.

    Without `data_file`: the run's own split (`part`, default "test"),
    rebuilt from its settings. With it: the file's rows (`part`, default
    "all": every row, its test arrays included), labels coded as `labels`
    (default the run's --labels).
    """
    if data_file is None:
        part = part or "test"
        split = train_lib.load_split(config)
        where = f"{train_lib.task_name(config)} (seed {config.seed})"
    else:
        part = part or "all"
        split = data_lib.load_npz(
            data_file,
            test_fraction=config.test_fraction,
            seed=config.seed,
            labels=labels or config.labels,
        )
        where = data_file
    if part == "all":
        examples = data_lib.Dataset(
            *(np.concatenate(pair) for pair in zip(split.train, split.test, strict=True))
        )
    else:
        examples = getattr(split, part)
    return examples, f"{where}, {part} ({examples.t.shape[0]} examples)"


def score(model: models.Model, params: PyTree, examples: data_lib.Dataset) -> dict[str, Any]:
    """Loss, accuracy, ROC AUC and confusion counts of `params` on `examples`.

    One compiled call gives `train.make_evaluate`'s loss and accuracy (jit +
    vmap over examples) and `train.make_predict`'s logits, from which the
    AUC and the counts are computed (+1 predicted where logit > 0).
    """
    evaluate, predict = train_lib.make_evaluate(model), train_lib.make_predict(model)
    batch = data_lib.Dataset(*(jnp.asarray(a) for a in examples))
    metrics, logits = jax.device_get(
        jax.jit(lambda p, d: (evaluate(p, d), predict(p, d)))(params, batch)
    )
    positive, predicted = examples.t > 0, np.asarray(logits) > 0
    both_classes = bool(positive.any() and (~positive).any())
    return {
        "n": int(examples.t.shape[0]),
        "loss": float(metrics["loss"]),
        "accuracy": float(metrics["accuracy"]),
        "roc_auc": float(roc_auc_score(positive, logits)) if both_classes else math.nan,
        "tp": int(np.sum(predicted & positive)),
        "fp": int(np.sum(predicted & ~positive)),
        "tn": int(np.sum(~predicted & ~positive)),
        "fn": int(np.sum(~predicted & positive)),
    }


def report(result: dict[str, Any]) -> str:
    """The printed block: one 'name value' line per metric."""
    auc = "n/a (one class only)" if math.isnan(result["roc_auc"]) else f"{result['roc_auc']:.4f}"
    return "\n".join(
        [
            f"run       {result['run']} (epoch {result['epoch']})",
            f"data      {result['data']}",
            f"loss      {result['loss']:.4f}",
            f"accuracy  {result['accuracy']:.4%}",
            f"roc_auc   {auc}",
            f"confusion TP {result['tp']}  FP {result['fp']}  TN {result['tn']}  FN {result['fn']}",
        ]
    )


def evaluate_run(
    run_dir: str | pathlib.Path,
    data_file: str | None = None,
    *,
    part: str | None = None,
    labels: str | None = None,
) -> dict[str, Any]:
    """Scores a run's latest checkpoint; see `load_examples` for what is scored."""
    config, model, params, epoch, run_widths = load_run(run_dir)
    examples, where = load_examples(config, data_file, part, labels)
    widths = (int(examples.x_left.shape[1]), int(examples.x_right.shape[1]))
    if widths != run_widths:
        raise ValueError(f"{where}: (D_L, D_R) = {widths} but the run was trained on {run_widths}")
    result = score(model, params, examples)
    return {"run": str(run_dir), "epoch": epoch, "data": where, **result}


class _Parser(argparse.ArgumentParser):
    """Errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m experiments.evaluate",
        description="Score a run's latest checkpoint on its test set or on a .npz file.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by experiments.train")
    p.add_argument("--data", metavar="FILE.npz", help="score this file instead of the run's data")
    p.add_argument("--labels", choices=("pm1", "01"), help="label coding of --data (the run's)")
    p.add_argument(
        "--part",
        choices=PARTS,
        help="which rows: default 'test' of the run's data, 'all' of a --data file",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parses `argv`, evaluates, prints; errors exit with code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = evaluate_run(args.run_dir, args.data, part=args.part, labels=args.labels)
    except ValueError as e:  # includes checkpoint.CheckpointError
        message = str(e).strip().splitlines()
        parser.error(message[0] if message else type(e).__name__)
    print(json.dumps(result) if args.json else report(result))
    return result


if __name__ == "__main__":
    main()
