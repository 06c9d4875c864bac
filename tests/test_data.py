"""Tests for experiments/data.py: task shapes, balance, leakage, scaling, files."""

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits

from experiments import data

# Small sizes keep the file fast; the expected sizes follow from them.
SMALL = {
    "digits-pairs": {"n_train_pairs": 200, "n_test_pairs": 100},
    "breast-cancer": {},
    "moons": {"n": 200},
    "xor": {"n": 200},
}
# (n_train, n_test, d_left, d_right) at test_fraction=0.25 with SMALL.
EXPECTED = {
    "digits-pairs": (200, 100, 64, 64),
    "breast-cancer": (427, 142, 30, 30),
    "moons": (150, 50, 2, 2),
    "xor": (150, 50, 2, 2),
}


@pytest.fixture(scope="module")
def digits():
    bunch = load_digits()
    return bunch.data, bunch.target


@pytest.fixture(scope="module")
def pairs_split():
    return data.load_task("digits-pairs", seed=3, n_train_pairs=2000, n_test_pairs=1000)


def _image_rows(split, images):
    """Index into `images` of every x_left/x_right row, via the recorded scaling."""
    mean, std = (np.asarray(split.info["scaling"][k]) for k in ("mean", "std"))
    scaled = ((images - mean) / std).astype(np.float32)
    row_of = {row.tobytes(): i for i, row in enumerate(scaled)}
    assert len(row_of) == len(images)  # load_digits has no duplicate images

    def lookup(x):
        return np.array([row_of.get(row.tobytes(), -1) for row in x])

    return {
        part: (lookup(getattr(split, part).x_left), lookup(getattr(split, part).x_right))
        for part in ("train", "test")
    }


def _write(tmp_path, name="user.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _good_arrays(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_left": rng.normal(size=(n, 3)),
        "x_right": rng.normal(size=(n, 2)).astype(np.float32),
        "t": np.where(np.arange(n) % 2 == 0, 1, -1),
    }


# --------------------------------------------------------------------------
# Every task
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", data.TASKS, ids=data.TASKS)
def test_shapes_dtypes_and_labels(name):
    split = data.load_task(name, **SMALL[name])
    n_train, n_test, d_left, d_right = EXPECTED[name]
    assert split.name == name
    for part, n in ((split.train, n_train), (split.test, n_test)):
        assert part.x_left.shape == (n, d_left)
        assert part.x_right.shape == (n, d_right)
        assert part.t.shape == (n,)
        for array in part:
            assert array.dtype == np.float32
            assert np.isfinite(array).all()
        assert set(np.unique(part.t).tolist()) == {-1.0, 1.0}
    assert (split.info["n_train"], split.info["n_test"]) == (n_train, n_test)
    json.dumps(split.info)  # JSON-serialisable


def test_digits_pairs_default_sizes():
    split = data.load_task("digits-pairs")
    assert split.train.t.shape == (60000,)
    assert split.test.t.shape == (10000,)
    assert split.info["n_images"] == 1797
    assert (split.info["n_train_images"], split.info["n_test_images"]) == (1347, 450)


@pytest.mark.parametrize("name", data.TASKS, ids=data.TASKS)
def test_same_seed_same_arrays_other_seed_other_arrays(name):
    first = data.load_task(name, seed=5, **SMALL[name])
    again = data.load_task(name, seed=5, **SMALL[name])
    other = data.load_task(name, seed=6, **SMALL[name])
    for a, b in zip(first.train + first.test, again.train + again.test, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.train.x_left, other.train.x_left)
    assert not np.array_equal(first.test.x_left, other.test.x_left)


@pytest.mark.parametrize("name", ["moons", "xor"], ids=["moons", "xor"])
def test_plane_tasks_put_the_point_on_both_branches(name):
    split = data.load_task(name, **SMALL[name])
    np.testing.assert_array_equal(split.train.x_left, split.train.x_right)
    assert split.train.x_left.shape[1] == 2


def test_xor_labels_are_the_sign_of_the_product():
    split = data.load_task("xor", n=300)
    x, t = split.train.x_left, split.train.t
    np.testing.assert_array_equal(t, np.where(x[:, 0] * x[:, 1] > 0, 1.0, -1.0))
    assert np.abs(x).max() <= 1.0


@pytest.mark.parametrize("name", ["breast-cancer", "moons"], ids=["breast-cancer", "moons"])
def test_table_tasks_standardised_on_train_only(name):
    split = data.load_task(name, **SMALL[name])
    train, test = split.train.x_left, split.test.x_left
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-4)
    # Fitted on train only, the test split is not exactly centred.
    assert np.abs(test.mean(axis=0)).max() > 1e-3


