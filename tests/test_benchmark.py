"""experiments.benchmark and bench_train: well-formed output and equal computations.

No timing assertions: speed is measured by `python -m experiments.benchmark`,
not asserted here.
"""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gated_jax as gj
from experiments import bench_train
from experiments import benchmark

TINY = (32, 6, 5, 8, 4)  # B, D_L, D_R, H, Q


def test_quick_run_writes_every_part_and_a_plot(tmp_path, capsys, monkeypatch):
    # Every part at tiny shapes, so that this checks the output, fast.
    monkeypatch.setitem(benchmark.SIZES, "small", TINY)
    monkeypatch.setitem(benchmark.SIZES, "medium", (64, *TINY[1:]))
    monkeypatch.setattr(benchmark, "QUICK_SWEEP_BATCH", (16, 32))
    monkeypatch.setattr(benchmark, "QUICK_SWEEP_WIDTH", (8,))
    monkeypatch.setattr(benchmark, "ENSEMBLE_KS", (1, 2))
    out = tmp_path / "bench.json"
    argv = ["--sizes", "small", "--repeats", "2", "--number", "1", "--steps", "2"]
    doc = benchmark.main([*argv, "--no-torch", "--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    assert doc["machine"]["devices"] and doc["machine"]["cores"] >= 1
    (step,) = doc["steps"]
    assert step["size"] == "small" and step["shape"]["H"] == TINY[3]
    for name in ("custom", "autodiff", "floor"):
        s = step["seconds"][name]
        assert 0 < s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
    for ratio in ("custom_over_autodiff", "custom_over_floor", "autodiff_over_floor"):
        assert step[ratio]["min"] <= step[ratio]["median"] <= step[ratio]["max"]
    assert step["step_flops"] == benchmark.step_flops(*TINY)
    assert set(step["memory"]) == {"custom", "autodiff"}
    B, _, _, H, Q = TINY
    # The custom loss keeps the Activations (a1_L, a1_R, a2_L, a2_R, a2_LR, a3) and
    # nothing else of its own; autodiff keeps more (tanh and sigmoid outputs, W^T).
    assert step["residuals"]["custom"]["saved_bytes"] == 4 * B * (2 * H + 3 * Q + 1)
    assert step["residuals"]["autodiff"]["saved_bytes"] > step["residuals"]["custom"]["saved_bytes"]
    (throughput,) = doc["throughput"]
    assert set(throughput["examples_per_s"]) == {"scan_epoch", "step_loop"}
    for rows in (doc["ensembles"]["rows"], doc["ensembles"]["shared_order_rows"]):
        assert [r["K"] for r in rows] == list(benchmark.ENSEMBLE_KS)
        assert rows[0]["over_one_model"]["median"] == 1.0
    assert [r["shape"]["B"] for r in doc["sweep"]["batch"]] == list(benchmark.QUICK_SWEEP_BATCH)
    assert "torch" not in doc
    assert (tmp_path / "bench-scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "custom / autodiff" in printed and "(f) ensembles" in printed


def test_flop_count_of_one_step():
    # forward: B H (D_L + D_R) + 3 B H Q; backward: B H (D_L + D_R) + 6 B Q H
    assert benchmark.step_flops(1, 1, 1, 1, 1) == 2 * ((2 + 3) + (2 + 6))
    assert benchmark.step_flops(2, 3, 5, 7, 11) == 2 * (2 * 7 * 8 * 2 + 9 * 2 * 7 * 11)


def _products(fn, *args) -> list[tuple]:
    """(operands, shapes) of every dot_general in fn's jaxpr, transposes seen through."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    source = {}
    for e in jaxpr.eqns:
        if e.primitive.name == "transpose":
            source[e.outvars[0]] = source.get(e.invars[0], e.invars[0])
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    return [
        (tuple(id(source.get(v, v)) for v in e.invars), tuple(v.aval.shape for v in e.invars))
        for e in dots
    ]


def test_floor_has_13_distinct_products_with_the_step_flops():
    fn, args = benchmark.contenders(*TINY)["floor"]
    products = _products(fn.__wrapped__, *args)
    assert len(products) == 13
    # No two products share both operands, or XLA would merge them (it did once).
    assert len({ids for ids, _ in products}) == 13
    B, D_L, D_R, H, Q = TINY
    out = fn(*args)
    sizes = [int(np.prod(o.shape)) for o in jax.tree_util.tree_leaves(out)]
    assert (
        sizes == [B * H, B * H, B * Q, B * Q, B * Q, H * D_L, H * D_R] + [Q * H] * 3 + [B * H] * 3
    )


def test_the_floor_check_rejects_a_floor_with_shared_operands():
    _, args = benchmark.contenders(*TINY)["floor"]
    params, x_left, x_right, z, r1, r2 = args

    def old_floor(params, x_left, x_right, z, r1, r2):  # one z and one r2 for every product
        return benchmark.matmul_floor(params, x_left, x_right, (z, z, z), r1, (r2, r2, r2))

    products = _products(old_floor, params, x_left, x_right, z[0], r1, r2[0])
    assert len({ids for ids, _ in products}) < 13


def test_scan_epoch_and_step_loop_train_identically():
    fns = bench_train.epoch_functions(TINY, steps=3)
    params_scan = fns["scan_epoch"]()[0]
    params_loop = fns["step_loop"]().params
    chex.assert_trees_all_close(params_scan, params_loop, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shared_order", [False, True], ids=["own-order", "shared-order"])
def test_each_model_of_an_ensemble_trains_like_a_model_alone(shared_order):
    """Model k alone, on its own shuffle (keys[k]) or on the first model's (keys[0])."""
    fns = bench_train.ensemble_functions(TINY, steps=2, ks=(3,), shared_order=shared_order)
    params, _, _ = fns["K=3"]()
    model, optimizer, data, _ = bench_train._setup(TINY, 2)
    epoch = jax.jit(bench_train.train_lib.make_train_epoch(model, optimizer, TINY[0]))
    keys = jax.random.split(jax.random.key(3), 3)
    for k in range(3):
        alone = model.init(keys[k], TINY[1], TINY[2])
        member = jax.tree_util.tree_map(lambda leaf, k=k: leaf[k], params)
        orders = {
            "want": keys[0] if shared_order else keys[k],
            "other": keys[k if shared_order else 0],
        }
        for which, key in orders.items():
            trained, _, _ = epoch(alone, optimizer.init(alone), key, data)
            if which == "want":
                chex.assert_trees_all_close(trained, member, rtol=1e-5, atol=1e-6)
            elif k > 0:  # the check tells the two orders apart
                with pytest.raises(AssertionError):
                    chex.assert_trees_all_close(trained, member, rtol=1e-5, atol=1e-6)


def test_torch_is_reported_as_skipped_when_missing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    assert "not installed" in benchmark.torch_figures([])["skipped"]


@pytest.mark.parametrize("bad", [["--repeats", "0"], ["--steps", "0"], ["--sizes", "huge"]])
def test_bad_arguments_exit_2(bad):
    with pytest.raises(SystemExit) as e:
        benchmark.main(bad)
    assert e.value.code == 2


def test_synthetic_data_is_balanced_pm1():
    data = bench_train.synthetic_data(jax.random.key(0), 1000, 3, 4)
    assert data.x_left.shape == (1000, 3) and data.x_right.shape == (1000, 4)
    assert set(np.unique(data.t)) == {-1.0, 1.0} and abs(float(jnp.mean(data.t))) < 0.1


def test_residuals_count_what_the_backward_keeps_beyond_the_arguments():
    args = benchmark.problem(*TINY)
    B, _, _, H, Q = TINY
    kept = benchmark.residuals(gj.loss, args)
    assert kept == {
        "saved_bytes": 4 * B * (2 * H + 3 * Q + 1),
        "saved_arrays": 6,
        "argument_arrays": 15,
    }
    # A loss whose pullback holds a copy of x_left is charged for it: the count
    # is not of the arguments' sizes.
    copying = lambda p, xl, xr, t: gj.loss(p, xl + 0.0, xr, t)  # noqa: E731
    assert benchmark.residuals(copying, args)["saved_bytes"] > kept["saved_bytes"]
