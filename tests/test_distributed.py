"""Tests for experiments/distributed.py: data-parallel training over a device mesh.

A process's device count is fixed when jax starts, so every mesh runs in a
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N. To keep
CI short, two jobs start with the module's first test and run alongside the
quick in-process tests:

* one worker (this file run as a script, 4 host devices) does every
  single-process run: 1 device vs 4 devices on two tiny tasks, the
  checkpoint round trips mesh -> one device and one device -> mesh, the
  command-line errors, and the compiled programs; it writes run directories
  and a JSON of facts;
* two processes of `python -m experiments.train --coordinator ...` (2 host
  devices each, a mesh of 4 across them) train the same tiny run through
  `jax.distributed` on localhost with gloo's CPU collectives.

The tests then compare run directories: metrics.jsonl rows and the params of
the checkpoints (relative difference <= 1e-5 in float32).
"""

import argparse
import contextlib
import io
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
RTOL = 1e-5  # float32: the device count changes only the order of the gradient sums
TIMEOUT_S = 300
EPOCHS = 2
METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
# Tiny runs. breast-cancer has 427 train and 142 test rows: neither divides by
# 4, so its mesh runs hold padding rows; digits-pairs draws fresh pairs on
# device and trains on both orders (symmetric), with input noise.
TINY = ["--hidden", "8", "--gates", "4", "--batch-size", "32", "--lr", "1e-2"]
TINY += ["--schedule-epochs", "4", "--quiet", "--no-plots"]
CASES = {
    "breast-cancer": ["--task", "breast-cancer", "--input-noise", "0.3"],
    "digits-pairs": ["--task", "digits-pairs", "--n-train-pairs", "256", "--n-test-pairs", "100"],
}


def env_with_devices(n):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


# --------------------------------------------------------------------------
# The worker: `python tests/test_distributed.py OUT_DIR`, with 4 host devices
# --------------------------------------------------------------------------


def cli(argv):
    """train.main(argv) in this process: (exit code, stderr, summary or None)."""
    from experiments import train

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            summary = train.main(argv)
        except SystemExit as e:
            return e.code, err.getvalue(), None
    return 0, err.getvalue(), summary


def collective_ops(hlo):
    return sorted({op for op in ("all-reduce", "reduce-scatter", "all-gather") if op in hlo})


def compiled_programs(out):
    """Collectives in the compiled epoch of breast-cancer on one device and on 4.

    The settings are CASES["breast-cancer"] + TINY, so both programs come
    from the compilation cache of the runs above.
    """
    import jax

    from experiments import data as data_lib
    from experiments import distributed
    from experiments import train

    config = train.resolve_config(
        train.TrainConfig(
            task="breast-cancer",
            input_noise=0.3,
            hidden=8,
            gates=4,
            batch_size=32,
            lr=1e-2,
            schedule_epochs=4,
            epochs=EPOCHS,
        )
    )
    split = train.load_split(config)
    n_train = int(split.train.t.shape[0])
    width = int(split.train.x_left.shape[1])
    params, opt_state = train.initial_state_fn(*train._computation(config, n_train), width, width)(
        jax.random.PRNGKey(0)
    )
    key = jax.random.PRNGKey(1)
    facts = {}
    for name, mesh in (("single", None), ("mesh", distributed.make_mesh(4))):
        state, data = (params, opt_state), (split.train, split.test)
        if mesh is None:
            data = tuple(data_lib.Dataset(*map(jax.numpy.asarray, part)) for part in data)
        else:
            data = tuple(distributed.shard_rows(mesh, part) for part in data)
            state = distributed.replicate(mesh, state)
        runner = train.epoch_runner(*train._computation(config, n_train), mesh)
        hlo = runner.lower(*state, key, *data, None).compile().as_text()
        facts[name] = {
            "collectives": collective_ops(hlo),
            "train_sharding": str(data[0].x_left.sharding),
            "params_sharding": str(jax.tree_util.tree_leaves(state)[0].sharding),
        }
    out["programs"] = facts


