"""experiments.bench_torch: the PyTorch network equals gj.loss, and a tiny run writes its JSON.

Skipped where PyTorch is not installed (CI): it is the optional `bench` extra.
No timing assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_problem
from conftest import rel_err

import gated_jax as gj

torch = pytest.importorskip("torch")

from experiments import bench_torch  # noqa: E402 (needs torch)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def as_numpy(params: gj.Params) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in params._asdict().items()}


def torch_and_jax_gradients(params, x_left, x_right, t):
    got = bench_torch.gradients(as_numpy(params), x_left, x_right, t)
    want = jax.grad(gj.loss)(params, x_left, x_right, t)
    return got, want


@pytest.mark.parametrize(
    "seed, sizes, batch",
    [(0, (5, 3, 7, 4), (6,)), (1, (2, 9, 4, 6), (2, 3)), (2, (4, 4, 1, 1), (1,))],
)
def test_torch_gradients_equal_jax_grad(seed, sizes, batch, x64):
    params, x_left, x_right, t = make_problem(seed, sizes, batch, jnp.float64)
    got, want = torch_and_jax_gradients(params, x_left, x_right, t)
    assert list(got) == list(gj.Params._fields)
    for name in gj.Params._fields:
        assert got[name].dtype == np.float64 and got[name].shape == want._asdict()[name].shape
        assert rel_err(got[name], want._asdict()[name]) <= 1e-10, name


def test_the_comparison_rejects_a_wrong_answer(x64):
    """One weight off by a relative 1e-8 in torch only: the comparison above must fail."""
    params, x_left, x_right, t = make_problem(dtype=jnp.float64)
    wrong = params._replace(W2_LR=params.W2_LR.at[0, 0].multiply(1 + 1e-8))
    got = bench_torch.gradients(as_numpy(wrong), x_left, x_right, t)
    want = jax.grad(gj.loss)(params, x_left, x_right, t)
    assert max(rel_err(got[k], want._asdict()[k]) for k in gj.Params._fields) > 1e-10


def test_forward_equals_gj_forward(x64):
    params, x_left, x_right, t = make_problem(dtype=jnp.float64, batch=(2, 5))
    model = bench_torch.GatedNet(params)
    x_l, x_r, t_ = (torch.tensor(np.asarray(a)) for a in (x_left, x_right, t))
    a3 = model(x_l, x_r).detach().numpy()
    assert rel_err(a3, gj.forward(params, x_left, x_right).a3) <= 1e-12
    loss = bench_torch.objective(model, x_l, x_r, t_).item()
    assert abs(loss - float(gj.loss(params, x_left, x_right, t))) <= 1e-12


def test_tiny_run_writes_well_formed_json(tmp_path):
    out = tmp_path / "torch.json"
    argv = [sys.executable, "-m", "experiments.bench_torch", "--sizes", "small"]
    argv += ["--repeats", "2", "--number", "1", "--steps", "3", "--json", str(out)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["torch"] == torch.__version__ and doc["threads"] >= 1
    assert "omp_wait_policy" in doc
    (result,) = doc["results"]
    assert result["size"] == "small" and result["shape"] == dict(
        zip(("B", "D_L", "D_R", "H", "Q"), bench_torch.SIZES["small"], strict=True)
    )
    summaries = [result["seconds"]["torch_eager"], result["train_examples_per_s"]["torch_eager"]]
    if result["compile_error"] is None:
        assert result["compile_seconds"] > 0
        summaries += [result["seconds"]["torch_compile"], result["compile_over_eager"]]
        summaries += [result["train_examples_per_s"]["torch_compile"]]
    else:  # compiling failed on this machine: recorded, and reported as skipped
        assert isinstance(result["compile_error"], str)
        assert result["seconds"]["torch_compile"] is None
        assert "skipped" in proc.stdout
    for s in summaries:
        assert 0 < s["min"] <= s["median"] <= s["max"]
    assert "compiled/eager" in proc.stdout


def test_extra_shapes_are_rows_named_by_their_shape(tmp_path):
    """benchmark.py's sweep passes --shapes and looks rows up by "B,D_L,D_R,H,Q"."""
    out = tmp_path / "torch.json"
    argv = [sys.executable, "-m", "experiments.bench_torch", "--sizes", "small"]
    argv += ["--shapes", "8,3,4,5,2", "--train-sizes", "medium", "--no-compile"]
    argv += ["--repeats", "1", "--number", "1", "--json", str(out)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    small, row = json.loads(out.read_text())["results"]
    assert small["size"] == "small" and small["train_examples_per_s"] is None  # not trained
    assert row["size"] == "8,3,4,5,2" and row["shape"]["H"] == 5
    assert row["seconds"]["torch_eager"]["median"] > 0 and row["seconds"]["torch_compile"] is None
    assert row["compile_error"] is None and row["train_examples_per_s"] is None


@pytest.mark.parametrize("text", ["1,2,3,4", "1,2,3,4,0", "a,2,3,4,5"])
def test_a_bad_shape_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="five positive ints"):
        bench_torch.parse_shape(text)
