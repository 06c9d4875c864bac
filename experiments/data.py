"""Data sets for the gated two-branch network: bundled, synthetic or a user file.

Nothing is downloaded. Every builder returns a `Split` of numpy arrays
(float32 inputs, float32 targets in {-1, +1}) and is deterministic given its
seed: all randomness flows from one `np.random.default_rng(seed)`.

Tasks (`load_task(name)`):

* ``digits-pairs``: pairs of scikit-learn's 8x8 digit images, t = +1 when both
  show the same digit. The images are split into disjoint train/test sets
  first, so no image appears in both splits; classes are exactly balanced.
* ``breast-cancer``: scikit-learn's bundled table, the same features on both
  branches; malignant is +1.
* ``moons``: two interleaving half-circles in the plane, the point on both
  branches.
* ``xor``: points uniform in [-1, 1]^2, t = +1 when both coordinates have the
  same sign, the point on both branches.

Scaled tasks are standardised with statistics of the training split only;
`info["scaling"]` records what was used. `load_npz(path)` reads a user file
and applies no scaling.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any
from typing import NamedTuple

import numpy as np
from sklearn import datasets as sk_datasets

Rng = np.random.Generator

TASKS = ("digits-pairs", "breast-cancer", "moons", "xor")

# Digit pixels are counts in 0..16; a pixel that (almost) never varies in the
# training images is divided by one pixel unit instead of by ~0.
DIGITS_STD_FLOOR = 1.0
# Tabular and generated features are in their own units; guard only against 0.
TABLE_STD_FLOOR = 1e-6
_MAX_LISTED = 5  # how many offending row indices an error message names


class Dataset(NamedTuple):
    """One split of examples, ready for `gj.loss(params, x_left, x_right, t)`."""

    x_left: np.ndarray  # (N, D_L) float32
    x_right: np.ndarray  # (N, D_R) float32
    t: np.ndarray  # (N,) float32 in {-1, +1}


class Split(NamedTuple):
    """A train/test pair of data sets and the facts needed to reproduce them."""

    train: Dataset
    test: Dataset
    name: str
    info: dict[str, Any]  # JSON-serialisable: sizes, scaling, seed, ...


# --------------------------------------------------------------------------
# Shared pieces: splitting and scaling.
# --------------------------------------------------------------------------


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")


def stratified_split(
    labels: np.ndarray, test_fraction: float, rng: Rng
) -> tuple[np.ndarray, np.ndarray]:
    """Splits row indices into train and test, keeping each label's share.

    Args:
      labels: (N,) class of each row, any dtype with `np.unique`.
      test_fraction: share of each class that goes to test, in (0, 1).
      rng: the random generator; the split is a function of its state.

    Returns:
      (train_idx, test_idx): sorted, disjoint int64 index arrays covering 0..N-1.
    """
    _check_fraction(test_fraction)
    train, test = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(test_fraction * rows.size)
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    train_idx, test_idx = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    if train_idx.size == 0 or test_idx.size == 0:
        raise ValueError(
            f"test_fraction={test_fraction} of {labels.size} rows leaves an empty "
            f"split (train {train_idx.size}, test {test_idx.size})"
        )
    return train_idx, test_idx


def fit_standardizer(x_train: np.ndarray, std_floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and floored standard deviation of the training rows.

    Args:
      x_train: (N, D) training features.
      std_floor: smallest divisor allowed, so constant features stay finite.

    Returns:
      (mean, std): (D,) float64 each, with std >= std_floor.
    """
    x = np.asarray(x_train, dtype=np.float64)
    return x.mean(axis=0), np.maximum(x.std(axis=0), std_floor)


def _standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, dtype=np.float64) - mean) / std).astype(np.float32)


def _scaling_info(mean: np.ndarray, std: np.ndarray, std_floor: float) -> dict[str, Any]:
    return {
        "kind": "standardize",
        "fit_on": "train",
        "std_floor": std_floor,
        "mean": mean.tolist(),
        "std": std.tolist(),
    }


def _pm1(positive: np.ndarray) -> np.ndarray:
    return np.where(positive, 1.0, -1.0).astype(np.float32)


def _same_branches(x: np.ndarray, t: np.ndarray) -> Dataset:
    """Both branches see the same features (their own copies)."""
    return Dataset(x_left=x.copy(), x_right=x.copy(), t=t)


def _sizes(train: Dataset, test: Dataset) -> dict[str, Any]:
    return {
        "n_train": int(train.t.size),
        "n_test": int(test.t.size),
        "d_left": int(train.x_left.shape[1]),
        "d_right": int(train.x_right.shape[1]),
        "positive_fraction_train": float(np.mean(train.t > 0)),
        "positive_fraction_test": float(np.mean(test.t > 0)),
    }