def worker(out_dir):
    import jax

    out_dir = pathlib.Path(out_dir)
    out = {"device_count": jax.device_count()}
    mesh4 = ["--devices", "4"]

    def run(name, *argv):
        code, err, summary = cli([*argv, "--out", str(out_dir / name)])
        out[name] = {"code": code, "stderr": err}
        if summary is not None:
            out[name]["data_parallel"] = summary["data_parallel"]
            leaf = jax.tree_util.tree_leaves(summary["params"])[0]
            out[name]["params_sharding"] = str(leaf.sharding)

    def resume(name, *argv):
        code, err, _ = cli(["--resume", str(out_dir / name), "--epochs", str(EPOCHS), *argv])
        out[name + "-resumed"] = {"code": code, "stderr": err}

    for task, args in CASES.items():
        run(f"{task}-1dev", *args, *TINY, "--epochs", str(EPOCHS))
        run(f"{task}-4dev", *args, *TINY, "--epochs", str(EPOCHS), *mesh4)
    bc = CASES["breast-cancer"]
    run("bc-mesh-then-single", *bc, *TINY, "--epochs", "1", *mesh4)
    resume("bc-mesh-then-single")
    run("bc-single-then-mesh", *bc, *TINY, "--epochs", "1")
    resume("bc-single-then-mesh", *mesh4)
    run("indivisible-batch", *bc, *TINY, "--batch-size", "30", *mesh4)
    run("too-many-devices", *bc, *TINY, "--devices", "8")
    run("process-id-alone", *bc, *TINY, "--process-id", "1")
    compiled_programs(out)
    (out_dir / "facts.json").write_text(json.dumps(out, indent=1))


# --------------------------------------------------------------------------
# In this process (one device): options, meshes, padding
# --------------------------------------------------------------------------


def test_parse_devices(jobs):
    from experiments import distributed

    assert distributed.parse_devices("all") == "all"
    assert distributed.parse_devices("3") == 3
    for bad in ("0", "-1", "two"):
        with pytest.raises(argparse.ArgumentTypeError):
            distributed.parse_devices(bad)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"coordinator": "localhost", "num_processes": 2, "process_id": 0}, "HOST:PORT"),
        ({"coordinator": "localhost:1234", "num_processes": 2}, "needs --num-processes"),
        ({"coordinator": "localhost:1234", "num_processes": 2, "process_id": 2}, "0..1"),
        ({"num_processes": 2}, "need --coordinator"),
    ],
    ids=["no-port", "no-process-id", "process-id-too-large", "no-coordinator"],
)
def test_setup_rejects_bad_options_before_starting(jobs, kwargs, needle):
    from experiments import distributed

    with pytest.raises(ValueError, match=needle):
        distributed.setup(**kwargs)


def test_make_mesh_on_one_device(jobs):
    import jax

    from experiments import distributed

    mesh = distributed.make_mesh(1)
    assert mesh.axis_names == ("data",) and mesh.size == 1
    assert distributed.make_mesh("all").size == jax.local_device_count()
    with pytest.raises(ValueError, match="this process has"):
        distributed.make_mesh(jax.local_device_count() + 1)
    assert distributed.setup() is None  # no options: plain single-device training


def test_pad_rows_appends_t_zero_rows(jobs):
    from experiments import data as data_lib
    from experiments import distributed

    x = np.arange(10, dtype=np.float32).reshape(5, 2) + 1
    data = data_lib.Dataset(x, 2 * x, np.array([1, -1, 1, 1, -1], np.float32))
    padded = distributed.pad_rows(data, 4)
    assert padded.t.shape == (8,) and padded.x_left.shape == (8, 2)
    np.testing.assert_array_equal(padded.t, [1, -1, 1, 1, -1, 0, 0, 0])
    np.testing.assert_array_equal(padded.x_right[:5], data.x_right)
    assert not padded.x_left[5:].any()
    assert distributed.pad_rows(data, 5) is data


def test_evaluate_does_not_count_padding_rows(jobs):
    import jax

    from experiments import data as data_lib
    from experiments import distributed
    from experiments import models
    from experiments import train

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    data = data_lib.Dataset(x, x[:, ::-1].copy(), np.where(x[:, 0] > 0, 1.0, -1.0).astype("f4"))
    model = models.gated(4, 2)
    params = model.init(jax.random.PRNGKey(0), 3, 3)
    evaluate = train.make_evaluate(model)
    want = evaluate(params, data)
    got = evaluate(params, distributed.pad_rows(data, 4))
    for name in ("loss", "accuracy"):
        assert float(got[name]) == pytest.approx(float(want[name]), rel=1e-6)
    # Counted as examples, the 2 padding rows (loss ln 2 each) would change the mean.
    naive = (6 * float(want["loss"]) + 2 * np.log(2)) / 8
    assert naive != pytest.approx(float(want["loss"]), rel=1e-3)


