"""experiments.compare: the seeds of each model trained at once with vmap."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from experiments import compare
from experiments import train as train_lib


@pytest.fixture(scope="module")
def tiny():
    config = train_lib.resolve_config(
        train_lib.TrainConfig(task="xor", hidden=8, gates=4, epochs=3, batch_size=64, seed=3)
    )
    return config, train_lib.load_split(config)


def test_baselines_have_about_equal_parameter_counts(tiny):
    config, split = tiny
    gated, mlp, logreg = compare.baselines(config, 2, 2)
    assert gated.name.startswith("gated") and mlp.name.startswith("mlp") and logreg.name == "logreg"
    results = [compare.train_seeds(m, config, split, seeds=2) for m in (gated, mlp)]
    n_gated, n_mlp = (r.param_count for r in results)
    assert abs(n_mlp - n_gated) / n_gated < 0.2


def test_the_first_vmapped_seed_equals_a_training_run_of_that_seed(tiny, tmp_path):
    config, split = tiny
    _check_first_seed_equals_train(config, split, tmp_path)


def test_digits_pairs_seeds_get_trains_symmetric_loop_too(tmp_path):
    config = train_lib.resolve_config(
        train_lib.TrainConfig(
            hidden=8, gates=4, epochs=1, batch_size=64, n_train_pairs=256, n_test_pairs=200
        )
    )
    assert config.symmetric
    _check_first_seed_equals_train(config, train_lib.load_split(config), tmp_path)


def _check_first_seed_equals_train(config, split, tmp_path):
    gated = compare.baselines(config, 2, 2)[0]
    result = compare.train_seeds(gated, config, split, seeds=2)
    assert result.test_accuracy.shape == (2,)
    alone = train_lib.train_and_evaluate(config, tmp_path / "run", quiet=True, write_plots=False)
    np.testing.assert_allclose(result.test_accuracy[0], alone["test_accuracy"], atol=1e-6)
    np.testing.assert_allclose(result.test_loss[0], alone["test_loss"], rtol=1e-5)
    assert result.test_loss[1] != result.test_loss[0]  # the second seed is another model


def test_markdown_table_lists_every_model():
    results = [
        compare.Result("gated", 100, np.array([0.9, 0.8]), np.array([0.3, 0.4]), 1.0),
        compare.Result("logreg", 3, np.array([0.5, 0.5]), np.array([0.7, 0.7]), 0.5),
    ]
    table = compare.markdown_table(results, "t")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 3  # header + 2 models
    assert "| gated | 100 | 85.00 ± 5.00 | 80.00 | 90.00 |" in table


def test_cli_writes_the_table_and_rejects_bad_arguments(tmp_path):
    out = tmp_path / "cmp.md"
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.compare",
            "--task",
            "xor",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--hidden",
            "4",
            "--gates",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert out.read_text().count("\n| ") == 4  # header row + three models
    bad = subprocess.run(
        [sys.executable, "-m", "experiments.compare", "--seeds", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
