"""Faults and how training meets them (issue 6, experiments/faults.py).

Bad input: one line on stderr, exit 2, nothing written. Non-finite steps:
exit 3 with the last good checkpoint, or skipped and counted. Signals: a
checkpoint at the epoch boundary and exit 130/143. SIGKILL at random moments
of real training processes: every run resumes to the metrics and params of
an uninterrupted one. Damaged checkpoints and metrics: a clear error.

Every run has the shapes of test_train's xor runs (1500 training rows of
width 2, H=8, Q=4, batch 32, cosine horizon 4), so one compiled epoch serves
them all; the subprocesses start with the module and run alongside it.
"""

import functools
import hashlib
import json
import os
import pathlib
import pickle
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gated_jax as gj
from experiments import checkpoint
from experiments import data as data_lib
from experiments import faults
from experiments import models
from experiments import train

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = ["--hidden", "8", "--gates", "4", "--batch-size", "32", "--lr", "0.01",
        "--schedule-epochs", "4", "--quiet", "--no-plots"]  # fmt: skip
KILL_EPOCHS = 40  # epochs of each killed run: ~10 ms each with a checkpoint


def tiny_args(*args):
    return [*args, *TINY]


def xor_like_npz(path, n=2000, width=2, seed=0):
    """A file with xor's shapes (n rows, width features a side), labels +-1."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, width)).astype(np.float32)
    np.savez(path, x_left=x, x_right=x[:, ::-1].copy(), t=np.where(x[:, 0] * x[:, 1] > 0, 1, -1))
    return str(path)


def snapshot(directory):
    """{relative path: sha256} of every file under `directory`."""
    root = pathlib.Path(directory)
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def run_cli(argv, capsys):
    """train.main(argv) in-process: (exit code, stderr); 0 if it returned."""
    return run_cli_summary(argv, capsys)[:2]


def run_cli_summary(argv, capsys):
    """(exit code, stderr, summary or None) of train.main(argv) in-process."""
    summary = None
    try:
        summary = train.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err, summary


def assert_one_line(code, stderr, want_code, *needles):
    assert code == want_code, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_one_line_check_can_fail():
    with pytest.raises(AssertionError):
        assert_one_line(2, "error: a\nerror: b\n", 2, "a")
    with pytest.raises(AssertionError):
        assert_one_line(3, "error: a\n", 2, "a")
    with pytest.raises(AssertionError):
        assert_one_line(2, "error: a\n", 2, "b")


# --------------------------------------------------------------------------
# Kills: real training processes, started with the module (see the last test)
# --------------------------------------------------------------------------

# name: (signal, what to wait for before sending it). The first run compiles
# into a persistent compilation cache; the others start once it has trained an
# epoch and load their programs from it (a third of the CPU time).
KILLS = {
    "kill-a": (signal.SIGKILL, "rows"),
    "kill-while-starting": (signal.SIGKILL, "config"),
    "kill-b": (signal.SIGKILL, "rows"),
    "sigint": (signal.SIGINT, "rows"),
}


def _kill_plan(seed):
    rng = random.Random(seed)
    return {
        name: (signum, when, rng.randint(1, KILL_EPOCHS // 2), rng.uniform(0.0, 0.05))
        for name, (signum, when) in KILLS.items()
    }


def _rows(path):
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _start(root, name):
    argv = [sys.executable, "-m", "experiments.train", "--task", "xor",
            "--epochs", str(KILL_EPOCHS), "--out", str(root / name), *TINY]  # fmt: skip
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(root / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # fmt: skip
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _drive(root, plan, results):
    """Starts every planned run, sends its signal at its moment, records what happened."""
    leader, *followers = plan
    procs = {leader: _start(root, leader)}
    pending = dict(plan)
    deadline = time.monotonic() + 600
    while pending and time.monotonic() < deadline:
        if len(procs) == 1 and (
            _rows(root / leader / "metrics.jsonl") or procs[leader].poll() is not None
        ):
            procs.update((name, _start(root, name)) for name in followers)
        for name, (signum, when, rows, jitter) in list(pending.items()):
            if name not in procs:
                continue
            workdir, proc = root / name, procs[name]
            if proc.poll() is not None:
                results[name] = {"sent": None}
                del pending[name]
                continue
            if when == "config":
                ready = (workdir / "config.json").exists()
            else:
                ready = _rows(workdir / "metrics.jsonl") >= rows
            if ready:
                time.sleep(jitter)
                proc.send_signal(signum)
                results[name] = {"sent": signum, "at_rows": _rows(workdir / "metrics.jsonl")}
                del pending[name]
        time.sleep(0.002)
    for name, proc in procs.items():
        try:
            _, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        results.setdefault(name, {"sent": None})
        results[name].update(code=proc.returncode, stderr=stderr)


@pytest.fixture(scope="module", autouse=True)
def killed_runs(request, tmp_path_factory):
    """Starts the runs of KILLS in a thread with the module's first test (if the
    test that resumes them is selected)."""
    if not any(item.name == KILL_TEST for item in request.session.items):
        return None
    seed = random.randrange(2**32)
    root = tmp_path_factory.mktemp("killed")
    results = {}
    thread = threading.Thread(target=_drive, args=(root, _kill_plan(seed), results), daemon=True)
    thread.start()
    return {"root": root, "seed": seed, "thread": thread, "results": results}


# --------------------------------------------------------------------------
# Bad input to the CLI: one line, exit 2, nothing written
# --------------------------------------------------------------------------


def _arrays(n=12, **changes):
    rng = np.random.default_rng(1)
    arrays = {"x_left": rng.normal(size=(n, 3)), "x_right": rng.normal(size=(n, 2)),
              "t": np.where(np.arange(n) % 2 == 0, 1.0, -1.0)}  # fmt: skip
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def _nan_rows(shape, rows, value=np.nan):
    x = np.ones(shape)
    x[rows, -1] = value
    return x


def _write_npz(tmp, arrays):
    np.savez(tmp / "in.npz", **arrays)
    return str(tmp / "in.npz")


def _write_bytes(name, content):
    def write(tmp):
        (tmp / name).write_bytes(content)
        return str(tmp / name)

    return write


def _write_npy(tmp):
    np.save(tmp / "in.npy", np.ones((4, 2)))
    os.replace(tmp / "in.npy", tmp / "in.npz")
    return str(tmp / "in.npz")


BAD_DATA = {  # name: (file maker, extra flags, needles of the one-line message)
    "missing-array": (_arrays(x_right=None), [], ["missing array 'x_right'"]),
    "rank": (_arrays(x_left=np.ones(12)), [], ["'x_left' must be 2-D (N, D)", "(12,)"]),
    "lengths": (_arrays(t=np.ones(11)), [], ["mismatched lengths", "'t': 11"]),
    "labels-01-as-pm1": (_arrays(t=np.arange(12) % 2), [],
                         ["6 labels outside {-1, 1}", "--labels 01"]),
    "labels-2-under-01": (_arrays(t=np.array([0, 1] * 5 + [2, 1])), ["--labels", "01"],
                          ["1 labels outside {0, 1}", "index 10"]),
    "nan": (_arrays(x_right=_nan_rows((12, 2), [4, 9])), [],
            ["'x_right' has 2 NaN/inf values", "rows [4, 9]"]),
    "inf-labels": (_arrays(t=np.where(np.arange(12) == 7, np.inf, 1.0)), [],
                   ["'t' has 1 NaN/inf", "[7]"]),
    "empty": (_arrays(n=0), [], ["empty"]),
    "text-file": (_write_bytes("in.npz", b"x_left,x_right,t\n1,2,1\n"), [],
                  ["not a readable .npz archive", "zip file", "b'x_left,"]),
    "npy-file": (_write_npy, [], ["not an .npz archive", "single .npy"]),
    "broken-zip": (_write_bytes("in.npz", b"PK\x03\x04" + b"\0" * 40), [], ["not a readable .npz"]),
    "object-array": (_arrays(x_left=np.array([{"a": 1}] * 12, dtype=object)), [],
                     ["'x_left' holds Python objects", "never unpickled"]),
    "batch-too-large": (_arrays(n=40), ["--batch-size", "64"],
                        ["--batch-size 64 is larger than the training set (30 examples)"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    make, flags, needles = BAD_DATA[case]
    path = make(tmp_path) if callable(make) else _write_npz(tmp_path, make)
    out = tmp_path / "run"
    code, err = run_cli(["--data", path, "--out", str(out), *TINY, *flags], capsys)
    assert_one_line(code, err, 2, *needles)
    assert not out.exists()


def test_object_arrays_are_never_unpickled(tmp_path, monkeypatch):
    path = _write_npz(tmp_path, _arrays(t=np.array([1, -1] * 6, dtype=object)))

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was called")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    with pytest.raises(ValueError, match="'t' holds Python objects"):
        data_lib.load_npz(path)
    source = (REPO / "experiments" / "data.py").read_text()
    assert "allow_pickle=True" not in source and "pickle.load" not in source


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--on-nonfinite", "ignore"], ["--on-nonfinite", "invalid choice"]),
        (["--out", "FILE"], ["exists and is not a directory"]),
    ],
    ids=["bad-policy", "out-is-a-file"],
)
def test_bad_flags_are_one_line_exit_2(tmp_path, capsys, flags, needles):
    (tmp_path / "FILE").write_text("not a directory\n")
    flags = [str(tmp_path / f) if f == "FILE" else f for f in flags]
    code, err = run_cli(["--task", "xor", *flags, *TINY], capsys)
    assert_one_line(code, err, 2, *needles)
    assert (tmp_path / "FILE").read_text() == "not a directory\n"


# --------------------------------------------------------------------------
# --resume of an existing run: each refusal leaves the run as it was
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-epoch run on a .npz file with xor's shapes; tests copy it before changing it."""
    root = tmp_path_factory.mktemp("finished")
    data = xor_like_npz(root / "data.npz")
    train.main(tiny_args("--data", data, "--epochs", "2", "--out", str(root / "run")))
    return root / "run"


