"""experiments.benchmark: a tiny run writes well-formed figures (no timing assertions)."""

from __future__ import annotations

import json

from experiments import benchmark


def test_quick_small_run_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    benchmark.main(["--sizes", "small", "--repeats", "2", "--number", "1", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["machine"]["devices"] and doc["machine"]["cores"] >= 1
    (result,) = doc["results"]
    assert result["size"] == "small" and result["shape"]["H"] == 64
    for name in ("custom", "autodiff", "floor"):
        s = result["seconds"][name]
        assert 0 < s["min"] <= s["median"] <= s["max"]
    for ratio in ("custom_over_autodiff", "custom_over_floor", "autodiff_over_floor"):
        assert result[ratio]["min"] <= result[ratio]["median"] <= result[ratio]["max"]
    assert result["step_flops"] == benchmark.step_flops(256, 64, 64, 64, 32)
    assert set(result["memory"]) == {"custom", "autodiff"}
    assert "custom/autodiff" in capsys.readouterr().out


def test_flop_count_of_one_step():
    # forward: B H (D_L + D_R) + 3 B H Q; backward: B H (D_L + D_R) + 6 B Q H
    assert benchmark.step_flops(1, 1, 1, 1, 1) == 2 * ((2 + 3) + (2 + 6))
    assert benchmark.step_flops(2, 3, 5, 7, 11) == 2 * (2 * 7 * 8 * 2 + 9 * 2 * 7 * 11)
