"""Tests for experiments/checkpoint.py: bitwise round trips, atomicity, integrity."""

import functools
import hashlib
import json
import os
import pathlib
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy

from experiments import checkpoint as ckpt
from experiments.checkpoint import CheckpointError
from experiments.checkpoint import latest_checkpoint
from experiments.checkpoint import restore_checkpoint
from experiments.checkpoint import save_checkpoint


class TinyParams(NamedTuple):
    W: jax.Array  # (3, 4)
    b: jax.Array  # (3,)
    w: jax.Array  # (3,)
    c: jax.Array  # ()


OPTIMIZERS = {
    "adam": lambda: optax.adam(1e-2),
    "clip-adamw-schedule": lambda: optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(optax.linear_schedule(1e-2, 1e-3, transition_steps=10)),
    ),
    "sgd-momentum": lambda: optax.sgd(1e-2, momentum=0.9),
}


def _init_params(seed: int) -> TinyParams:
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    return TinyParams(
        W=jax.random.normal(k1, (3, 4), jnp.float32),
        b=jnp.zeros((3,), jnp.float32),
        w=jax.random.normal(k2, (3,), jnp.float32),
        c=jax.random.normal(k3, (), jnp.float32),
    )


def _loss(params: TinyParams, x: jax.Array) -> jax.Array:
    z = jnp.tanh(x @ params.W.T + params.b)  # (N, 3)
    return jnp.mean((z @ params.w + params.c) ** 2)


@functools.cache  # jax arrays are immutable; training once per optimizer keeps tests fast
def _trained(opt_name: str, steps: int = 3):
    return _train(OPTIMIZERS[opt_name](), steps)


def _train(optimizer: optax.GradientTransformation, steps: int = 3):
    params = _init_params(0)
    opt_state = optimizer.init(params)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 4), jnp.float32)
    for _ in range(steps):
        grads = jax.grad(_loss)(params, x)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return params, opt_state


def _templates(optimizer: optax.GradientTransformation):
    params = _init_params(42)  # other values than any saved state
    return params, optimizer.init(params)