@pytest.fixture
def run_copy(finished_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    return workdir


def _point_at(workdir, data_path):
    config = json.loads((workdir / "config.json").read_text())
    config["settings"]["data"] = str(data_path)
    (workdir / "config.json").write_text(json.dumps(config))


def _truncate_latest(workdir):
    state = checkpoint.latest_checkpoint(workdir) / "state.safetensors"
    state.write_bytes(state.read_bytes()[:-7])


def _flip_latest(workdir):
    state = checkpoint.latest_checkpoint(workdir) / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x10
    state.write_bytes(bytes(data))


RESUME_FAULTS = {
    "wider-data": (
        lambda w: _point_at(w, xor_like_npz(w.parent / "wide.npz", width=3)),
        ["the data does not fit the run", "d_left 3 (was 2)", "d_right 3 (was 2)"],
    ),
    "fewer-rows": (
        lambda w: _point_at(w, xor_like_npz(w.parent / "short.npz", n=1000)),
        ["the data does not fit the run", "n_train 750 (was 1500)"],
    ),
    "truncated-checkpoint": (
        _truncate_latest,
        ["ckpt_000002/state.safetensors: size mismatch", "resume from ckpt_000001"],
    ),
    "corrupted-checkpoint": (
        _flip_latest,
        ["ckpt_000002/state.safetensors: sha256 mismatch", "resume from ckpt_000001"],
    ),
    "torn-config": (
        lambda w: (w / "config.json").write_text('{"settings": {"task": '),
        ["config.json: not a valid run config"],
    ),
    "bad-metrics-line": (
        lambda w: (w / "metrics.jsonl").write_text('{"epoch": 1}\ngarbage\n{"epoch": 2}\n'),
        ["metrics.jsonl:2: not a metrics row"],
    ),
    "epochs-backwards": (lambda w: None, ["has 2 epochs already"]),
}


@pytest.mark.parametrize("case", list(RESUME_FAULTS))
def test_resume_refusals_leave_the_run_untouched(run_copy, capsys, case):
    damage, needles = RESUME_FAULTS[case]
    damage(run_copy)
    before = snapshot(run_copy)
    epochs = ["--epochs", "1"] if case == "epochs-backwards" else ["--epochs", "3"]
    code, err = run_cli(["--resume", str(run_copy), *epochs, "--quiet", "--no-plots"], capsys)
    assert_one_line(code, err, 2, *needles)
    assert snapshot(run_copy) == before


def test_a_new_run_never_writes_over_an_existing_one(run_copy, capsys):
    before = snapshot(run_copy)
    code, err = run_cli(["--task", "xor", "--out", str(run_copy), *TINY], capsys)
    assert_one_line(code, err, 2, "already holds a run", f"--resume {run_copy}")
    assert snapshot(run_copy) == before


# --------------------------------------------------------------------------
# Non-finite steps: on device in the compiled epoch
# --------------------------------------------------------------------------


def test_all_finite_and_epoch_metrics():
    assert bool(faults.all_finite({"a": jnp.ones(3), "n": jnp.arange(3), "s": 1.0}))
    assert not bool(faults.all_finite({"a": jnp.ones(3).at[1].set(jnp.inf), "n": jnp.arange(3)}))
    assert not bool(faults.all_finite([jnp.float32(jnp.nan)]))
    steps = {"loss": jnp.array([1.0, jnp.nan, 3.0, jnp.inf]),
             "accuracy": jnp.array([0.5, 0.0, 1.0, 0.0]),
             "finite": jnp.array([True, False, True, False])}  # fmt: skip
    m = jax.jit(faults.epoch_metrics)(steps)
    assert float(m["loss"]) == 2.0 and float(m["accuracy"]) == 0.75
    assert int(m["skipped_steps"]) == 2 and int(m["first_nonfinite_step"]) == 2
    clean = faults.epoch_metrics({**steps, "finite": jnp.ones(4, bool), "loss": jnp.ones(4)})
    assert int(clean["skipped_steps"]) == 0 and int(clean["first_nonfinite_step"]) == 0
    none = faults.epoch_metrics({**steps, "finite": jnp.zeros(4, bool)})
    assert np.isnan(float(none["loss"]))


def _toy(n=64, nan_rows=()):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    x[list(nan_rows), 0] = np.nan
    t = np.where(rng.normal(size=n) > 0, 1.0, -1.0).astype(np.float32)
    return data_lib.Dataset(*map(jnp.asarray, (x, np.nan_to_num(x[:, ::-1]).copy(), t)))


def _batches(key, n, batch_size):
    """The minibatch rows of make_train_epoch's shuffle."""
    n_steps = n // batch_size
    return np.asarray(jax.random.permutation(key, n)[: n_steps * batch_size]).reshape(n_steps, -1)


TOY_MODEL, TOY_OPTIMIZER = models.gated(6, 3), optax.adam(1e-2)


@functools.cache
def _toy_epoch():
    """One compiled epoch of the toy model, shared by the tests below."""
    return jax.jit(train.make_train_epoch(TOY_MODEL, TOY_OPTIMIZER, batch_size=8))


def test_a_skipped_step_leaves_the_state_exactly_as_it_was():
    model, optimizer, epoch = TOY_MODEL, TOY_OPTIMIZER, _toy_epoch()
    data, key = _toy(nan_rows=(5, 40)), jax.random.PRNGKey(4)
    params = model.init(jax.random.PRNGKey(0), 3, 3)
    got_params, _, metrics = epoch(params, optimizer.init(params), key, data)

    batches = _batches(key, 64, 8)
    bad = [i for i, rows in enumerate(batches) if {5, 40} & set(rows.tolist())]
    assert int(metrics["skipped_steps"]) == len(bad) > 0
    assert int(metrics["first_nonfinite_step"]) == bad[0] + 1
    assert np.isfinite(float(metrics["loss"]))
    # The same updates by hand, leaving out the bad batches.
    step = jax.jit(train.make_train_step(model, optimizer))
    state = train.TrainState(params, optimizer.init(params))
    for i, rows in enumerate(batches):
        if i not in bad:
            state, _ = step(state, jax.tree_util.tree_map(lambda a, rows=rows: a[rows], data))
    for got, want in zip(got_params, state.params, strict=True):
        np.testing.assert_array_equal(got, want)
    # Not vacuous: the bad batch is non-finite, and its step returns the state it was given.
    kept, step_metrics = step(state, jax.tree_util.tree_map(lambda a: a[batches[bad[0]]], data))
    assert not bool(step_metrics["finite"]) and np.isnan(float(step_metrics["loss"]))
    assert all(np.array_equal(a, b) for a, b in zip(kept.params, state.params, strict=True))


def test_a_non_finite_gradient_with_a_finite_loss_is_caught():
    # d/db3 of sqrt(|b3|) at b3 = 0 is inf, times 0 is NaN; the loss stays finite.

    def loss(params, x_left, x_right, t):
        return gj.loss(params, x_left, x_right, t) + 0.0 * jnp.sqrt(jnp.abs(params.b3))

    model, optimizer = TOY_MODEL._replace(loss=loss), TOY_OPTIMIZER
    params = model.init(jax.random.PRNGKey(0), 3, 3)
    epoch = jax.jit(train.make_train_epoch(model, optimizer, batch_size=8))
    got, _, metrics = epoch(params, optimizer.init(params), jax.random.PRNGKey(1), _toy())
    assert int(metrics["skipped_steps"]) == 8 and int(metrics["first_nonfinite_step"]) == 1
    assert np.isnan(float(metrics["loss"]))  # no finite step to average over
    assert all(np.array_equal(a, b) for a, b in zip(got, params, strict=True))
    # The same model without the sqrt trains: the check is what stopped it.
    moved, _, clean = _toy_epoch()(params, optimizer.init(params), jax.random.PRNGKey(1), _toy())
    assert int(clean["skipped_steps"]) == 0
    assert not np.array_equal(moved.W1_L, params.W1_L)


# --------------------------------------------------------------------------
# Non-finite steps: the CLI stops (exit 3) or skips and counts
# --------------------------------------------------------------------------

NAN_ROWS = (11, 700, 1201)


def _poison(monkeypatch):
    """From now on the run's training rows NAN_ROWS hold a NaN (the file is not re-read)."""
    load_split = train.load_split

    def poisoned(config):
        split = load_split(config)
        x = split.train.x_left.copy()
        x[list(NAN_ROWS), 0] = np.nan
        return split._replace(train=split.train._replace(x_left=x))

    monkeypatch.setattr(train, "load_split", poisoned)


def _bad_steps(config, epoch_index, n_train=1500, batch_size=32):
    """1-based steps of the epoch whose minibatch holds a NAN_ROWS row."""
    _, train_key = train.run_keys(config.seed)
    _, shuffle_key = jax.random.split(train.epoch_key(train_key, epoch_index))
    batches = _batches(shuffle_key, n_train, batch_size)
    return [i + 1 for i, rows in enumerate(batches) if set(NAN_ROWS) & set(rows.tolist())]


def test_nonfinite_stops_with_exit_3_then_resumes_skipping(run_copy, capsys, monkeypatch):
    before = snapshot(run_copy / "checkpoints")
    _poison(monkeypatch)
    resume = ["--resume", str(run_copy), "--epochs", "4", "--quiet", "--no-plots"]
    code, err = run_cli(resume, capsys)
    bad = _bad_steps(train.read_config(run_copy), epoch_index=2)
    assert_one_line(
        code, err, 3,
        f"non-finite loss or gradient at epoch 3, step {bad[0]} of 46 ({len(bad)} such steps",
        "last good checkpoint kept: ", "ckpt_000002", "--on-nonfinite skip",
    )  # fmt: skip
    assert snapshot(run_copy / "checkpoints") == before
    assert [row["epoch"] for row in train.read_metrics(run_copy)] == [1, 2]

    code, err = run_cli([*resume, "--on-nonfinite", "skip"], capsys)
    assert code == 0, err
    rows = train.read_metrics(run_copy)
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    assert rows[2]["skipped_steps"] == len(bad)
    assert rows[3]["skipped_steps"] == len(_bad_steps(train.read_config(run_copy), 3))
    assert all(np.isfinite(row["train_loss"]) for row in rows)
    assert train.read_config(run_copy).on_nonfinite == "skip"


def test_nonfinite_in_the_first_epoch_keeps_the_starting_checkpoint(tmp_path, capsys, monkeypatch):
    _poison(monkeypatch)
    out = tmp_path / "run"
    code, err = run_cli(["--task", "xor", "--epochs", "2", "--out", str(out), *TINY], capsys)
    assert_one_line(code, err, 3, "at epoch 1, step", "ckpt_000000")
    assert [path.name for _, path in checkpoint.list_checkpoints(out)] == ["ckpt_000000"]
    assert train.read_metrics(out) == []


def test_skip_stops_when_no_step_of_an_epoch_is_finite(tmp_path, capsys, monkeypatch):
    load_split = train.load_split

    def all_nan(config):
        split = load_split(config)
        return split._replace(train=split.train._replace(x_left=split.train.x_left * np.nan))

    monkeypatch.setattr(train, "load_split", all_nan)
    out = tmp_path / "run"
    argv = ["--task", "xor", "--epochs", "2", "--on-nonfinite", "skip", "--out", str(out), *TINY]
    code, err = run_cli(argv, capsys)
    assert_one_line(code, err, 3, "all 46 steps of epoch 1 had a non-finite loss or gradient")


# --------------------------------------------------------------------------
# Signals, in-process: a boundary checkpoint, or at once on the second one
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signum, count, code, needle, rows",
    [
        (signal.SIGINT, 1, 130, "stopped by SIGINT after epoch 2 of 3", [1, 2]),
        (signal.SIGTERM, 1, 143, "stopped by SIGTERM after epoch 2 of 3", [1, 2]),
        (signal.SIGINT, 2, 130, "stopped at once", [1]),
    ],
    ids=["sigint", "sigterm", "sigint-twice"],
)
def test_signals_stop_resumably(tmp_path, capsys, monkeypatch, signum, count, code, needle, rows):
    check_finite = train._check_finite

    def signal_in_epoch_2(workdir, config, train_key, index, *rest):
        if index == 1:
            for _ in range(count):
                signal.raise_signal(signum)
        return check_finite(workdir, config, train_key, index, *rest)

    monkeypatch.setattr(train, "_check_finite", signal_in_epoch_2)
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    out = tmp_path / "run"
    got, err = run_cli(["--task", "xor", "--epochs", "3", "--out", str(out), *TINY], capsys)
    assert got == code and "Traceback" not in err
    assert needle in err.strip().splitlines()[-1]
    assert [row["epoch"] for row in train.read_metrics(out)] == rows
    assert checkpoint.list_checkpoints(out)[-1][0] == rows[-1]
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers

    monkeypatch.undo()
    got, err = run_cli(["--resume", str(out), "--quiet", "--no-plots"], capsys)
    assert got == 0, err
    assert [row["epoch"] for row in train.read_metrics(out)] == [1, 2, 3]


