"""Figures of a training run: learning curves, decision boundary, gates.

Every function draws on its own `matplotlib.figure.Figure` with an Agg canvas
(no pyplot, so no global figure state and no display needed), writes one PNG
and returns its path. Files are written atomically: the PNG is saved under a
temporary name in the target directory and moved into place with
`os.replace`, so a crash never leaves a half-written picture behind. No
function modifies its inputs.

    plot_curves(metrics, path)                    loss and accuracy per epoch
    plot_decision_boundary(params, split, path)   P(t = +1) over the plane (2-D tasks)
    plot_gates(params, dataset, path)             sigma(a2_L) sigma(a2_R) and a2_LR by class
    write_plots(run_dir, params, split, metrics)  all of the above into run_dir/plots/
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

import jax
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

import gated_jax as gj

if TYPE_CHECKING:  # only for annotations: plotting needs no scikit-learn import
    from experiments.data import Dataset
    from experiments.data import Split

PathLike = str | os.PathLike

# Rows per compiled call: the last batch is padded to this size, so a data set
# of any length above it compiles the forward pass only once.
BATCH_SIZE = 4096
DPI = 100

# One colour per class, used for points, bars and histograms alike.
POSITIVE_COLOUR = "#b2182b"  # t = +1, the red end of the probability map
NEGATIVE_COLOUR = "#2166ac"  # t = -1, the blue end
PROBABILITY_CMAP = "RdBu_r"  # P(t = +1): 0 blue, 1 red

CURVE_KEYS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")


# --------------------------------------------------------------------------
# Shared pieces: saving, batching, class masks.
# --------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: PathLike) -> pathlib.Path:
    """Writes `fig` as a PNG at `path` atomically and returns the path.

    The picture is saved to a temporary file in the same directory, then
    renamed over `path`; on any error the temporary file is removed and an
    existing `path` is left untouched.

    Args:
      fig: the figure to save.
      path: where the PNG goes; its directory must exist.

    Returns:
      `path` as a `pathlib.Path`.
    """
    path = pathlib.Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
        os.replace(tmp_name, path)
    except BaseException:
        pathlib.Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _in_batches(
    fn: Callable[..., Any],
    params: gj.Params,
    x_left: np.ndarray,
    x_right: np.ndarray,
    batch_size: int,
) -> Any:
    """Applies jitted `fn(params, x_left, x_right)` to row chunks; numpy results, rows joined.

    Every chunk is zero-padded to `batch_size` rows (or to N when N is
    smaller) so that `fn` compiles once per shape, and the padding is cut off
    the results.
    """
    n = x_left.shape[0]
    size = max(1, min(batch_size, n))
    chunks = []
    for start in range(0, n, size):
        xl, xr = x_left[start : start + size], x_right[start : start + size]
        rows = xl.shape[0]
        if rows < size:
            xl = np.concatenate([xl, np.zeros((size - rows, *xl.shape[1:]), xl.dtype)])
            xr = np.concatenate([xr, np.zeros((size - rows, *xr.shape[1:]), xr.dtype)])
        out = fn(params, xl, xr)
        chunks.append(jax.tree.map(lambda a, rows=rows: np.asarray(a)[:rows], out))
    if not chunks:  # no rows: run once on an empty batch for the right shapes
        out = fn(params, x_left, x_right)
        return jax.tree.map(np.asarray, out)
    return jax.tree.map(lambda *parts: np.concatenate(parts), *chunks)


@jax.jit
def _gates_and_linear(
    params: gj.Params, x_left: jax.Array, x_right: jax.Array
) -> tuple[jax.Array, jax.Array]:
    acts = gj.forward(params, x_left, x_right)
    gate = jax.nn.sigmoid(acts.a2_L) * jax.nn.sigmoid(acts.a2_R)
    return gate, acts.a2_LR


_predict_proba = jax.jit(gj.predict_proba)


def gate_activations(
    params: gj.Params, dataset: Dataset, *, batch_size: int = BATCH_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """The gate product and the linear unit of layer 2 for every example.

    Args:
      params: the network's Params.
      dataset: N examples.
      batch_size: rows per compiled call of `gj.forward`.

    Returns:
      (gate, a2_LR), numpy arrays of shape (N, Q): gate is
      sigma(a2_L) * sigma(a2_R), a2_LR the linear unit.
    """
    return _in_batches(
        _gates_and_linear,
        params,
        np.asarray(dataset.x_left),
        np.asarray(dataset.x_right),
        batch_size,
    )


def _classes(t: np.ndarray) -> list[tuple[np.ndarray, str, str]]:
    """(mask, label, colour) for t = +1, then for t = -1."""
    t = np.asarray(t)
    return [(t > 0, "t = +1", POSITIVE_COLOUR), (t < 0, "t = -1", NEGATIVE_COLOUR)]


def is_planar(split: Split) -> bool:
    """Whether both splits are 2-D points fed to both branches (x_left == x_right)."""
    for ds in (split.train, split.test):
        xl, xr = np.asarray(ds.x_left), np.asarray(ds.x_right)
        if xl.ndim != 2 or xl.shape[1] != 2 or xl.shape != xr.shape:
            return False
        if not np.array_equal(xl, xr):
            return False
    return True


# --------------------------------------------------------------------------
# The figures.
# --------------------------------------------------------------------------


def plot_curves(
    metrics: Sequence[dict[str, Any]], path: PathLike, *, title: str | None = None
) -> pathlib.Path:
    """Loss and accuracy per epoch, train against test, as two panels.

    Args:
      metrics: one dict per epoch with keys epoch, train_loss, train_accuracy,
        test_loss, test_accuracy (others, e.g. seconds, are ignored).
      path: where the PNG goes.
      title: the figure's title; "Learning curves" if None.

    Returns:
      The path of the PNG.

    Raises:
      ValueError: when `metrics` is empty or a row lacks one of the keys.
    """
    if not metrics:
        raise ValueError("plot_curves: metrics is empty, nothing to plot")
    for i, row in enumerate(metrics):
        missing = [k for k in CURVE_KEYS if k not in row]
        if missing:
            raise ValueError(f"plot_curves: metrics row {i} lacks {missing}")
    column = {k: np.array([float(row[k]) for row in metrics]) for k in CURVE_KEYS}

    fig = _new_figure(11, 4.2)
    loss_ax, acc_ax = fig.subplots(1, 2)
    # Markers keep a run of one epoch visible; many epochs get plain lines.
    marker = "o" if len(metrics) <= 30 else None
    for ax, quantity, label in (
        (loss_ax, "loss", "loss (mean E)"),
        (acc_ax, "accuracy", "accuracy"),
    ):
        for split_name, style in (("train", "-"), ("test", "--")):
            ax.plot(
                column["epoch"],
                column[f"{split_name}_{quantity}"],
                style,
                marker=marker,
                markersize=4,
                label=split_name,
            )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        first, last = column["epoch"].min(), column["epoch"].max()
        if last - first < 2:  # one or two epochs: whole-epoch ticks either side
            ax.set_xlim(first - 1, last + 1)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    loss_ax.set_title("Loss")
    acc_ax.set_title("Accuracy")
    acc_ax.set_ylim(-0.02, 1.02)
    final = metrics[-1]
    fig.suptitle(
        f"{title or 'Learning curves'}  (final test accuracy {float(final['test_accuracy']):.3f})"
    )
    return save_figure(fig, path)


def plot_decision_boundary(
    params: gj.Params,
    split: Split,
    path: PathLike,
    *,
    grid: int = 200,
    title: str | None = None,
) -> pathlib.Path:
    """P(t = +1) over the plane with its 0.5 contour and the data points.

    For 2-D tasks only, where each example's point is fed to both branches:
    every grid point is likewise fed as x_left and x_right.

    Args:
      params: the network's Params (D_L = D_R = 2).
      split: a 2-D split (see `is_planar`); train points are drawn as
        circles, test points as triangles, coloured by label.
      path: where the PNG goes.
      grid: grid points per axis.
      title: the figure's title; built from `split.name` if None.

    Returns:
      The path of the PNG.

    Raises:
      ValueError: when the split is not 2-D with x_left == x_right, or grid < 2.
    """
    if not is_planar(split):
        shape = np.shape(split.train.x_left)
        raise ValueError(
            f"plot_decision_boundary: needs 2-D points with x_left == x_right; "
            f"task {split.name!r} has x_left of shape {shape}"
        )
    if grid < 2:
        raise ValueError(f"plot_decision_boundary: grid must be >= 2, got {grid}")

    points = np.concatenate([np.asarray(split.train.x_left), np.asarray(split.test.x_left)])
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = 0.08 * np.maximum(hi - lo, 1e-3)
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], grid, dtype=np.float32)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], grid, dtype=np.float32)
    gx, gy = np.meshgrid(xs, ys)
    flat = np.stack([gx.ravel(), gy.ravel()], axis=1)
    proba = _in_batches(_predict_proba, params, flat, flat, BATCH_SIZE).reshape(grid, grid)

    fig = _new_figure(7.5, 6.8)
    ax = fig.subplots()
    filled = ax.contourf(gx, gy, proba, levels=np.linspace(0.0, 1.0, 11), cmap=PROBABILITY_CMAP)
    ax.contour(gx, gy, proba, levels=[0.5], colors="k", linewidths=2.0)
    fig.colorbar(filled, ax=ax, label="P(t = +1)  =  sigma(a3)")

    for ds, split_name, marker, size in (
        (split.train, "train", "o", 18),
        (split.test, "test", "^", 30),
    ):
        x = np.asarray(ds.x_left)
        for mask, label, colour in _classes(ds.t):
            ax.scatter(
                x[mask, 0],
                x[mask, 1],
                s=size,
                marker=marker,
                c=colour,
                edgecolors="white" if split_name == "train" else "black",
                linewidths=0.6,
                label=f"{split_name}, {label}",
            )
    ax.plot([], [], "k-", linewidth=2.0, label="P = 0.5")
    # Below the map, where it hides no point.
    fig.legend(loc="outside lower center", ncols=5, fontsize="small", markerscale=1.5)
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(ys[0], ys[-1])
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.set_title(title or f"Decision boundary on {split.name}")
    return save_figure(fig, path)


def plot_gates(
    params: gj.Params,
    dataset: Dataset,
    path: PathLike,
    *,
    title: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> pathlib.Path:
    """The gates and the linear unit of layer 2, split by class.

    Left: for each gated unit q, the mean of sigma(a2_L,q) * sigma(a2_R,q)
    over t = +1 examples and over t = -1 examples (grouped bars). Right: the
    density of a2_LR values, all units pooled, for t = +1 and t = -1
    (overlaid histograms on shared bins).

    Args:
      params: the network's Params.
      dataset: the examples to show (e.g. the test split).
      path: where the PNG goes.
      title: the figure's title; "Gates" if None.
      batch_size: rows per compiled call of `gj.forward`.

    Returns:
      The path of the PNG.
    """
    gate, a2_LR = gate_activations(params, dataset, batch_size=batch_size)
    n_gates = gate.shape[1]
    classes = _classes(dataset.t)

    fig = _new_figure(12, 4.5)
    bar_ax, hist_ax = fig.subplots(1, 2, width_ratios=[1.3, 1.0])

    units = np.arange(n_gates)
    width = 0.4
    for offset, (mask, label, colour) in zip((-width / 2, width / 2), classes, strict=True):
        count = int(mask.sum())
        if count == 0:
            bar_ax.bar([], [], color=colour, label=f"{label} (no examples)")
            continue
        bar_ax.bar(
            units + offset,
            gate[mask].mean(axis=0),
            width,
            color=colour,
            label=f"{label} (n = {count})",
        )
    bar_ax.set_ylim(0.0, 1.15)  # headroom for the legend above the highest possible bar
    bar_ax.set_yticks(np.linspace(0.0, 1.0, 6))
    step = max(1, int(np.ceil(n_gates / 16)))  # at most ~16 tick labels
    bar_ax.set_xticks(units[::step])
    bar_ax.set_xlim(-0.6, n_gates - 0.4)
    bar_ax.set_xlabel("gated unit q")
    bar_ax.set_ylabel("mean of sigma(a2_L) * sigma(a2_R)")
    bar_ax.set_title("Gate opening by class")
    bar_ax.grid(True, axis="y", alpha=0.3)
    bar_ax.legend(loc="upper center", ncols=2, fontsize="small")

    values = a2_LR.ravel()
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if hi - lo < 1e-6:  # a constant unit: give its single bar some width
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 41)
    for mask, label, colour in classes:
        class_values = a2_LR[mask].ravel()
        if class_values.size == 0:
            hist_ax.hist([], bins=bins, color=colour, label=f"{label} (no examples)")
            continue
        hist_ax.hist(
            class_values,
            bins=bins,
            density=True,
            color=colour,
            alpha=0.5,
            histtype="stepfilled",
            edgecolor=colour,
            label=label,
        )
    hist_ax.set_xlabel(f"a2_LR (all {n_gates} units pooled)")
    hist_ax.set_ylabel("density")
    hist_ax.set_title("Linear unit a2_LR by class")
    hist_ax.grid(True, alpha=0.3)
    hist_ax.legend(loc="best", fontsize="small")

    fig.suptitle(f"{title or 'Gates'}  ({len(dataset.t)} examples, Q = {n_gates})")
    return save_figure(fig, path)


def write_plots(
    run_dir: PathLike,
    params: gj.Params,
    split: Split,
    metrics: Sequence[dict[str, Any]],
) -> list[pathlib.Path]:
    """Writes every figure of a run into `run_dir/plots/`.

    Args:
      run_dir: the run's directory; `plots/` is created under it.
      params: the trained Params.
      split: the run's data.
      metrics: the per-epoch rows of the run (see `plot_curves`).

    Returns:
      The paths written: curves.png, gates.png (on the test split) and, for
      2-D tasks, decision_boundary.png.
    """
    out = pathlib.Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_curves(metrics, out / "curves.png", title=f"Learning curves on {split.name}"),
        plot_gates(params, split.test, out / "gates.png", title=f"Gates on {split.name} (test)"),
    ]
    if is_planar(split):
        paths.append(plot_decision_boundary(params, split, out / "decision_boundary.png"))
    return paths