def _bitwise_mismatch(a, b) -> str | None:
    """None when the pytrees are bitwise equal (same structure, dtypes, shapes, bytes)."""
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return "structures differ"
    for (path, x), y in zip(
        jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b), strict=True
    ):
        if jax.dtypes.issubdtype(jnp.result_type(x), jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        if (x.dtype, x.shape, x.tobytes()) != (y.dtype, y.shape, y.tobytes()):
            return f"{jax.tree_util.keystr(path)}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
    return None


def _save_trained(run_dir, epoch=1, opt_name="adam", **kwargs):
    params, opt_state = _trained(opt_name)
    kwargs.setdefault("key", jax.random.PRNGKey(epoch))
    path = save_checkpoint(run_dir, params=params, opt_state=opt_state, epoch=epoch, **kwargs)
    return path, params, opt_state


def _restore_adam(path):
    params_t, opt_t = _templates(OPTIMIZERS["adam"]())
    return restore_checkpoint(path, params_template=params_t, opt_state_template=opt_t)


# ----------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------


def test_bitwise_check_rejects_one_ulp():
    a = TinyParams(*(jnp.ones(s, jnp.float32) for s in [(3, 4), (3,), (3,), ()]))
    b = a._replace(c=jnp.nextafter(a.c, jnp.float32(2.0)))
    assert _bitwise_mismatch(a, a) is None
    assert "c" in _bitwise_mismatch(a, b)
    assert _bitwise_mismatch(a, a._replace(c=a.c.astype(jnp.float16))) is not None


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_round_trip_is_bitwise_and_training_resumes_identically(tmp_path, opt_name):
    optimizer = OPTIMIZERS[opt_name]()
    params, opt_state = _train(optimizer)
    save_checkpoint(
        tmp_path,
        params=params,
        opt_state=opt_state,
        epoch=3,
        key=jax.random.PRNGKey(0),
        extra={"loss": 0.25},
    )
    params_t, opt_t = _templates(optimizer)
    assert _bitwise_mismatch(params_t, params) is not None  # the check can fail

    restored = restore_checkpoint(tmp_path, params_template=params_t, opt_state_template=opt_t)

    assert _bitwise_mismatch(restored.params, params) is None
    assert _bitwise_mismatch(restored.opt_state, opt_state) is None
    assert isinstance(restored.params, TinyParams)
    assert restored.epoch == 3
    assert restored.extra == {"loss": 0.25}
    grads = jax.grad(_loss)(params, jnp.ones((2, 4), jnp.float32))
    expected = optimizer.update(grads, opt_state, params)
    resumed = optimizer.update(grads, restored.opt_state, restored.params)
    assert _bitwise_mismatch(resumed, expected) is None


@pytest.mark.parametrize("use_template", [False, True], ids=["no-template", "key-template"])
@pytest.mark.parametrize(
    "make_key",
    [
        lambda: jax.random.split(jax.random.PRNGKey(7))[1],
        lambda: jax.random.split(jax.random.key(7))[1],
    ],
    ids=["raw", "typed"],
)
def test_key_round_trip_gives_identical_draws(tmp_path, make_key, use_template):
    key = make_key()
    path, _, _ = _save_trained(tmp_path, key=key)
    params_t, opt_t = _templates(OPTIMIZERS["adam"]())
    template = make_key() if use_template else None

    restored = restore_checkpoint(
        path, params_template=params_t, opt_state_template=opt_t, key_template=template
    )

    assert restored.key.dtype == key.dtype and restored.key.shape == key.shape
    draws = jax.random.normal(restored.key, (5,))
    assert np.asarray(draws).tobytes() == np.asarray(jax.random.normal(key, (5,))).tobytes()
    other = jax.random.fold_in(key, 1)
    assert not np.array_equal(draws, jax.random.normal(other, (5,)))


def test_key_kind_mismatch_with_template_raises(tmp_path):
    path, _, _ = _save_trained(tmp_path, key=jax.random.key(0))
    params_t, opt_t = _templates(OPTIMIZERS["adam"]())
    with pytest.raises(CheckpointError, match=r"leaf 'key'.*uint32.*key:threefry2x32"):
        restore_checkpoint(
            path,
            params_template=params_t,
            opt_state_template=opt_t,
            key_template=jax.random.PRNGKey(0),
        )


def test_scalar_and_unusual_leaves_round_trip(tmp_path):
    params = {"bf16": jnp.arange(5, dtype=jnp.bfloat16) / 3, "empty": jnp.zeros((0, 3))}
    opt_state = {
        "count": 3,
        "scale": 0.5,
        "flag": True,
        "step": jnp.array(7, jnp.int32),
        "np64": np.array([1 / 3]),
        "rng": jax.random.key(5),
    }
    save_checkpoint(tmp_path, params=params, opt_state=opt_state, epoch=0, key=None)
    opt_t = {
        "count": 0,
        "scale": 0.0,
        "flag": False,
        "step": jnp.array(0, jnp.int32),
        "np64": np.zeros(1),
        "rng": jax.random.key(0),
    }
    params_t = {"bf16": jnp.zeros(5, jnp.bfloat16), "empty": jnp.zeros((0, 3))}

    restored = restore_checkpoint(tmp_path, params_template=params_t, opt_state_template=opt_t)

    assert _bitwise_mismatch(restored.params, params) is None
    got = restored.opt_state
    assert (got["count"].dtype, int(got["count"])) == (jnp.asarray(3).dtype, 3)
    assert (got["scale"].dtype, float(got["scale"])) == (jnp.asarray(0.5).dtype, 0.5)
    assert got["flag"].dtype == jnp.bool_ and bool(got["flag"])
    assert isinstance(got["np64"], np.ndarray) and got["np64"].dtype == np.float64
    assert got["np64"].tobytes() == opt_state["np64"].tobytes()
    assert _bitwise_mismatch(got["rng"], opt_state["rng"]) is None
    assert restored.key is None


def test_files_hold_named_leaves_and_meta(tmp_path):
    path, params, _ = _save_trained(tmp_path, epoch=12, extra={"lr": np.float32(0.5)})
    assert path == tmp_path / "checkpoints" / "ckpt_000012"
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "state.safetensors"]
    meta = json.loads((path / "meta.json").read_text())
    tensors = safetensors.numpy.load_file(path / "state.safetensors")
    names = [leaf["name"] for leaf in meta["leaves"]]

    assert meta["format_version"] == ckpt.FORMAT_VERSION and meta["epoch"] == 12
    assert names[:4] == ["params.W", "params.b", "params.w", "params.c"]
    assert {"opt_state.0.count", "opt_state.0.mu.W", "opt_state.0.nu.c"} <= set(names)
    assert names[-1] == "key"
    assert meta["key"] == {"name": "key", "typed": False, "impl": "threefry2x32"}
    assert meta["extra"] == {"lr": 0.5}
    assert sorted(tensors) == sorted(names)
    assert tensors["params.W"].tobytes() == np.asarray(params.W).tobytes()
    assert meta["leaves"][0] == {"name": "params.W", "shape": [3, 4], "dtype": "float32"}
    data = (path / "state.safetensors").read_bytes()
    assert meta["state"] == {
        "file": "state.safetensors",
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def test_unserialisable_extra_raises_before_writing(tmp_path):
    with pytest.raises(TypeError, match="not JSON serialisable"):
        _save_trained(tmp_path, extra={"bad": object()})
    assert not (tmp_path / "checkpoints").exists()


def test_overwriting_an_epoch_replaces_it(tmp_path):
    _save_trained(tmp_path, epoch=2)
    params, opt_state = _trained("adam", steps=5)
    save_checkpoint(
        tmp_path, params=params, opt_state=opt_state, epoch=2, key=jax.random.PRNGKey(0)
    )
    assert _bitwise_mismatch(_restore_adam(tmp_path).params, params) is None
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["ckpt_000002"]


# ----------------------------------------------------------------------------
# Directory layout: latest, pruning, crashes
# ----------------------------------------------------------------------------


def test_latest_checkpoint_picks_newest_complete(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for epoch in (1, 5, 3):
        _save_trained(tmp_path, epoch=epoch, keep=10)
    root = tmp_path / "checkpoints"
    leftover = root / ".tmp-ckpt_000009-12345"  # a writer that crashed
    leftover.mkdir()
    (leftover / "state.safetensors").write_bytes(b"half")
    (root / "ckpt_000008").mkdir()  # no meta.json: not complete

    assert latest_checkpoint(tmp_path) == root / "ckpt_000005"
    assert latest_checkpoint(str(tmp_path)) == root / "ckpt_000005"
    assert _restore_adam(tmp_path).epoch == 5


@pytest.mark.parametrize(("keep", "kept"), [(2, [4, 5]), (3, [3, 4, 5]), (1, [5])])
def test_keep_prunes_oldest(tmp_path, keep, kept):
    for epoch in range(6):
        _save_trained(tmp_path, epoch=epoch, keep=keep)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [f"ckpt_{e:06d}" for e in kept]


def test_default_keep_is_three(tmp_path):
    for epoch in range(5):
        _save_trained(tmp_path, epoch=epoch)
    assert len(list((tmp_path / "checkpoints").iterdir())) == 3


@pytest.mark.parametrize("keep", [0, -1])
def test_bad_keep_raises(tmp_path, keep):
    with pytest.raises(ValueError, match="keep"):
        _save_trained(tmp_path, keep=keep)


def test_crash_during_rename_keeps_previous(tmp_path, monkeypatch):
    _, params1, opt_state1 = _save_trained(tmp_path, epoch=1)
    params2, opt_state2 = _trained("adam", steps=5)

    def crash(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(
            tmp_path, params=params2, opt_state=opt_state2, epoch=2, key=jax.random.PRNGKey(2)
        )
    monkeypatch.undo()

    root = tmp_path / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["ckpt_000001"]
    assert latest_checkpoint(tmp_path) == root / "ckpt_000001"
    restored = _restore_adam(tmp_path)
    assert _bitwise_mismatch(restored.params, params1) is None
    assert _bitwise_mismatch(restored.opt_state, opt_state1) is None


def test_crash_while_overwriting_an_epoch_keeps_previous(tmp_path, monkeypatch):
    _, params1, _ = _save_trained(tmp_path, epoch=1)
    params2, opt_state2 = _trained("adam", steps=5)
    real_replace, calls = os.replace, []

    def replace_failing_second_call(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new directory into place, after the old one moved aside
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_failing_second_call)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(
            tmp_path, params=params2, opt_state=opt_state2, epoch=1, key=jax.random.PRNGKey(2)
        )
    monkeypatch.undo()

    assert len(calls) == 3  # moved aside, failed, moved back
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["ckpt_000001"]
    assert _bitwise_mismatch(_restore_adam(tmp_path).params, params1) is None


# ----------------------------------------------------------------------------
# Integrity: every damage is a one-line CheckpointError naming the file
# ----------------------------------------------------------------------------


def _truncate(path):
    state = path / "state.safetensors"
    state.write_bytes(state.read_bytes()[:-10])


def _flip_last_byte(path):
    state = path / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[-1] ^= 0x01
    state.write_bytes(bytes(data))


def _edit_meta(**changes):
    def edit(path):
        meta = json.loads((path / "meta.json").read_text())
        meta.update(changes)
        (path / "meta.json").write_text(json.dumps(meta))

    return edit


DAMAGES = {
    "truncated": (_truncate, r"state\.safetensors: size mismatch"),
    "flipped-byte": (_flip_last_byte, r"state\.safetensors: sha256 mismatch"),
    "deleted-meta": (lambda p: (p / "meta.json").unlink(), r"meta\.json: meta\.json is missing"),
    "deleted-state": (
        lambda p: (p / "state.safetensors").unlink(),
        r"state\.safetensors: state file is missing",
    ),
    "malformed-json": (
        lambda p: (p / "meta.json").write_text('{"format_version": 1,'),
        r"meta\.json: malformed JSON",
    ),
    "meta-not-object": (
        lambda p: (p / "meta.json").write_text("[1, 2]"),
        r"meta\.json: malformed checkpoint metadata: expected a JSON object",
    ),
    "unknown-version": (_edit_meta(format_version=99), r"meta\.json: unknown format version 99"),
    "meta-missing-leaves": (
        _edit_meta(leaves="oops"),
        r"meta\.json: malformed checkpoint metadata: 'leaves'",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damage_raises_checkpoint_error(tmp_path, damage):
    path, _, _ = _save_trained(tmp_path)
    _restore_adam(path)  # intact, it loads
    corrupt, message = DAMAGES[damage]
    corrupt(path)
    with pytest.raises(CheckpointError, match=message) as info:
        _restore_adam(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_invalid_safetensors_with_matching_hash_is_wrapped(tmp_path):
    path, _, _ = _save_trained(tmp_path)
    garbage = b"\xff" * 64
    (path / "state.safetensors").write_bytes(garbage)
    _edit_meta(
        state={
            "file": "state.safetensors",
            "bytes": len(garbage),
            "sha256": hashlib.sha256(garbage).hexdigest(),
        }
    )(path)
    with pytest.raises(CheckpointError, match=r"state\.safetensors: not a valid safetensors"):
        _restore_adam(path)


def test_deleted_meta_hides_checkpoint_from_run_dir(tmp_path):
    path, _, _ = _save_trained(tmp_path)
    (path / "meta.json").unlink()
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointError, match=re.escape(f"no checkpoint in {tmp_path}")):
        _restore_adam(tmp_path)


@pytest.mark.parametrize("run_dir", ["empty", "missing"])
def test_no_checkpoint_raises(tmp_path, run_dir):
    target = tmp_path / run_dir
    if run_dir == "empty":
        (target / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=f"^{re.escape(f'no checkpoint in {target}')}$"):
        _restore_adam(target)


def test_wrong_template_shape_raises(tmp_path):
    path, _, _ = _save_trained(tmp_path)
    params_t, opt_t = _templates(OPTIMIZERS["adam"]())
    params_t = params_t._replace(W=jnp.zeros((4, 4), jnp.float32))
    with pytest.raises(
        CheckpointError,
        match=(
            r"leaf 'params\.W': expected shape \(4, 4\) dtype float32 \(template\), "
            r"found shape \(3, 4\) dtype float32 \(checkpoint\)"
        ),
    ):
        restore_checkpoint(path, params_template=params_t, opt_state_template=opt_t)


def test_wrong_template_dtype_raises(tmp_path):
    path, _, _ = _save_trained(tmp_path)
    params_t, opt_t = _templates(OPTIMIZERS["adam"]())
    params_t = params_t._replace(c=jnp.zeros((), jnp.float16))
    with pytest.raises(CheckpointError, match=r"leaf 'params\.c'.*float16.*float32"):
        restore_checkpoint(path, params_template=params_t, opt_state_template=opt_t)


def test_wrong_optimizer_template_raises(tmp_path):
    path, _, _ = _save_trained(tmp_path, opt_name="adam")
    params_t, opt_t = _templates(OPTIMIZERS["sgd-momentum"]())
    with pytest.raises(CheckpointError, match=r"template has 'opt_state\.0\.trace\.W'"):
        restore_checkpoint(path, params_template=params_t, opt_state_template=opt_t)


def test_fewer_template_leaves_raises(tmp_path):
    path, _, _ = _save_trained(tmp_path, opt_name="adam")
    params_t, _ = _templates(OPTIMIZERS["adam"]())
    with pytest.raises(CheckpointError, match=r"first unmatched: 'opt_state\.0\.count'"):
        restore_checkpoint(path, params_template=params_t, opt_state_template=())


def test_module_source_has_no_pickle():
    source = pathlib.Path(ckpt.__file__).read_text()
    assert "pickle" not in source.lower()
    assert "allow_pickle" not in source
