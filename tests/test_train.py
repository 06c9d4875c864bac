"""Tests for experiments/train.py and experiments/models.py: tiny runs on every task.

Every run here is a few hundred examples and a handful of hidden units, so
the whole file stays within seconds of compile time per run.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gated_jax as gj
from experiments import checkpoint
from experiments import data as data_lib
from experiments import models
from experiments import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One cosine horizon for every run, so that runs of one task share their
# compiled epoch (train.epoch_runner is cached per computation).
TINY = {"hidden": 8, "gates": 4, "batch_size": 32, "lr": 1e-2, "epochs": 1, "schedule_epochs": 4}
TINY_DIGITS = {"n_train_pairs": 256, "n_test_pairs": 100}
METRIC_KEYS = {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds",
               "skipped_steps"}  # fmt: skip


def tiny_config(**overrides):
    settings = {**TINY, **overrides}
    if settings.get("task", "digits-pairs") == "digits-pairs" and "data" not in settings:
        settings = {**TINY_DIGITS, **settings}
    return train.TrainConfig(**settings)


def run(tmp_path, name="run", plots=False, **overrides):
    workdir = tmp_path / name
    summary = train.train_and_evaluate(
        tiny_config(**overrides), workdir, quiet=True, write_plots=plots
    )
    return workdir, summary


def params_of(summary):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(summary["params"])]


def assert_bitwise_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def bitwise_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory):
    # 2000 rows of two features, as moons and xor have: the runs share a compile.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3)).astype(np.float32)
    path = tmp_path_factory.mktemp("npz") / "toy.npz"
    np.savez(path, x_left=x[:, :2], x_right=x[:, 1:], t=np.where(x[:, 0] > 0, 1.0, -1.0))
    return path


# --------------------------------------------------------------------------
# Smoke runs: outputs and the metrics schema
# --------------------------------------------------------------------------


def check_run_dir(workdir, epochs):
    config = json.loads((workdir / "config.json").read_text())
    assert set(train.TrainConfig._fields) == set(config["settings"])
    assert set(config["versions"]) >= {"jax", "jaxlib", "optax", "numpy", "gated_jax"}
    assert all(isinstance(d, str) for d in config["devices"]) and config["devices"]
    assert config["data_info"]["n_train"] > 0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == list(range(1, epochs + 1))
    for row in rows:
        assert set(row) == METRIC_KEYS
        assert isinstance(row["epoch"], int)
        assert row["skipped_steps"] == 0  # an int: steps with a NaN/inf loss or gradient
        for key in METRIC_KEYS - {"epoch", "skipped_steps"}:
            assert isinstance(row[key], float) and np.isfinite(row[key])
        assert 0.0 <= row["train_accuracy"] <= 1.0 and 0.0 <= row["test_accuracy"] <= 1.0
    assert checkpoint.latest_checkpoint(workdir).name == f"ckpt_{epochs:06d}"
    assert json.loads((workdir / "summary.json").read_text())["epochs"] == epochs
    return rows


@pytest.mark.parametrize(
    "source",
    [
        {"task": "digits-pairs"},
        {"task": "breast-cancer"},
        {"task": "moons"},
        {"task": "xor"},
        "npz",
    ],
    ids=["digits-pairs", "breast-cancer", "moons", "xor", "npz"],
)
def test_one_epoch_smoke(tmp_path, npz_file, source):
    overrides = {"data": str(npz_file)} if source == "npz" else source
    workdir, summary = run(tmp_path, plots=(source == {"task": "xor"}), **overrides)
    rows = check_run_dir(workdir, epochs=1)
    assert summary["test_accuracy"] == rows[-1]["test_accuracy"]
    if source == {"task": "xor"}:
        assert (workdir / "plots" / "curves.png").is_file()


def test_metrics_schema_check_rejects_a_bad_file(tmp_path):
    workdir, _ = run(tmp_path, task="xor")
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 1, "train_loss": 0.5}) + "\n")
    with pytest.raises(AssertionError):
        check_run_dir(workdir, epochs=1)


def test_existing_run_dir_is_refused(tmp_path):
    workdir, _ = run(tmp_path, task="xor")
    with pytest.raises(ValueError, match="already holds a run"):
        run(tmp_path, task="xor")
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1


def test_task_defaults_are_made_explicit():
    resolved = train.resolve_config(train.TrainConfig())
    assert resolved.input_noise == train.DIGITS_INPUT_NOISE
    assert resolved.symmetric is True
    assert resolved.schedule_epochs == resolved.epochs
    assert train.resolve_config(train.TrainConfig(task="xor")).symmetric is False
    assert train.resolve_config(train.TrainConfig(task="moons")).input_noise == 0.0
    assert train.resolve_config(train.TrainConfig(input_noise=0.1)).input_noise == 0.1


# --------------------------------------------------------------------------
# Gradients, determinism, resume
# --------------------------------------------------------------------------


def test_custom_and_autodiff_grads_agree_after_an_epoch(tmp_path):
    _, custom = run(tmp_path, "custom", task="moons", grad="custom", epochs=2)
    _, autodiff = run(tmp_path, "autodiff", task="moons", grad="autodiff", epochs=2)
    for c, a in zip(params_of(custom), params_of(autodiff), strict=True):
        np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-5)
    assert custom["train_loss"] == pytest.approx(autodiff["train_loss"], rel=1e-5)
    # The comparison can fail: another seed gives other params.
    _, other = run(tmp_path, "other", task="moons", grad="custom", epochs=2, seed=1)
    assert not np.allclose(params_of(custom)[0], params_of(other)[0], rtol=1e-4, atol=1e-5)


def test_runs_are_deterministic(tmp_path):
    _, first = run(tmp_path, "a", epochs=2)
    _, second = run(tmp_path, "b", epochs=2)
    assert_bitwise_equal(params_of(first), params_of(second))
    _, other = run(tmp_path, "c", epochs=2, seed=1)
    assert not bitwise_equal(params_of(first), params_of(other))


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path, capsys):
    # Interrupted: 3 of 4 planned epochs (TINY's cosine horizon is 4),
    # checkpoints at 2 and 3; losing the last checkpoint leaves epoch 3
    # logged but not saved (a crash between the two).
    interrupted = tmp_path / "interrupted"
    first_session = train.train_and_evaluate(
        tiny_config(epochs=3, ckpt_every=2), interrupted, quiet=True, write_plots=False
    )
    assert checkpoint.latest_checkpoint(interrupted).name == "ckpt_000003"
    for path in (interrupted / "checkpoints" / "ckpt_000003").iterdir():
        path.unlink()
    (interrupted / "checkpoints" / "ckpt_000003").rmdir()
    assert len(train.read_metrics(interrupted)) == 3

    resumed = train.main(["--resume", str(interrupted), "--epochs", "4", "--quiet", "--no-plots"])
    assert "best test accuracy" in capsys.readouterr().out
    _, uninterrupted = run(tmp_path, "uninterrupted", epochs=4)
    assert_bitwise_equal(params_of(resumed), params_of(uninterrupted))
    # Not vacuous: the resumed session trained past the first one's end.
    assert not bitwise_equal(params_of(resumed), params_of(first_session))

    rows = train.read_metrics(interrupted)
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    expected = train.read_metrics(tmp_path / "uninterrupted")
    for got, want in zip(rows, expected, strict=True):
        assert got["test_accuracy"] == want["test_accuracy"]
        assert got["train_loss"] == want["train_loss"]
    config = json.loads((interrupted / "config.json").read_text())
    assert config["settings"]["epochs"] == 4
    assert config["resumes"][0]["from_epoch"] == 2


def test_epoch_keys_are_independent_of_the_session():
    _, train_key = train.run_keys(0)
    assert np.array_equal(train.epoch_key(train_key, 3), jax.random.fold_in(train_key, 3))
    assert not np.array_equal(train.epoch_key(train_key, 3), train.epoch_key(train_key, 2))


# --------------------------------------------------------------------------
# Pure pieces: the epoch under vmap, evaluation, pair sampling
# --------------------------------------------------------------------------


def toy_data(n=96, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    t = np.where(x[:, 0] * x[:, 1] > 0, 1.0, -1.0).astype(np.float32)
    return data_lib.Dataset(*map(jnp.asarray, (x, x[:, ::-1].copy(), t)))


def stacked_start(model, optimizer, n_seeds):
    """Params and optimizer states of `n_seeds` seeds stacked, and a shuffle key each."""

    def start():
        keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(n_seeds))
        params = jax.vmap(lambda k: model.init(k, 3, 3))(keys)
        shuffle_keys = jax.random.split(jax.random.PRNGKey(7), n_seeds)
        return params, jax.vmap(optimizer.init)(params), shuffle_keys

    return start


def test_train_epoch_under_vmap_equals_separate_runs():
    model, data, optimizer = models.gated(6, 3), toy_data(), optax.sgd(0.1, momentum=0.9)
    epoch = train.make_train_epoch(model, optimizer, batch_size=16)
    params, opt_state, keys = jax.jit(stacked_start(model, optimizer, 3))()
    batched = jax.device_get(
        jax.jit(jax.vmap(epoch, in_axes=(0, 0, 0, None)))(params, opt_state, keys, data)
    )
    single = jax.jit(epoch)
    params, opt_state = jax.device_get((params, opt_state))
    for i in range(3):

        def pick(tree, i=i):
            return jax.tree_util.tree_map(lambda a: np.asarray(a)[i], tree)

        separate = single(pick(params), pick(opt_state), keys[i], data)
        for got, want in zip(
            jax.tree_util.tree_leaves(pick(batched)),
            jax.tree_util.tree_leaves(separate),
            strict=True,
        ):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The seeds trained apart (so the comparison above can fail) and moved.
    first_leaf = jax.tree_util.tree_leaves(batched[0])[0]
    assert not np.allclose(first_leaf[0], first_leaf[1])
    assert not np.allclose(first_leaf[0], jax.tree_util.tree_leaves(params)[0][0])
    assert batched[2]["loss"].shape == (3,)
    assert np.all((0 <= batched[2]["accuracy"]) & (batched[2]["accuracy"] <= 1))


@pytest.mark.parametrize(
    "model",
    [models.gated(6, 3, "autodiff"), models.mlp(5), models.logreg()],
    ids=lambda m: m.name,
)
def test_train_epoch_vmaps_over_every_model(model):
    optimizer = optax.adam(1e-2)
    epoch = train.make_train_epoch(model, optimizer, batch_size=16)
    params, opt_state, keys = jax.eval_shape(stacked_start(model, optimizer, 3))
    batched = jax.vmap(epoch, in_axes=(0, 0, 0, None))
    shapes = jax.eval_shape(batched, params, opt_state, keys, toy_data())
    assert jax.tree_util.tree_structure(shapes[0]) == jax.tree_util.tree_structure(params)
    assert shapes[2]["loss"].shape == (3,)


def test_train_step_differentiates_through_the_custom_rule():
    """train_step's gradient is jax.grad(model.loss): with a loss whose custom
    backward is the seed's wrong sigma-form (gj.errata), the update follows
    that rule, not autodiff."""
    wrong = gj.make_loss(gj.errata.propagate_seed_sigma_form)
    model = models.gated(6, 3)._replace(loss=wrong)
    data = toy_data(n=8)
    optimizer = optax.sgd(1.0)

    @jax.jit
    def updates(params):
        state, _ = train.make_train_step(model, optimizer)(
            train.TrainState(params, optimizer.init(params)), data
        )
        args = (params, data.x_left, data.x_right, data.t)
        return state.params, jax.grad(wrong)(*args), jax.grad(gj.autodiff_loss)(*args)

    params = models.gated(6, 3).init(jax.random.PRNGKey(0), 3, 3)
    stepped, wrong_grads, true_grads = updates(params)
    for p, s, g in zip(params, stepped, wrong_grads, strict=True):
        np.testing.assert_allclose(s, p - g, rtol=1e-6, atol=1e-7)
    moved = [np.asarray(p - s) for p, s in zip(params, stepped, strict=True)]
    assert not all(
        np.allclose(m, g, rtol=1e-3, atol=1e-6) for m, g in zip(moved, true_grads, strict=True)
    )


def test_evaluate_matches_a_direct_computation():
    model, data = models.gated(6, 3), toy_data()
    evaluate = train.make_evaluate(model)

    @jax.jit
    def scores(params):
        a3 = gj.forward(params, data.x_left, data.x_right).a3
        direct = jnp.mean(jax.nn.softplus(-data.t * a3)), jnp.mean(jnp.sign(a3) == data.t)
        stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, 2 * a]), params)
        return evaluate(params, data), direct, jax.vmap(evaluate, in_axes=(0, None))(stacked, data)

    metrics, (loss, accuracy), both = scores(model.init(jax.random.PRNGKey(0), 3, 3))
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-6)
    assert float(metrics["accuracy"]) == pytest.approx(float(accuracy))
    # Over stacked params (an ensemble): one row per member, the first as above.
    assert both["loss"].shape == (2,)
    assert float(both["loss"][0]) == pytest.approx(float(loss), rel=1e-6)
    assert float(both["loss"][1]) != pytest.approx(float(loss), rel=1e-3)


def test_pairs_drawn_on_device_are_balanced_and_from_train_images():
    split = data_lib.load_task("digits-pairs", seed=0, n_train_pairs=200, n_test_pairs=100)
    pool = train.pair_pool(split)
    pairs = jax.jit(train.sample_pair_data, static_argnums=2)(jax.random.PRNGKey(0), pool, 2000)
    assert pairs.x_left.shape == (2000, 64) and float(jnp.mean(pairs.t)) == 0.0
    train_rows = {row.tobytes() for row in np.asarray(pool.images)}
    test_rows = {row.tobytes() for row in split.test.x_left} | {
        row.tobytes() for row in split.test.x_right
    }
    # The pool is exactly the images behind data.py's training pairs...
    assert {row.tobytes() for row in split.train.x_left} <= train_rows
    assert not train_rows & test_rows
    # ... and t says whether the two images show the same digit.
    digit_of = dict(zip(map(bytes, np.asarray(pool.images)), _pool_digits(split), strict=True))
    left = [digit_of[row.tobytes()] for row in np.asarray(pairs.x_left)]
    right = [digit_of[row.tobytes()] for row in np.asarray(pairs.x_right)]
    same = np.asarray(left) == np.asarray(right)
    np.testing.assert_array_equal(same, np.asarray(pairs.t) > 0)


def _pool_digits(split):
    from sklearn.datasets import load_digits

    train_rows, _ = data_lib.digits_pair_images(split)
    return load_digits().target[train_rows]


def test_epoch_data_adds_noise_only_when_asked():
    data = toy_data()
    same = train.epoch_data(jax.random.PRNGKey(0), data, None, n_pairs=2, input_noise=0.0)
    assert same is data
    noisy = train.epoch_data(jax.random.PRNGKey(0), data, None, n_pairs=2, input_noise=0.5)
    diff = np.asarray(noisy.x_left - data.x_left)
    assert 0.4 < diff.std() < 0.6
    np.testing.assert_array_equal(noisy.t, data.t)


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


@pytest.mark.parametrize("n_params", [500, 5000, 37000])
def test_mlp_matching_is_close_to_the_requested_count(n_params):
    def count_of(model):
        shapes = jax.eval_shape(lambda key: model.init(key, 64, 64), jax.random.PRNGKey(0))
        return models.param_count(shapes)

    model = models.mlp_matching(n_params, 64, 64)
    count = count_of(model)
    hidden = int(model.name.split("-h")[1])
    neighbours = [count_of(models.mlp(h)) for h in (max(1, hidden - 1), hidden + 1)]
    assert all(abs(count - n_params) <= abs(other - n_params) for other in neighbours)


def test_param_count_of_the_gated_model():
    params = jax.eval_shape(lambda k: models.gated(5, 3).init(k, 4, 2), jax.random.PRNGKey(0))
    H, Q = 5, 3
    assert models.param_count(params) == H * 4 + H + H * 2 + H + 3 * (Q * H + Q) + Q + 1


@pytest.mark.parametrize(
    "model", [models.gated(6, 3), models.mlp(5), models.logreg()], ids=lambda m: m.name
)
def test_model_loss_is_the_mean_logistic_error_of_its_logits(model):
    data = toy_data(n=10)

    @jax.jit
    def outputs(key):
        params = model.init(key, 3, 3)
        logits = model.logits(params, data.x_left, data.x_right)
        loss = model.loss(params, data.x_left, data.x_right, data.t)
        return logits, loss, model.logits(params, data.x_left[0], data.x_right[0])

    logits, loss, one = outputs(jax.random.PRNGKey(0))
    assert logits.shape == (10,)
    expected = np.mean(np.log1p(np.exp(-np.asarray(data.t) * np.asarray(logits))))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    # One example (no batch axis) works too.
    assert one.shape == () and float(one) == pytest.approx(float(logits[0]), rel=1e-5)


def test_model_constructors_reject_bad_sizes():
    with pytest.raises(ValueError):
        models.gated(0, 3)
    with pytest.raises(ValueError):
        models.gated(4, 3, grad="numeric")
    with pytest.raises(ValueError):
        models.mlp(-1)


# --------------------------------------------------------------------------
# Command-line errors: one line on stderr, exit code 2, no traceback
# --------------------------------------------------------------------------


def _bad_npz(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_left=np.zeros((4, 2)), t=np.ones(4))  # no x_right
    return str(path)


def _empty_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


def _run_dir_without_checkpoint(tmp_path):
    """A config.json as a run writes it first, and no checkpoint yet."""
    workdir = tmp_path / "started"
    workdir.mkdir()
    settings = train.resolve_config(tiny_config(task="xor"))._asdict()
    (workdir / "config.json").write_text(json.dumps({"settings": settings}))
    return str(workdir)


CLI_ERRORS = {
    "unknown-task": (lambda tmp: ["--task", "mnist"], "invalid choice"),
    "negative-epochs": (lambda tmp: ["--task", "xor", "--epochs", "-3"], "--epochs"),
    "zero-batch": (lambda tmp: ["--task", "xor", "--batch-size", "0"], "--batch-size"),
    "batch-too-large": (
        lambda tmp: ["--task", "xor", "--batch-size", "100000"],
        "larger than the training set",
    ),
    "missing-file": (lambda tmp: ["--data", str(tmp / "nope.npz")], "not found"),
    "bad-npz": (lambda tmp: ["--data", _bad_npz(tmp)], "x_right"),
    "resume-not-a-run": (lambda tmp: ["--resume", _empty_dir(tmp)], "config.json"),
    "resume-without-checkpoint": (
        lambda tmp: ["--resume", _run_dir_without_checkpoint(tmp)],
        "no checkpoint",
    ),
}


# A subprocess costs a fresh interpreter importing jax and scikit-learn, so one
# case runs as `python -m experiments.train` (alongside the other tests); the
# rest call main() in-process, where a traceback would be an exception other
# than SystemExit and fail the test. Both go through the same parser.error.
SUBPROCESS_CASES = ("bad-npz",)


def cli_args(case, tmp):
    make_args, _ = CLI_ERRORS[case]
    args = make_args(tmp)
    return args if "--resume" in args else [*args, "--out", str(tmp / "r"), "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def cli_processes(tmp_path_factory):
    """Starts SUBPROCESS_CASES as `python -m experiments.train` with the module's
    first test, so that they run alongside the in-process tests."""
    procs = {}
    for case in SUBPROCESS_CASES:
        argv = [
            sys.executable,
            "-m",
            "experiments.train",
            *cli_args(case, tmp_path_factory.mktemp(case)),
        ]
        procs[case] = subprocess.Popen(
            argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return procs


@pytest.fixture(scope="module")
def cli_results(cli_processes):
    results = {}
    for case, proc in cli_processes.items():
        _, stderr = proc.communicate(timeout=120)
        results[case] = (proc.returncode, stderr)
    return results


def assert_one_line_error(code, stderr, needle):
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "error:" in lines[0] and needle in lines[0]


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_cli_error_in_a_subprocess(cli_results, case):
    code, stderr = cli_results[case]
    assert_one_line_error(code, stderr, CLI_ERRORS[case][1])


@pytest.mark.parametrize("case", sorted(set(CLI_ERRORS) - set(SUBPROCESS_CASES)))
def test_cli_error_in_process(tmp_path, capsys, case):
    with pytest.raises(SystemExit) as exit_info:
        train.main(cli_args(case, tmp_path))
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, CLI_ERRORS[case][1])
    assert not (tmp_path / "r").exists()  # nothing written before the error


def test_cli_error_check_rejects_a_traceback():
    with pytest.raises(AssertionError):
        assert_one_line_error(2, "Traceback (most recent call last):\nValueError: x\n", "x")
    with pytest.raises(AssertionError):
        assert_one_line_error(1, "error: x\n", "x")


def test_resume_rejects_new_settings(tmp_path, capsys):
    workdir, _ = run(tmp_path, task="xor")
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--resume", str(workdir), "--lr", "0.5"])
    assert exit_info.value.code == 2
    assert "--lr" in capsys.readouterr().err