def split_points(
    name: str,
    points: np.ndarray,
    t: np.ndarray,
    *,
    test_fraction: float,
    rng: Rng,
    standardize: bool,
    extra_info: dict[str, Any],
) -> Split:
    """Splits one table of points (stratified by t) into a two-branch `Split`.

    Args:
      name: task name for the `Split`.
      points: (N, D) features; both branches receive them.
      t: (N,) float32 targets in {-1, +1}.
      test_fraction: share of each class held out for test.
      rng: random generator for the split.
      standardize: fit mean/std on the train rows and apply them to both splits.
      extra_info: task facts merged into `info`.

    Returns:
      The `Split`, x_left = x_right = the (scaled) points.
    """
    train_idx, test_idx = stratified_split(t, test_fraction, rng)
    if standardize:
        mean, std = fit_standardizer(points[train_idx], TABLE_STD_FLOOR)
        scaled = _standardize(points, mean, std)
        scaling: Any = _scaling_info(mean, std, TABLE_STD_FLOOR)
    else:
        scaled, scaling = np.asarray(points, dtype=np.float32), "none"
    train = _same_branches(scaled[train_idx], t[train_idx])
    test = _same_branches(scaled[test_idx], t[test_idx])
    info = {**extra_info, **_sizes(train, test), "scaling": scaling}
    return Split(train=train, test=test, name=name, info=info)


# --------------------------------------------------------------------------
# digits-pairs
# --------------------------------------------------------------------------