# --------------------------------------------------------------------------
# Fixtures: the subprocesses, started with the module's first test
# --------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def multiprocess_argv(out_dir, port, process_id):
    args = [*CASES["breast-cancer"], *TINY, "--epochs", str(EPOCHS)]
    args = [a for a in args if a != "--quiet"]  # process 0 logs its epochs, process 1 must not
    return [
        sys.executable,
        "-m",
        "experiments.train",
        *args,
        "--out",
        str(out_dir),
        "--coordinator",
        f"localhost:{port}",
        "--num-processes",
        "2",
        "--process-id",
        str(process_id),
    ]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Starts the worker and the two processes. The quick in-process tests ask for it
    too, only so that the subprocesses run while they do."""
    root = tmp_path_factory.mktemp("distributed")
    procs = {}
    port = free_port()
    for i in (0, 1):
        procs[f"process{i}"] = subprocess.Popen(
            multiprocess_argv(root / "two-processes", port, i),
            cwd=REPO,
            env=env_with_devices(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    procs["worker"] = subprocess.Popen(
        [sys.executable, __file__, str(root)],
        cwd=REPO,
        env=env_with_devices(4),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield root, procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def results(jobs):
    root, procs = jobs
    done = {}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        done[name] = (proc.returncode, stdout, stderr)
    return root, done


@pytest.fixture(scope="module")
def facts(results):
    root, done = results
    code, _, stderr = done["worker"]
    assert code == 0, stderr[-3000:]
    return json.loads((root / "facts.json").read_text())


# --------------------------------------------------------------------------
# Comparing runs
# --------------------------------------------------------------------------


def metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return np.array([[row[k] for k in METRICS] for row in rows])


def final_params(run_dir):
    """The params.* leaves of the run's latest checkpoint, as numpy arrays."""
    import safetensors.numpy

    from experiments import checkpoint

    ckpt = checkpoint.latest_checkpoint(run_dir)
    arrays = safetensors.numpy.load_file(ckpt / checkpoint.STATE_FILE)
    return {name: a for name, a in arrays.items() if name.startswith("params.")}, ckpt.name


def rel_diff(a, b):
    """max |a - b| / max |b| over every leaf of two dicts of arrays (same keys)."""
    assert sorted(a) == sorted(b)
    num = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in b)
    return num / max(float(np.max(np.abs(b[k]))) for k in b)


def assert_same_run(got_dir, want_dir):
    got, got_name = final_params(got_dir)
    want, want_name = final_params(want_dir)
    assert got_name == want_name == f"ckpt_{EPOCHS:06d}"
    assert rel_diff(got, want) <= RTOL
    np.testing.assert_allclose(metrics(got_dir), metrics(want_dir), rtol=RTOL)


def test_same_run_check_rejects_a_different_run(facts, results):
    """The comparison can fail: one epoch fewer, or a nudged weight, is caught."""
    root, _ = results
    with pytest.raises(AssertionError):  # the same run after 1 epoch instead of 2
        np.testing.assert_allclose(
            metrics(root / "bc-mesh-then-single")[:1], metrics(root / "breast-cancer-1dev")[1:]
        )
    params, _ = final_params(root / "breast-cancer-1dev")
    nudged = dict(params)
    nudged["params.W1_L"] = params["params.W1_L"] * (1 + 1e-4)
    assert rel_diff(nudged, params) > RTOL
    assert rel_diff(params, params) == 0.0


# --------------------------------------------------------------------------
# One process, 4 devices
# --------------------------------------------------------------------------


def test_worker_sees_four_devices(facts):
    assert facts["device_count"] == 4


@pytest.mark.parametrize("task", sorted(CASES))
def test_four_devices_train_like_one(facts, results, task):
    root, _ = results
    for name in (f"{task}-1dev", f"{task}-4dev"):
        assert facts[name]["code"] == 0, facts[name]["stderr"]
    assert facts[f"{task}-4dev"]["data_parallel"]["devices"] == 4
    assert facts[f"{task}-1dev"]["data_parallel"]["devices"] == 1
    assert "spec=P()" in facts[f"{task}-4dev"]["params_sharding"]  # replicated
    assert_same_run(root / f"{task}-4dev", root / f"{task}-1dev")


