"""Tests for experiments/plots.py: every figure is a readable PNG, written atomically."""

import copy
import pathlib

import jax
import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest

import gated_jax as gj
from experiments import plots
from experiments.data import Dataset
from experiments.data import Split

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIN_PIXELS, MAX_PIXELS = 300, 3000  # each side of a figure meant to be read on a screen
HIDDEN, GATES = 5, 3


def assert_png(path: pathlib.Path) -> np.ndarray:
    """Checks that `path` is a PNG of a sensible size and returns its pixels."""
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert MIN_PIXELS <= height <= MAX_PIXELS, f"{path}: height {height}"
    assert MIN_PIXELS <= width <= MAX_PIXELS, f"{path}: width {width}"
    assert np.ptp(pixels[..., :3]) > 0, f"{path} is one flat colour"
    return pixels


def _labels(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.where(np.arange(n) % 2 == 0, 1.0, -1.0).astype(np.float32)
    return rng.permutation(t)


def _planar(n: int, rng: np.random.Generator) -> Dataset:
    x = rng.normal(size=(n, 2)).astype(np.float32)
    return Dataset(x_left=x, x_right=x.copy(), t=_labels(n, rng))


def _two_branch(n: int, rng: np.random.Generator) -> Dataset:
    return Dataset(
        x_left=rng.normal(size=(n, 3)).astype(np.float32),
        x_right=rng.normal(size=(n, 4)).astype(np.float32),
        t=_labels(n, rng),
    )


@pytest.fixture
def planar_split() -> Split:
    rng = np.random.default_rng(0)
    return Split(train=_planar(40, rng), test=_planar(20, rng), name="tiny-plane", info={})


@pytest.fixture
def two_branch_split() -> Split:
    rng = np.random.default_rng(1)
    return Split(train=_two_branch(30, rng), test=_two_branch(12, rng), name="tiny-3x4", info={})


def _params(split: Split, seed: int = 0) -> gj.Params:
    return gj.init_params(
        jax.random.key(seed),
        split.train.x_left.shape[1],
        split.train.x_right.shape[1],
        HIDDEN,
        GATES,
    )


def _metrics(epochs: int) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 0.7 / e,
            "train_accuracy": 1.0 - 0.4 / e,
            "test_loss": 0.75 / e,
            "test_accuracy": 1.0 - 0.45 / e,
            "seconds": 0.01,
        }
        for e in range(1, epochs + 1)
    ]


# --------------------------------------------------------------------------
# The PNG check itself rejects what it should.
# --------------------------------------------------------------------------


def _tiny_png(path: pathlib.Path) -> None:
    matplotlib.image.imsave(path, np.random.default_rng(0).random((10, 10, 3)))


def _flat_png(path: pathlib.Path) -> None:
    matplotlib.image.imsave(path, np.ones((400, 400, 3)))


def _not_png(path: pathlib.Path) -> None:
    path.write_bytes(b"GIF89a" + bytes(100))


@pytest.mark.parametrize(
    "write", [_tiny_png, _flat_png, _not_png], ids=["too-small", "flat", "not-png"]
)
def test_png_check_rejects_wrong_files(tmp_path, write):
    path = tmp_path / "bad.png"
    write(path)
    with pytest.raises(AssertionError):
        assert_png(path)


# --------------------------------------------------------------------------
# plot_curves
# --------------------------------------------------------------------------


def test_plot_curves_writes_png_for_a_single_epoch(tmp_path):
    path = tmp_path / "curves.png"
    assert plots.plot_curves(_metrics(1), path) == path
    assert_png(path)