def test_split_points_scaling_ignores_test_rows():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(80, 3)) * 5 + 2
    t = np.where(np.arange(80) % 2 == 0, 1.0, -1.0).astype(np.float32)
    _, test_idx = data.stratified_split(t, 0.25, np.random.default_rng(1))
    moved = points.copy()
    moved[test_idx] += 100.0

    def build(p):
        rng = np.random.default_rng(1)
        return data.split_points(
            "toy", p, t, test_fraction=0.25, rng=rng, standardize=True, extra_info={}
        )

    base, shifted = build(points), build(moved)
    np.testing.assert_array_equal(base.train.x_left, shifted.train.x_left)
    assert base.info["scaling"] == shifted.info["scaling"]
    assert not np.array_equal(base.test.x_left, shifted.test.x_left)


def test_breast_cancer_positive_class_is_malignant():
    split = data.load_task("breast-cancer")
    assert split.info["positive_class"] == "malignant"
    n_pos = int((split.train.t > 0).sum() + (split.test.t > 0).sum())
    assert n_pos == 212  # malignant rows in the bundled set (357 benign)


def test_unknown_task_and_option_are_rejected():
    assert data.task_names() == data.TASKS
    with pytest.raises(ValueError, match="unknown task 'mnist'"):
        data.load_task("mnist")
    with pytest.raises(TypeError):
        data.load_task("xor", n_pairs=4)
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_task("xor", test_fraction=1.0)


def test_describe_is_one_line_with_sizes():
    line = data.describe(data.load_task("moons", n=200))
    assert "\n" not in line
    assert line.startswith("moons: train 150, test 50")


# --------------------------------------------------------------------------
# digits-pairs: balance, disjointness, pairing, scaling
# --------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["train", "test"], ids=["train", "test"])
def test_digits_pairs_exactly_balanced(pairs_split, part):
    t = getattr(pairs_split, part).t
    assert (t > 0).sum() == (t < 0).sum() == t.size // 2


def test_digits_image_sets_disjoint_and_stratified(pairs_split, digits):
    _, labels = digits
    train_img, test_img = data.digits_pair_images(pairs_split)
    assert np.intersect1d(train_img, test_img).size == 0
    np.testing.assert_array_equal(np.union1d(train_img, test_img), np.arange(1797))
    per_digit = np.bincount(labels[test_img], minlength=10)
    np.testing.assert_array_equal(per_digit, np.round(0.25 * np.bincount(labels)))


def test_digits_pairs_drawn_within_their_split(pairs_split, digits):
    images, _ = digits
    rows = _image_rows(pairs_split, images)
    train_img, test_img = data.digits_pair_images(pairs_split)
    for part, allowed in (("train", train_img), ("test", test_img)):
        for side in rows[part]:
            assert (side >= 0).all()  # every row is a scaled image
            assert np.isin(side, allowed).all()


def test_digits_pair_targets_and_distinct_same_images(pairs_split, digits):
    images, labels = digits
    rows = _image_rows(pairs_split, images)
    for part in ("train", "test"):
        left, right = rows[part]
        t = getattr(pairs_split, part).t
        np.testing.assert_array_equal(t, np.where(labels[left] == labels[right], 1.0, -1.0))
        same = t > 0
        assert (left[same] != right[same]).all()


def test_digits_pairs_use_many_images(pairs_split):
    train_img, _ = data.digits_pair_images(pairs_split)
    x = pairs_split.train.x_left
    assert np.unique(x, axis=0).shape[0] > 0.6 * train_img.size


def test_sample_pairs_same_rows_differ_even_with_two_per_class():
    labels = np.array([0, 0, 1, 1, 2, 2])
    left, right, t = data.sample_pairs(labels, 400, np.random.default_rng(0))
    assert (left[t > 0] != right[t > 0]).all()
    np.testing.assert_array_equal(labels[left] == labels[right], t > 0)
    assert (t > 0).sum() == 200


@pytest.mark.parametrize(
    ("labels", "n_pairs", "match"),
    [
        (np.array([0, 0, 1, 1]), 5, "even"),
        (np.array([0, 0, 1]), 4, "at least 2 images"),
        (np.array([0, 0, 0]), 4, "at least 2 classes"),
    ],
    ids=["odd-n", "class-with-one-image", "one-class"],
)
def test_sample_pairs_rejects_impossible_requests(labels, n_pairs, match):
    with pytest.raises(ValueError, match=match):
        data.sample_pairs(labels, n_pairs, np.random.default_rng(0))