def test_batches_are_sharded_and_gradients_all_reduced(facts):
    single, mesh = facts["programs"]["single"], facts["programs"]["mesh"]
    assert single["collectives"] == []
    assert "all-reduce" in mesh["collectives"]
    assert "spec=P('data',)" in mesh["train_sharding"]
    assert "spec=P()" in mesh["params_sharding"]


@pytest.mark.parametrize(
    "name",
    ["bc-mesh-then-single", "bc-single-then-mesh"],
    ids=["mesh-to-one-device", "one-device-to-mesh"],
)
def test_checkpoint_resumes_across_device_counts(facts, results, name):
    root, _ = results
    assert facts[name]["code"] == 0, facts[name]["stderr"]
    assert facts[name + "-resumed"]["code"] == 0, facts[name + "-resumed"]["stderr"]
    assert_same_run(root / name, root / "breast-cancer-1dev")


@pytest.mark.parametrize(
    "name, needle",
    [
        ("indivisible-batch", "--batch-size 30 does not divide by the 4 devices"),
        ("too-many-devices", "--devices 8: this process has 4 device(s)"),
        ("process-id-alone", "need --coordinator"),
    ],
)
def test_cli_errors_are_one_line_exit_2(facts, results, name, needle):
    root, _ = results
    code, stderr = facts[name]["code"], facts[name]["stderr"]
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and needle in lines[0], stderr
    assert not (root / name).exists()  # nothing written


# --------------------------------------------------------------------------
# Two processes, jax.distributed on localhost
# --------------------------------------------------------------------------


def test_two_processes_train_like_one_device(facts, results):
    root, done = results
    for i in (0, 1):
        code, _, stderr = done[f"process{i}"]
        assert code == 0, f"process {i}: {stderr[-3000:]}"
    lines = [
        [ln for ln in done[f"process{i}"][1].splitlines() if ln.startswith(f"process {i} of 2")]
        for i in (0, 1)
    ]
    assert all(len(found) == 1 for found in lines), lines
    # Both processes hold bitwise the same params...
    assert lines[0][0].split()[-1] == lines[1][0].split()[-1]
    # ...only process 0 logged and wrote (one metrics row per epoch)...
    assert "epoch 1/2" in done["process0"][1] and "epoch 1/2" not in done["process1"][1]
    summary = json.loads((root / "two-processes" / "summary.json").read_text())
    assert summary["data_parallel"] == {
        "devices": 4,
        "processes": 2,
        "mesh": {"data": 4},
        "device_kind": "cpu",
    }
    # ...and the run is the one-device run.
    assert_same_run(root / "two-processes", root / "breast-cancer-1dev")


# --------------------------------------------------------------------------
# experiments/bench_devices.py
# --------------------------------------------------------------------------


def test_bench_worker_env_forces_the_device_count(monkeypatch):
    from experiments import bench_devices

    flag = "--xla_force_host_platform_device_count"
    monkeypatch.setenv("XLA_FLAGS", f"--xla_cpu_use_thunk_runtime=true {flag}=8")
    flags = bench_devices.worker_env(2)["XLA_FLAGS"].split()
    assert flags == ["--xla_cpu_use_thunk_runtime=true", f"{flag}=2"]


def test_bench_keeps_the_median_repeat_and_tabulates():
    from experiments import bench_devices

    runs = [
        {"devices": 2, "examples_per_second": eps, "epoch_seconds": [1.0], "train_loss": 0.5}
        for eps in (30.0, 10.0, 20.0)
    ]
    row = bench_devices._median_run([*runs, {"devices": 2, "error": "exit 1: boom"}])
    assert row["examples_per_second"] == 20.0
    assert row["repeats"] == [30.0, 10.0, 20.0, "exit 1: boom"]
    row.update(compile_seconds=1.0, speedup_vs_first=0.5)
    text = bench_devices.table({"rows": [row, {"devices": 4, "error": "timed out"}]})
    assert "| 2 | 20 | 0.50x |" in text and "| 4 | failed: timed out |" in text


@pytest.mark.slow
def test_bench_devices_quick_runs(tmp_path):
    from experiments import bench_devices

    out = tmp_path / "bench.json"
    result = bench_devices.main(["--quick", "--devices", "1", "2", "--out", str(out)])
    assert [row["devices"] for row in result["rows"]] == [1, 2]
    assert all(row["examples_per_second"] > 0 for row in result["rows"]), result
    assert json.loads(out.read_text())["rows"][1]["speedup_vs_first"] > 0


if __name__ == "__main__":
    worker(sys.argv[1])