def test_plot_curves_rejects_empty_and_incomplete_metrics(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plots.plot_curves([], tmp_path / "a.png")
    rows = _metrics(2)
    del rows[1]["test_accuracy"]
    with pytest.raises(ValueError, match="test_accuracy"):
        plots.plot_curves(rows, tmp_path / "b.png")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------
# plot_decision_boundary
# --------------------------------------------------------------------------


def test_decision_boundary_writes_png_that_depends_on_params(tmp_path, planar_split):
    first = plots.plot_decision_boundary(
        _params(planar_split, 0), planar_split, tmp_path / "a.png", grid=40
    )
    second = plots.plot_decision_boundary(
        _params(planar_split, 1), planar_split, tmp_path / "b.png", grid=40
    )
    a, b = assert_png(first), assert_png(second)
    assert a.shape == b.shape
    assert not np.array_equal(a, b), "the probability map ignores the params"


def _three_d(split: Split) -> Split:
    return split


def _left_differs(split: Split) -> Split:
    train = split.train._replace(x_right=split.train.x_right + 1.0)
    return split._replace(train=train)


@pytest.mark.parametrize(
    ("split_name", "make"),
    [("two_branch_split", _three_d), ("planar_split", _left_differs)],
    ids=["3-d-and-4-d", "2-d-but-left-differs-from-right"],
)
def test_decision_boundary_rejects_non_planar_data(tmp_path, request, split_name, make):
    split = make(request.getfixturevalue(split_name))
    assert not plots.is_planar(split)
    params = _params(split)
    with pytest.raises(ValueError, match="2-D"):
        plots.plot_decision_boundary(params, split, tmp_path / "db.png")
    assert not list(tmp_path.iterdir())


def test_is_planar_accepts_planar_data(planar_split):
    assert plots.is_planar(planar_split)


# --------------------------------------------------------------------------
# plot_gates and the activations behind it
# --------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [3, 7, 20], ids=lambda b: f"batch-{b}")
def test_gate_activations_match_forward(two_branch_split, batch_size):
    params, ds = _params(two_branch_split), two_branch_split.train
    acts = gj.forward(params, ds.x_left, ds.x_right)
    gate, a2_LR = plots.gate_activations(params, ds, batch_size=batch_size)
    want_gate = jax.nn.sigmoid(acts.a2_L) * jax.nn.sigmoid(acts.a2_R)
    assert gate.shape == a2_LR.shape == (len(ds.t), GATES)
    np.testing.assert_allclose(gate, want_gate, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a2_LR, acts.a2_LR, rtol=1e-6, atol=1e-6)


def test_plot_gates_with_one_class_and_many_rows(tmp_path, two_branch_split):
    rng = np.random.default_rng(2)
    ds = _two_branch(10_000, rng)._replace(t=np.ones(10_000, np.float32))
    path = tmp_path / "gates.png"
    assert plots.plot_gates(_params(two_branch_split), ds, path, batch_size=4096) == path
    assert_png(path)


# --------------------------------------------------------------------------
# write_plots and atomic writes
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("split_name", "expected"),
    [
        ("planar_split", {"curves.png", "gates.png", "decision_boundary.png"}),
        ("two_branch_split", {"curves.png", "gates.png"}),
    ],
    ids=["2-d", "not-2-d"],
)
def test_write_plots_writes_each_figure_and_leaves_inputs_unchanged(
    tmp_path, request, split_name, expected
):
    split = request.getfixturevalue(split_name)
    params, metrics = _params(split), _metrics(3)
    before = copy.deepcopy((jax.tree.map(np.asarray, (params, split)), metrics))
    paths = plots.write_plots(tmp_path / "run", params, split, metrics)
    assert metrics == before[1]
    for old, new in zip(jax.tree.leaves(before[0]), jax.tree.leaves((params, split)), strict=True):
        np.testing.assert_array_equal(old, new)
    assert {p.name for p in paths} == expected
    assert len(paths) == len(expected)
    plots_dir = tmp_path / "run" / "plots"
    assert all(p.parent == plots_dir for p in paths)
    # Only the figures: no temporary file is left behind.
    assert {p.name for p in plots_dir.iterdir()} == expected
    for path in paths:
        assert_png(path)


def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "curves.png"
    path.write_bytes(b"the previous, complete file")

    def crash_half_way(self, fname, *args, **kwargs):
        del self, args, kwargs
        if hasattr(fname, "write"):  # a truncated PNG, then the crash
            fname.write(PNG_MAGIC)
        else:
            pathlib.Path(fname).write_bytes(PNG_MAGIC)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", crash_half_way)
    with pytest.raises(RuntimeError, match="disk on fire"):
        plots.plot_curves(_metrics(3), path)
    assert path.read_bytes() == b"the previous, complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