def test_digits_scaling_is_train_image_statistics(pairs_split, digits):
    images, _ = digits
    train_img, _ = data.digits_pair_images(pairs_split)
    scaling = pairs_split.info["scaling"]
    assert scaling["fit_on"] == "train"
    mean = images[train_img].mean(axis=0)
    std = np.maximum(images[train_img].std(axis=0), scaling["std_floor"])
    np.testing.assert_allclose(scaling["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(scaling["std"], std, rtol=1e-12)
    assert not np.allclose(scaling["mean"], images.mean(axis=0), rtol=1e-6)
    assert min(scaling["std"]) >= 1.0  # constant border pixels are floored


def test_digits_train_unchanged_when_only_test_images_change(digits):
    images, labels = digits
    sizes = {"n_train_pairs": 300, "n_test_pairs": 100, "seed": 2}
    base = data.build_digits_pairs(images, labels, **sizes)
    _, test_img = data.digits_pair_images(base)
    moved = images.copy()
    moved[test_img] = 16.0 - moved[test_img]
    other = data.build_digits_pairs(moved, labels, **sizes)
    for a, b in zip(base.train, other.train, strict=True):
        np.testing.assert_array_equal(a, b)
    assert base.info["scaling"] == other.info["scaling"]
    assert not np.array_equal(base.test.x_left, other.test.x_left)


def test_digits_pair_images_rejects_other_tasks():
    with pytest.raises(ValueError, match="not built from image pairs"):
        data.digits_pair_images(data.load_task("xor", n=40))


# --------------------------------------------------------------------------
# load_npz
# --------------------------------------------------------------------------


def test_load_npz_round_trip_with_split(tmp_path):
    arrays = _good_arrays(n=40)
    split = data.load_npz(_write(tmp_path, **arrays), seed=1)
    assert (split.train.t.size, split.test.t.size) == (30, 10)
    assert split.info["test_from"] == "split"
    assert split.info["scaling"].startswith("none")
    for key in ("x_left", "x_right", "t"):
        both = np.concatenate([getattr(split.train, key), getattr(split.test, key)])
        assert both.dtype == np.float32
        want = np.asarray(arrays[key], dtype=np.float32)
        np.testing.assert_array_equal(np.sort(both, axis=0), np.sort(want, axis=0))
    # Rows stay together: each train row is one of the file's rows, unscaled.
    file_rows = {row.tobytes() for row in arrays["x_left"].astype(np.float32)}
    assert all(row.tobytes() in file_rows for row in split.train.x_left)


def test_load_npz_split_is_seeded(tmp_path):
    path = _write(tmp_path, **_good_arrays(n=40))
    a, b, c = (data.load_npz(path, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.test.x_left, b.test.x_left)
    assert not np.array_equal(a.test.x_left, c.test.x_left)


def test_load_npz_round_trip_with_test_arrays(tmp_path):
    arrays = _good_arrays(n=40)
    test = {f"{k}_test": v for k, v in _good_arrays(n=7, seed=9).items()}
    split = data.load_npz(_write(tmp_path, **arrays, **test))
    assert split.info["test_from"] == "file"
    assert split.name == "user"
    for key in ("x_left", "x_right", "t"):
        np.testing.assert_array_equal(getattr(split.train, key), arrays[key].astype(np.float32))
        want = test[f"{key}_test"].astype(np.float32)
        np.testing.assert_array_equal(getattr(split.test, key), want)


def test_load_npz_labels_01_converts_zero_to_minus_one(tmp_path):
    arrays = {**_good_arrays(n=8), "t": np.array([0, 1, 1, 0, 1, 0, 0, 1])}
    test = {"x_left_test": np.ones((2, 3)), "x_right_test": np.ones((2, 2)),
            "t_test": np.array([1.0, 0.0])}  # fmt: skip
    split = data.load_npz(_write(tmp_path, **arrays, **test), labels="01")
    np.testing.assert_array_equal(split.train.t, [-1, 1, 1, -1, 1, -1, -1, 1])
    np.testing.assert_array_equal(split.test.t, [1, -1])
    assert split.train.t.dtype == np.float32
    with pytest.raises(ValueError, match=r"labels outside \{-1, 1\}"):
        data.load_npz(tmp_path / "user.npz")  # the same file is wrong as "pm1"


def _bad(**changes):
    arrays = {**_good_arrays(n=12), **changes}
    return {k: v for k, v in arrays.items() if v is not None}


def _nan_rows(shape, rows):
    x = np.zeros(shape)
    x[rows, 0] = np.nan
    return x


BAD_FILES = [
    ("missing-x_right", _bad(x_right=None), r"missing array 'x_right' \(found: x_left, t\)"),
    ("missing-t", _bad(t=None), r"missing array 't'"),
    ("partial-test", _bad(x_left_test=np.ones((2, 3))), "missing x_right_test, t_test"),
    ("x-rank-1", _bad(x_left=np.ones(12)), r"'x_left' must be 2-D \(N, D\), got shape \(12,\)"),
    ("x-rank-3", _bad(x_right=np.ones((12, 2, 1))), "'x_right' must be 2-D"),
    ("t-rank-2", _bad(t=np.ones((12, 1))), r"'t' must be 1-D"),
    ("lengths", _bad(x_right=np.ones((11, 2))), r"mismatched lengths .*'x_right': 11"),
    ("empty", _bad(x_left=np.ones((0, 3)), x_right=np.ones((0, 2)), t=np.ones(0)), "empty"),
    ("no-features", _bad(x_left=np.ones((12, 0))), "no features"),
    ("nan-x", _bad(x_right=_nan_rows((12, 2), [3, 7])),
     r"'x_right' has 2 NaN/inf values .*rows \[3, 7\]"),
    ("inf-t", _bad(t=np.array([1.0] * 5 + [np.inf] + [-1.0] * 6)),
     r"'t' has 1 NaN/inf values .*rows \[5\]"),
    ("labels-0-as-pm1", _bad(t=np.array([1, -1, 1, -1, 0, 0, 1, -1, 1, -1, 1, -1])),
     r"'t' has 2 labels outside \{-1, 1\} .*first at index 4"),
    ("labels-2", _bad(t=np.array([1, -1] * 5 + [2, -1])), r"1 labels outside .*index 10"),
    ("strings", _bad(x_left=np.full((12, 3), "a")), "'x_left' must be numeric"),
    ("test-width", _bad(x_left_test=np.ones((2, 4)), x_right_test=np.ones((2, 2)),
                        t_test=np.ones(2)), "'x_left' has 3 features but x_left_test has 4"),
    ("nan-test", _bad(x_left_test=_nan_rows((2, 3), [1]), x_right_test=np.ones((2, 2)),
                      t_test=np.ones(2)), r"'x_left_test' has 1 NaN/inf .*rows \[1\]"),
    ("too-few-to-split", _bad(x_left=np.ones((1, 3)), x_right=np.ones((1, 2)), t=np.ones(1)),
     "empty split"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("arrays", "match"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES]
)
def test_load_npz_rejects_bad_files(tmp_path, arrays, match):
    path = _write(tmp_path, **arrays)
    with pytest.raises(ValueError, match=match) as raised:
        data.load_npz(path)
    assert str(raised.value).startswith(str(path))


def test_load_npz_rejects_labels_2_under_01(tmp_path):
    path = _write(tmp_path, **_bad(t=np.array([0, 1] * 5 + [2, 1])))
    with pytest.raises(ValueError, match=r"1 labels outside \{0, 1\} .*index 10"):
        data.load_npz(path, labels="01")
    with pytest.raises(ValueError, match="labels must be 'pm1' or '01'"):
        data.load_npz(path, labels="bool")


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "file not found"), (b"x_left,t\n1,2\n", "not a readable .npz"),
     ("npy", r"not an \.npz archive")],
    ids=["not-found", "text-file", "npy-file"],
)  # fmt: skip
def test_load_npz_rejects_non_archives(tmp_path, content, match):
    path = tmp_path / "data.npz"
    if content == "npy":
        with open(path, "wb") as f:
            np.save(f, np.ones(3))
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        data.load_npz(path)


def test_digits_train_images_are_the_images_behind_the_train_pairs():
    split = data.load_task("digits-pairs", n_train_pairs=200, n_test_pairs=40)
    images, digits = data.digits_train_images(split)
    train_rows, _ = data.digits_pair_images(split)
    assert images.shape == (len(train_rows), 64) and images.dtype == np.float32
    assert digits.shape == (len(train_rows),)
    rows = {row.tobytes(): d for row, d in zip(images, digits, strict=True)}
    x = split.train
    for left, right, t in zip(x.x_left, x.x_right, x.t, strict=True):
        assert (rows[left.tobytes()] == rows[right.tobytes()]) == (t == 1)