def _class_members(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by class: (classes, rows sorted by class, start of each class)."""
    order = np.argsort(labels, kind="stable")
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    if classes.size < 2 or counts.min() < 2:
        raise ValueError(
            "pairs need at least 2 classes with at least 2 images each; "
            f"got counts {dict(zip(classes.tolist(), counts.tolist(), strict=True))}"
        )
    return classes, order, starts


def _pick(order: np.ndarray, starts: np.ndarray, cls: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return order[starts[cls] + pos]


def sample_pairs(
    labels: np.ndarray, n_pairs: int, rng: Rng
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws exactly balanced same/different pairs of rows.

    Same pairs: a class uniformly, then two different rows of it. Different
    pairs: an ordered pair of distinct classes uniformly, then a row of each.
    The pairs are shuffled together.

    Args:
      labels: (M,) class of each row (e.g. digit of each image).
      n_pairs: number of pairs, even (half same, half different).
      rng: random generator.

    Returns:
      (left, right, t): (n_pairs,) row indices into `labels` and float32 targets,
      +1 where labels[left] == labels[right], -1 otherwise.
    """
    if n_pairs < 2 or n_pairs % 2:
        raise ValueError(f"n_pairs must be even and >= 2 for exact balance, got {n_pairs}")
    classes, order, starts = _class_members(labels)
    counts = np.diff(np.append(starts, labels.size))
    half, k = n_pairs // 2, classes.size

    same_cls = rng.integers(k, size=half)
    i = rng.integers(counts[same_cls])
    j = rng.integers(counts[same_cls] - 1)
    j = j + (j >= i)  # a different row of the same class
    c1 = rng.integers(k, size=half)
    c2 = rng.integers(k - 1, size=half)
    c2 = c2 + (c2 >= c1)  # a different class
    k1, k2 = rng.integers(counts[c1]), rng.integers(counts[c2])
    left = np.concatenate([_pick(order, starts, same_cls, i), _pick(order, starts, c1, k1)])
    right = np.concatenate([_pick(order, starts, same_cls, j), _pick(order, starts, c2, k2)])
    t = np.concatenate([np.ones(half), -np.ones(half)]).astype(np.float32)
    perm = rng.permutation(n_pairs)
    return left[perm], right[perm], t[perm]


def _pair_dataset(images: np.ndarray, labels: np.ndarray, n_pairs: int, rng: Rng) -> Dataset:
    left, right, t = sample_pairs(labels, n_pairs, rng)
    return Dataset(x_left=images[left], x_right=images[right], t=t)


def build_digits_pairs(
    images: np.ndarray,
    digits: np.ndarray,
    *,
    seed: int = 0,
    test_fraction: float = 0.25,
    n_train_pairs: int = 60000,
    n_test_pairs: int = 10000,
) -> Split:
    """Same-or-different pairs from images split into disjoint train/test sets.

    The images are split first (stratified by digit), pixels are standardised
    with the train images' per-pixel mean and std (floored at
    `DIGITS_STD_FLOOR`), and then pairs are drawn within each split only.

    Args:
      images: (M, P) flattened images, e.g. (1797, 64) pixel counts in 0..16.
      digits: (M,) class of each image.
      seed: seeds the image split and the pair draws.
      test_fraction: share of each digit's images held out for test.
      n_train_pairs: pairs drawn from the train images (even).
      n_test_pairs: pairs drawn from the test images (even).

    Returns:
      The `Split`; x_left, x_right: (n_pairs, P). `info["train_images"]` and
      `info["test_images"]` list the image rows used by each split.
    """
    rng = np.random.default_rng(seed)
    digits = np.asarray(digits)
    train_img, test_img = stratified_split(digits, test_fraction, rng)
    mean, std = fit_standardizer(images[train_img], DIGITS_STD_FLOOR)
    scaled = _standardize(images, mean, std)
    train = _pair_dataset(scaled[train_img], digits[train_img], n_train_pairs, rng)
    test = _pair_dataset(scaled[test_img], digits[test_img], n_test_pairs, rng)
    info = {
        "seed": seed,
        "test_fraction": test_fraction,
        "n_images": int(digits.size),
        "n_train_images": int(train_img.size),
        "n_test_images": int(test_img.size),
        "train_images": train_img.tolist(),
        "test_images": test_img.tolist(),
        "positive_class": "same digit",
        **_sizes(train, test),
        "scaling": _scaling_info(mean, std, DIGITS_STD_FLOOR),
    }
    return Split(train=train, test=test, name="digits-pairs", info=info)


def digits_pair_images(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """The image rows (of `load_digits()`) behind each split of a digits-pairs task.

    Returns:
      (train_images, test_images): sorted int64 index arrays, disjoint.
    """
    if "train_images" not in split.info:
        raise ValueError(f"split {split.name!r} is not built from image pairs")
    return np.asarray(split.info["train_images"]), np.asarray(split.info["test_images"])


def digits_train_images(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """The training images of a digits-pairs split, scaled as its pairs are, and their digits.

    Returns:
      (images (M, 64) float32 standardised with the split's train statistics,
       digits (M,) int).
    """
    train_rows, _ = digits_pair_images(split)
    bunch = sk_datasets.load_digits()
    scaling = split.info["scaling"]
    mean, std = np.asarray(scaling["mean"]), np.asarray(scaling["std"])
    return _standardize(bunch.data[train_rows], mean, std), np.asarray(bunch.target[train_rows])


# --------------------------------------------------------------------------
# The other tasks
# --------------------------------------------------------------------------


def _load_digits_pairs(*, seed: int, test_fraction: float, **kwargs: Any) -> Split:
    bunch = sk_datasets.load_digits()
    return build_digits_pairs(
        bunch.data, bunch.target, seed=seed, test_fraction=test_fraction, **kwargs
    )


def _load_breast_cancer(*, seed: int, test_fraction: float) -> Split:
    bunch = sk_datasets.load_breast_cancer()
    malignant = bunch.target == list(bunch.target_names).index("malignant")
    info = {"seed": seed, "test_fraction": test_fraction, "positive_class": "malignant"}
    return split_points(
        "breast-cancer", bunch.data, _pm1(malignant), test_fraction=test_fraction,
        rng=np.random.default_rng(seed), standardize=True, extra_info=info,
    )  # fmt: skip


def _load_moons(*, seed: int, test_fraction: float, n: int = 2000, noise: float = 0.2) -> Split:
    rng = np.random.default_rng(seed)
    points, label = sk_datasets.make_moons(
        n_samples=n, noise=noise, random_state=int(rng.integers(2**31 - 1))
    )
    info = {"seed": seed, "test_fraction": test_fraction, "n": n, "noise": noise,
            "positive_class": "make_moons label 1"}  # fmt: skip
    return split_points(
        "moons", points, _pm1(label == 1), test_fraction=test_fraction, rng=rng,
        standardize=True, extra_info=info,
    )  # fmt: skip


def _load_xor(*, seed: int, test_fraction: float, n: int = 2000, jitter: float = 0.0) -> Split:
    rng = np.random.default_rng(seed)
    clean = rng.uniform(-1.0, 1.0, size=(n, 2))
    t = _pm1(clean[:, 0] * clean[:, 1] > 0)  # labels from the clean points
    points = clean + jitter * rng.standard_normal(clean.shape)
    info = {"seed": seed, "test_fraction": test_fraction, "n": n, "jitter": jitter,
            "positive_class": "both coordinates of the same sign"}  # fmt: skip
    return split_points(
        "xor", points, t, test_fraction=test_fraction, rng=rng, standardize=False,
        extra_info=info,
    )  # fmt: skip


_BUILDERS = {
    "digits-pairs": _load_digits_pairs,
    "breast-cancer": _load_breast_cancer,
    "moons": _load_moons,
    "xor": _load_xor,
}


def task_names() -> tuple[str, ...]:
    """The names `load_task` accepts."""
    return TASKS


def load_task(name: str, *, seed: int = 0, test_fraction: float = 0.25, **kwargs: Any) -> Split:
    """Builds a named task.

    Args:
      name: one of `TASKS`.
      seed: seeds every random choice; equal seeds give equal arrays.
      test_fraction: share held out for test (of images for digits-pairs).
      **kwargs: task options: digits-pairs `n_train_pairs`, `n_test_pairs`;
        moons `n`, `noise`; xor `n`, `jitter`. Unknown options raise TypeError.

    Returns:
      The `Split`: x_left (N, D_L), x_right (N, D_R), t (N,), all float32.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    _check_fraction(test_fraction)
    return _BUILDERS[name](seed=seed, test_fraction=test_fraction, **kwargs)


def describe(split: Split) -> str:
    """One line: name, sizes, dimensions and positive share of each split."""
    tr, te = split.train, split.test
    return (
        f"{split.name}: train {tr.t.size}, test {te.t.size}, "
        f"x_left (N, {tr.x_left.shape[1]}), x_right (N, {tr.x_right.shape[1]}), "
        f"t=+1 {np.mean(tr.t > 0):.1%} train / {np.mean(te.t > 0):.1%} test"
    )


# --------------------------------------------------------------------------
# User files
# --------------------------------------------------------------------------

_ARRAYS = ("x_left", "x_right", "t")
_TEST_ARRAYS = tuple(f"{a}_test" for a in _ARRAYS)


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first entry, or an empty zip
_NPY_MAGIC = b"\x93NUMPY"


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz file; the format is checked before numpy reads it.

    np.load would otherwise take a text file for pickled data and suggest
    allow_pickle; nothing here is ever unpickled.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file not found")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_NPY_MAGIC):
        raise ValueError(f"{path}: not an .npz archive (it holds a single .npy array)")
    if not head.startswith(_ZIP_MAGIC):
        raise ValueError(
            f"{path}: not a readable .npz archive (np.savez writes a zip file; this one "
            f"starts with {head!r})"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz archive ({exc})") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not an .npz archive (it holds a single .npy array)")
    arrays = {}
    with loaded as archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise ValueError(
                        f"{path}: array {key!r} holds Python objects (dtype object), which "
                        "are never unpickled; save numeric arrays"
                    ) from None
                raise ValueError(f"{path}: array {key!r} could not be read ({exc})") from exc
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                raise ValueError(f"{path}: array {key!r} could not be read ({exc})") from exc
    return arrays


def _check_present(path: str, arrays: dict[str, np.ndarray]) -> bool:
    """Checks the required arrays; returns whether explicit test arrays are given."""
    found = ", ".join(arrays) or "nothing"
    for key in _ARRAYS:
        if key not in arrays:
            raise ValueError(f"{path}: missing array {key!r} (found: {found})")
    given = [key for key in _TEST_ARRAYS if key in arrays]
    if given and len(given) < len(_TEST_ARRAYS):
        missing = [key for key in _TEST_ARRAYS if key not in arrays]
        raise ValueError(
            f"{path}: test arrays must come together; found {', '.join(given)} "
            f"but missing {', '.join(missing)}"
        )
    return bool(given)


def _check_array(path: str, key: str, a: np.ndarray, rank: int) -> np.ndarray:
    """Checks rank, size, dtype and finiteness of one array; returns it as float32."""
    shape_name = "2-D (N, D)" if rank == 2 else "1-D (N,)"
    if a.ndim != rank:
        raise ValueError(f"{path}: {key!r} must be {shape_name}, got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{path}: {key!r} must be numeric, got dtype {a.dtype}")
    if a.shape[0] == 0:
        raise ValueError(f"{path}: {key!r} is empty (N = 0): an empty set cannot be used")
    if rank == 2 and a.shape[1] == 0:
        raise ValueError(f"{path}: {key!r} has no features (shape {a.shape})")
    with np.errstate(over="ignore", invalid="ignore"):
        a32 = a.astype(np.float32)
    bad = ~np.isfinite(a32) if rank == 1 else ~np.isfinite(a32).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:_MAX_LISTED].tolist()
        raise ValueError(
            f"{path}: {key!r} has {int((~np.isfinite(a32)).sum())} NaN/inf values "
            f"(as float32), first in rows {rows}"
        )
    return a32


def _convert_labels(path: str, key: str, t: np.ndarray, labels: str) -> np.ndarray:
    """Returns t as float32 in {-1, +1}, from {-1, +1} ("pm1") or {0, 1} ("01")."""
    allowed = {"pm1": (-1.0, 1.0), "01": (0.0, 1.0)}
    if labels not in allowed:
        raise ValueError(f"labels must be 'pm1' or '01', got {labels!r}")
    bad = ~np.isin(t, allowed[labels])
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        hint = ""
        if labels == "pm1" and np.isin(t, (0.0, 1.0)).all():
            hint = "; they are 0/1: pass labels='01' (--labels 01) to read 0 as -1"
        raise ValueError(
            f"{path}: {key!r} has {int(bad.sum())} labels outside "
            f"{{{', '.join(f'{v:g}' for v in allowed[labels])}}} (labels={labels!r}); "
            f"first at index {first}: {t[first].item()!r}{hint}"
        )
    return np.where(t == 1.0, 1.0, -1.0).astype(np.float32)  # 0 -> -1 explicitly for "01"


def _check_dataset(path: str, arrays: dict[str, np.ndarray], suffix: str, labels: str) -> Dataset:
    keys = [f"{a}{suffix}" for a in _ARRAYS]
    x_left = _check_array(path, keys[0], arrays[keys[0]], rank=2)
    x_right = _check_array(path, keys[1], arrays[keys[1]], rank=2)
    t = _check_array(path, keys[2], arrays[keys[2]], rank=1)
    lengths = {key: arrays[key].shape[0] for key in keys}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{path}: mismatched lengths {lengths}")
    return Dataset(x_left=x_left, x_right=x_right, t=_convert_labels(path, keys[2], t, labels))


def _check_widths(path: str, train: Dataset, test: Dataset) -> None:
    for side in ("x_left", "x_right"):
        d_train, d_test = getattr(train, side).shape[1], getattr(test, side).shape[1]
        if d_train != d_test:
            raise ValueError(
                f"{path}: {side!r} has {d_train} features but {side}_test has {d_test}"
            )


def _take(data: Dataset, rows: np.ndarray) -> Dataset:
    return Dataset(x_left=data.x_left[rows], x_right=data.x_right[rows], t=data.t[rows])


def _split_file_rows(
    path: str, data: Dataset, test_fraction: float, seed: int
) -> tuple[Dataset, Dataset]:
    try:
        train_idx, test_idx = stratified_split(data.t, test_fraction, np.random.default_rng(seed))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}; add x_left_test, x_right_test, t_test") from exc
    return _take(data, train_idx), _take(data, test_idx)


def load_npz(
    path: str | os.PathLike[str],
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    labels: str = "pm1",
) -> Split:
    """Reads a user's `.npz` file of two-branch examples, validated, unscaled.

    The file holds `x_left` (N, D_L), `x_right` (N, D_R) and `t` (N,), and
    optionally `x_left_test`, `x_right_test`, `t_test`; without them a
    stratified, seeded `test_fraction` of the rows becomes the test split.

    Args:
      path: the `.npz` file.
      test_fraction: share held out when the file has no test arrays.
      seed: seeds that split.
      labels: "pm1" for targets in {-1, +1}, "01" for {0, 1} (0 becomes -1).

    Returns:
      The `Split`, float32 arrays exactly as in the file (no scaling).

    Raises:
      ValueError: naming the file and the problem: not found, not an .npz,
        a missing array, wrong rank, mismatched lengths, an empty set, NaN/inf
        values, or labels outside the allowed pair.
    """
    path = os.fspath(path)
    _check_fraction(test_fraction)
    arrays = _read_npz(path)
    has_test = _check_present(path, arrays)
    data = _check_dataset(path, arrays, "", labels)
    if has_test:
        train, test = data, _check_dataset(path, arrays, "_test", labels)
        _check_widths(path, train, test)
    else:
        train, test = _split_file_rows(path, data, test_fraction, seed)
    info = {
        "source": path,
        "test_from": "file" if has_test else "split",
        "seed": seed,
        "test_fraction": None if has_test else test_fraction,
        "labels": labels,
        **_sizes(train, test),
        "scaling": "none (user files are used as given)",
    }
    name = os.path.splitext(os.path.basename(path))[0]
    return Split(train=train, test=test, name=name, info=info)
