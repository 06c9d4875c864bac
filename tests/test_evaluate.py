"""Tests for experiments/evaluate.py on a tiny finished run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from experiments import evaluate
from experiments import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The moons settings of test_train.py's TINY runs, so a session compiles them once.
TINY = {
    "task": "moons",
    "hidden": 8,
    "gates": 4,
    "batch_size": 32,
    "lr": 1e-2,
    "epochs": 2,
    "schedule_epochs": 4,
}


@pytest.fixture(scope="module")
def missing_run_subprocess(tmp_path_factory):
    """`python -m experiments.evaluate` on a missing run, started early to overlap the rest."""
    missing = tmp_path_factory.mktemp("missing") / "nope"
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.evaluate", str(missing)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, missing_run_subprocess):
    del missing_run_subprocess  # started first, so it runs while this trains
    workdir = tmp_path_factory.mktemp("eval") / "run"
    train.train_and_evaluate(train.TrainConfig(**TINY), workdir, quiet=True, write_plots=False)
    return workdir


@pytest.fixture(scope="module")
def test_file(finished_run, tmp_path_factory):
    """The run's own test split as a .npz file, labels 0/1."""
    split = train.load_split(train.read_config(finished_run))
    path = tmp_path_factory.mktemp("file") / "moons_test.npz"
    np.savez(path, x_left=split.test.x_left, x_right=split.test.x_right, t=(split.test.t > 0) * 1)
    return path


def run_main(argv, capsys):
    result = evaluate.main(argv)
    return result, capsys.readouterr().out


def test_json_output_matches_the_last_metrics_line(finished_run, capsys):
    result, out = run_main([str(finished_run), "--json"], capsys)
    assert json.loads(out) == pytest.approx(result, nan_ok=True)
    last = train.read_metrics(finished_run)[-1]
    assert result["epoch"] == last["epoch"] == TINY["epochs"]
    assert result["accuracy"] == pytest.approx(last["test_accuracy"], abs=1e-6)
    assert result["loss"] == pytest.approx(last["test_loss"], rel=1e-5)
    n = result["n"]
    assert n == json.loads((finished_run / "config.json").read_text())["data_info"]["n_test"]
    assert result["tp"] + result["fp"] + result["tn"] + result["fn"] == n
    assert (result["tp"] + result["tn"]) / n == pytest.approx(result["accuracy"], abs=1e-6)
    assert 0.5 < result["roc_auc"] <= 1.0


def test_printed_report_names_every_metric(finished_run, capsys):
    result, out = run_main([str(finished_run)], capsys)
    for word in ("loss", "accuracy", "roc_auc", "TP", "FP", "TN", "FN"):
        assert word in out
    assert f"TP {result['tp']}  FP {result['fp']}" in out
    assert f"{result['accuracy']:.4%}" in out


def test_scores_agree_with_a_direct_computation(finished_run):
    config, model, params, epoch, _ = evaluate.load_run(finished_run)
    assert epoch == TINY["epochs"]
    test = train.load_split(config).test
    logits = np.asarray(model.logits(params, test.x_left, test.x_right))
    result = evaluate.score(model, params, test)
    assert result["roc_auc"] == pytest.approx(roc_auc_score(test.t > 0, logits), abs=1e-9)
    assert result["tp"] == int(np.sum((logits > 0) & (test.t > 0)))
    assert result["fn"] == int(np.sum((logits <= 0) & (test.t > 0)))
    # A wrong model (other params) gives other counts: the check can fail.
    other = evaluate.score(model, _scaled(params, -1.0), test)
    assert (other["tp"], other["tn"]) != (result["tp"], result["tn"])


def _scaled(params, factor):
    return type(params)(*(factor * np.asarray(leaf) for leaf in params))


def test_a_file_with_the_run_test_set_gives_the_same_scores(finished_run, test_file, capsys):
    own, _ = run_main([str(finished_run), "--json"], capsys)
    from_file, _ = run_main(
        [str(finished_run), "--data", str(test_file), "--json", "--labels", "01"], capsys
    )
    assert from_file["n"] == own["n"]
    for key in ("accuracy", "tp", "fp", "tn", "fn"):
        assert from_file[key] == own[key]
    assert from_file["loss"] == pytest.approx(own["loss"], rel=1e-6)


def assert_one_line_error(code, stderr, needle):
    assert code == 2
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and needle in lines[0], stderr


def test_missing_run_dir_is_a_one_line_error_in_a_subprocess(missing_run_subprocess):
    _, stderr = missing_run_subprocess.communicate(timeout=120)
    assert_one_line_error(missing_run_subprocess.returncode, stderr, "not a run directory")


def _wrong_width_file(tmp_path):
    path = tmp_path / "wide.npz"
    np.savez(path, x_left=np.zeros((6, 5)), x_right=np.zeros((6, 2)), t=np.ones(6))
    return str(path)


@pytest.mark.parametrize(
    ("make_argv", "needle"),
    [
        (lambda run, tmp: [str(tmp)], "not a run directory"),
        (lambda run, tmp: [str(run), "--data", str(tmp / "none.npz")], "not found"),
        (lambda run, tmp: [str(run), "--data", _wrong_width_file(tmp)], "trained on (2, 2)"),
    ],
    ids=["not-a-run", "missing-file", "wrong-widths"],
)
def test_errors_are_one_line_and_exit_2(finished_run, tmp_path, capsys, make_argv, needle):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(make_argv(finished_run, tmp_path))
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, needle)


def test_run_without_checkpoint_is_an_error(finished_run, tmp_path, capsys):
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.json").write_text((finished_run / "config.json").read_text())
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([str(started)])
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, "no checkpoint")


def test_error_check_rejects_a_traceback():
    with pytest.raises(AssertionError):
        assert_one_line_error(2, "Traceback (most recent call last):\nerror: x\n", "x")