# --------------------------------------------------------------------------
# metrics.jsonl torn by a kill
# --------------------------------------------------------------------------


def test_a_torn_last_metrics_line_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "train_lo')
    assert [row["epoch"] for row in faults.read_metrics_lines(path)] == [1, 2]
    path.write_text('{"epoch": 1}\n{"epoch": 2, "train_lo\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a metrics row"):
        faults.read_metrics_lines(path)


# --------------------------------------------------------------------------
# The killed processes: resumed, each ends as an uninterrupted run
# --------------------------------------------------------------------------


KILL_TEST = "test_killed_runs_resume_to_the_uninterrupted_result"


def test_killed_runs_resume_to_the_uninterrupted_result(killed_runs, tmp_path, capsys):
    reference = train.main(
        tiny_args("--task", "xor", "--epochs", str(KILL_EPOCHS), "--out", str(tmp_path / "ref"))
    )
    want_rows = train.read_metrics(tmp_path / "ref")
    killed_runs["thread"].join(timeout=600)
    seed, results = killed_runs["seed"], killed_runs["results"]
    assert set(results) == set(KILLS), f"seed {seed}: {results}"
    for name, result in results.items():
        workdir = killed_runs["root"] / name
        context = f"{name} (seed {seed}, {result})"
        if result["sent"] == signal.SIGKILL:
            assert result["code"] == -signal.SIGKILL, context
        elif result["sent"] == signal.SIGINT:
            assert result["code"] == 130, context
            assert "interrupted: stopped by SIGINT after epoch" in result["stderr"], context
            done = int(result["stderr"].split("after epoch ")[1].split()[0])
            assert [row["epoch"] for row in train.read_metrics(workdir)] == list(
                range(1, done + 1)
            ), context
            assert checkpoint.list_checkpoints(workdir)[-1][0] == done, context
        else:
            assert result["code"] == 0, context  # it finished before its moment came

        if (workdir / "config.json").exists():
            argv = ["--resume", str(workdir), "--quiet", "--no-plots"]
        else:  # killed before the run existed: starting again is allowed
            argv = tiny_args("--task", "xor", "--epochs", str(KILL_EPOCHS), "--out", str(workdir))
        code, err, summary = run_cli_summary(argv, capsys)
        assert code == 0, f"{context}: {err}"
        rows = train.read_metrics(workdir)
        assert [row["epoch"] for row in rows] == list(range(1, KILL_EPOCHS + 1)), context
        for got, want in zip(rows, want_rows, strict=True):
            for key in ("train_loss", "test_loss", "test_accuracy", "skipped_steps"):
                assert got[key] == want[key], f"{context}: epoch {got['epoch']} {key}"
        for got, want in zip(summary["params"], reference["params"], strict=True):
            np.testing.assert_array_equal(got, want, err_msg=context)
