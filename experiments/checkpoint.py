"""Atomic, verified checkpoints of an Optax training state: arrays and JSON only.

A run directory holds its checkpoints in ``RUN_DIR/checkpoints/``, one
directory per epoch::

    checkpoints/
      ckpt_000012/
        state.safetensors   every array leaf, named by its path
        meta.json           format version, epoch, leaf list, key impl, extra,
                            sha256 and byte size of state.safetensors

Leaves are named by ``jax.tree_util.keystr(path, simple=True, separator=".")``
under a prefix: ``params.W1_L``, ``opt_state.0.mu.W1_L``, ``key``. Typed PRNG
keys are stored as their ``key_data`` with the impl name in meta.json; dtypes
the safetensors numpy loader cannot read (bfloat16, float8) are stored as
unsigned-integer bit views and viewed back on restore, so every round trip is
bitwise.

Restoring needs templates of the right structure (``init_params(...)`` and
``optimizer.init(params)``); the file only supplies leaf values, so no code is
ever deserialised.

Atomicity: a checkpoint is written into ``checkpoints/.tmp-ckpt_<epoch>-<pid>``,
files and directory are fsynced, and the directory is renamed into place with
``os.replace``. A crash leaves either the previous complete checkpoint or the
new complete one under the final names; leftover temporary directories are
ignored by ``latest_checkpoint``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

PyTree = Any
PRNGKey = jax.Array
PathLike = str | os.PathLike

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.safetensors"
META_FILE = "meta.json"
KEY_LEAF = "key"

_CKPT_NAME = re.compile(r"ckpt_(\d+)")
_KEY_DTYPE_PREFIX = "key:"
# The dtypes safetensors.numpy can load; others are stored as bit views.
_NATIVE_DTYPES = frozenset(
    np.dtype(d)
    for d in (
        np.float64,
        np.float32,
        np.float16,
        np.complex64,
        np.bool_,
        np.int64,
        np.int32,
        np.int16,
        np.int8,
        np.uint64,
        np.uint32,
        np.uint16,
        np.uint8,
    )
)
_BIT_VIEW_DTYPES = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.uint16),
    4: np.dtype(np.uint32),
    8: np.dtype(np.uint64),
}


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or does not match its template."""


class Restored(NamedTuple):
    params: PyTree  # the params template's structure, filled from the file
    opt_state: PyTree  # the opt_state template's structure, filled from the file
    epoch: int  # the epoch the checkpoint was saved at
    key: PRNGKey | None  # raw uint32 or typed, as saved (or as key_template says)
    extra: dict  # the JSON `extra` dict given to save_checkpoint


# ----------------------------------------------------------------------------
# Leaves: names, descriptions, encoding
# ----------------------------------------------------------------------------


def _named_leaves(prefix: str, tree: PyTree) -> list[tuple[str, Any]]:
    """Leaves of `tree` in flatten order, named `prefix.<keystr path>`."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    named = []
    for path, leaf in flat:
        suffix = jax.tree_util.keystr(path, simple=True, separator=".")
        named.append((f"{prefix}.{suffix}" if suffix else prefix, leaf))
    return named


def _is_python_scalar(leaf: Any) -> bool:
    return isinstance(leaf, (bool, int, float, complex))


def _is_typed_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _describe(leaf: Any) -> tuple[tuple[int, ...], str]:
    """(shape, dtype name) as stored; typed keys are `key:<impl>` over key_data."""
    if _is_python_scalar(leaf):
        leaf = jnp.asarray(leaf)  # the dtype jax gives it (int32/float32 without x64)
    if _is_typed_key(leaf):
        data_shape = tuple(jax.random.key_data(leaf).shape)
        return data_shape, _KEY_DTYPE_PREFIX + str(jax.random.key_impl(leaf))
    return tuple(int(n) for n in leaf.shape), np.dtype(leaf.dtype).name


def _storage_dtype(dtype_name: str) -> np.dtype:
    """The numpy dtype a leaf of logical dtype `dtype_name` has in the file."""
    if dtype_name.startswith(_KEY_DTYPE_PREFIX):
        return np.dtype(np.uint32)
    dtype = np.dtype(jnp.dtype(dtype_name))
    if dtype in _NATIVE_DTYPES:
        return dtype
    if dtype.itemsize not in _BIT_VIEW_DTYPES:
        raise CheckpointError(f"dtype {dtype_name} cannot be stored in safetensors")
    return _BIT_VIEW_DTYPES[dtype.itemsize]


def _encode(name: str, leaf: Any) -> tuple[np.ndarray, dict]:
    """The array written to the file for `leaf`, and its meta.json entry."""
    if not (_is_python_scalar(leaf) or (hasattr(leaf, "shape") and hasattr(leaf, "dtype"))):
        raise TypeError(f"leaf {name!r} is a {type(leaf).__name__}, not an array or scalar")
    shape, dtype_name = _describe(leaf)
    if _is_typed_key(leaf):
        array = np.asarray(jax.random.key_data(leaf))
    else:
        array = np.asarray(jnp.asarray(leaf) if _is_python_scalar(leaf) else leaf)
    try:
        storage = _storage_dtype(dtype_name)
    except CheckpointError as e:
        raise CheckpointError(f"leaf {name!r}: {e}") from None
    array = np.asarray(array, order="C").view(storage)  # ascontiguousarray makes 0-d 1-d
    return array, {"name": name, "shape": list(shape), "dtype": dtype_name}


def _decode(array: np.ndarray, entry: dict, template_leaf: Any) -> Any:
    """The restored leaf: `array` viewed as the entry's dtype, placed like the template."""
    dtype_name = entry["dtype"]
    if dtype_name.startswith(_KEY_DTYPE_PREFIX):
        impl = dtype_name[len(_KEY_DTYPE_PREFIX) :]
        return jax.random.wrap_key_data(jnp.asarray(array), impl=impl)
    value = array.view(np.dtype(jnp.dtype(dtype_name)))
    if isinstance(template_leaf, (np.ndarray, np.generic)):
        return np.array(value)  # numpy stays numpy (and may be float64 without x64)
    if isinstance(template_leaf, jax.Array):
        if not template_leaf.committed:  # as placed as the template: no recompile on resume
            return jax.device_put(value)
        return jax.device_put(value, template_leaf.sharding)
    return jnp.asarray(value)


# ----------------------------------------------------------------------------
# Files: durable writes, directory listing
# ----------------------------------------------------------------------------


def _checkpoints_root(run_dir: PathLike) -> pathlib.Path:
    return pathlib.Path(run_dir) / CHECKPOINTS_DIR


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_and_hash(path: pathlib.Path) -> tuple[str, int]:
    """Flush `path` to disk; return its sha256 hex digest and byte size."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    return digest.hexdigest(), size


def _write_durably(path: pathlib.Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _complete_checkpoints(root: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    """(epoch, path) of every final-named directory holding both files, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CKPT_NAME.fullmatch(child.name)
        if (
            match
            and child.is_dir()
            and (child / META_FILE).is_file()
            and (child / STATE_FILE).is_file()
        ):
            found.append((int(match.group(1)), child))
    return sorted(found)


def _move_into_place(tmp: pathlib.Path, final: pathlib.Path) -> None:
    """Rename the finished `tmp` to `final`, replacing an existing `final` if any."""
    if not final.exists():
        os.replace(tmp, final)
        return
    # os.replace cannot replace a non-empty directory: move the old one aside
    # first. A crash between the two renames loses only this epoch's previous
    # copy; the other checkpoints stay complete.
    aside = final.with_name(f".old-{final.name}-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(final, aside)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _prune(root: pathlib.Path, keep: int, newest: pathlib.Path) -> None:
    """Delete all but the `keep` highest-epoch checkpoints (never `newest`)."""
    for _, path in _complete_checkpoints(root)[:-keep]:
        if path == newest:
            continue
        # Rename first so a crash mid-delete never leaves a partial final name.
        doomed = path.with_name(f".del-{path.name}-{os.getpid()}")
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray, jax.Array)) and np.ndim(value) == 0:
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ----------------------------------------------------------------------------
# Save
# ----------------------------------------------------------------------------


def save_checkpoint(
    run_dir: PathLike,
    *,
    params: PyTree,
    opt_state: PyTree,
    epoch: int,
    key: PRNGKey | None,
    extra: dict | None = None,
    keep: int = 3,
) -> pathlib.Path:
    """Atomically write `RUN_DIR/checkpoints/ckpt_<epoch:06d>/` and prune old ones.

    Args:
      run_dir: the run's directory; `checkpoints/` is created inside it.
      params: a pytree of arrays (e.g. a NamedTuple of jax arrays).
      opt_state: an optax state pytree (arrays, Python scalars, NamedTuples).
      epoch: a non-negative int; it names the checkpoint directory.
      key: a raw uint32 key (`jax.random.PRNGKey`), a typed key
        (`jax.random.key`), or None.
      extra: a JSON-serialisable dict (numpy/jax 0-d values become numbers).
      keep: how many checkpoints (highest epochs) to keep, at least 1; older
        ones are deleted only after the new one is in place.

    Returns:
      The path of the new checkpoint directory.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    extra = json.loads(json.dumps(extra, default=_json_default))

    named = _named_leaves("params", params) + _named_leaves("opt_state", opt_state)
    key_meta = None
    if key is not None:
        named.append((KEY_LEAF, key))
        typed = _is_typed_key(key)
        impl = str(jax.random.key_impl(key)) if typed else jax.config.jax_default_prng_impl
        key_meta = {"name": KEY_LEAF, "typed": typed, "impl": impl}
    tensors, entries = {}, []
    for name, leaf in named:
        if name in tensors:
            raise CheckpointError(f"two leaves share the name {name!r}")
        tensors[name], entry = _encode(name, leaf)
        entries.append(entry)

    root = _checkpoints_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"ckpt_{int(epoch):06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        safetensors.numpy.save_file(tensors, tmp / STATE_FILE)
        sha256, size = _fsync_and_hash(tmp / STATE_FILE)
        meta = {
            "format_version": FORMAT_VERSION,
            "epoch": int(epoch),
            "leaves": entries,
            "key": key_meta,
            "extra": extra,
            "state": {"file": STATE_FILE, "sha256": sha256, "bytes": size},
            "jax_version": jax.__version__,
        }
        _write_durably(tmp / META_FILE, json.dumps(meta, indent=1).encode())
        _fsync_dir(tmp)
        _move_into_place(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep, final)
    return final


# ----------------------------------------------------------------------------
# Restore
# ----------------------------------------------------------------------------


def latest_checkpoint(run_dir: PathLike) -> pathlib.Path | None:
    """The highest-epoch complete checkpoint of `run_dir`, or None.

    Temporary (`.tmp-*`) directories and final-named directories missing
    meta.json or state.safetensors are ignored.
    """
    found = _complete_checkpoints(_checkpoints_root(run_dir))
    return found[-1][1] if found else None


def list_checkpoints(run_dir: PathLike) -> list[tuple[int, pathlib.Path]]:
    """(epoch, path) of every complete checkpoint of `run_dir`, oldest first."""
    return _complete_checkpoints(_checkpoints_root(run_dir))


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _malformed(meta_path: pathlib.Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{meta_path}: malformed checkpoint metadata: {problem}")


def _read_meta(ckpt: pathlib.Path) -> dict:
    """meta.json of `ckpt`, checked for version and structure."""
    path = ckpt / META_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: meta.json is missing (not a complete checkpoint)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read meta.json ({_one_line(e)})") from e
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: malformed JSON in meta.json ({e})") from e
    if not isinstance(meta, dict):
        raise _malformed(path, f"expected a JSON object, found {type(meta).__name__}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unknown format version {version!r} (this code reads {FORMAT_VERSION})"
        )

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not is_int(meta.get("epoch")):
        raise _malformed(path, "'epoch' must be an int")
    if not isinstance(meta.get("extra"), dict):
        raise _malformed(path, "'extra' must be an object")
    state = meta.get("state")
    if not (
        isinstance(state, dict)
        and state.get("file") == STATE_FILE
        and isinstance(state.get("sha256"), str)
        and is_int(state.get("bytes"))
    ):
        raise _malformed(path, "'state' must hold file, sha256 and bytes")
    leaves = meta.get("leaves")
    if not isinstance(leaves, list):
        raise _malformed(path, "'leaves' must be a list")
    for i, entry in enumerate(leaves):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("dtype"), str)
            and isinstance(entry.get("shape"), list)
            and all(is_int(n) and n >= 0 for n in entry["shape"])
        ):
            raise _malformed(path, f"leaf entry {i} must hold name, shape and dtype")
        try:
            _storage_dtype(entry["dtype"])
        except (TypeError, ValueError) as e:
            raise _malformed(path, f"leaf {entry['name']!r}: bad dtype {entry['dtype']!r}") from e
    key = meta.get("key")
    if key is not None and not (
        isinstance(key, dict)
        and isinstance(key.get("typed"), bool)
        and isinstance(key.get("impl"), str)
        and [e["name"] for e in leaves[-1:]] == [key.get("name")]
    ):
        raise _malformed(path, "'key' must be null or name the last leaf, typed and impl")
    return meta


def _read_state(ckpt: pathlib.Path, meta: dict) -> dict[str, np.ndarray]:
    """The arrays of state.safetensors, after size, sha256 and leaf checks."""
    path = ckpt / STATE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: state file is missing") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read state file ({_one_line(e)})") from e
    expected_size = meta["state"]["bytes"]
    if len(data) != expected_size:
        raise CheckpointError(
            f"{path}: size mismatch: {len(data)} bytes, meta.json says {expected_size} "
            "(truncated or overwritten)"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta["state"]["sha256"]:
        raise CheckpointError(
            f"{path}: sha256 mismatch (corrupted): {digest}, meta.json says "
            f"{meta['state']['sha256']}"
        )
    try:
        arrays = safetensors.numpy.load(data)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # the Rust loader may raise a PanicException
        raise CheckpointError(f"{path}: not a valid safetensors file ({_one_line(e)})") from e
    names = [entry["name"] for entry in meta["leaves"]]
    if sorted(arrays) != sorted(names):
        missing = sorted(set(names) - set(arrays))
        unexpected = sorted(set(arrays) - set(names))
        raise CheckpointError(
            f"{path}: leaves differ from meta.json: missing {missing}, unexpected {unexpected}"
        )
    for entry in meta["leaves"]:
        array = arrays[entry["name"]]
        want_shape, want_dtype = tuple(entry["shape"]), _storage_dtype(entry["dtype"])
        if array.shape != want_shape or array.dtype != want_dtype:
            raise CheckpointError(
                f"{path}: leaf {entry['name']!r}: meta.json says shape {want_shape} "
                f"{want_dtype.name}, file holds {array.shape} {array.dtype.name}"
            )
    return arrays


def _check_against_template(
    ckpt: pathlib.Path, template: list[tuple[str, Any]], entries: list[dict]
) -> None:
    """Raise unless `template` has the entries' names, shapes and dtypes, in order."""
    for i, ((name, leaf), entry) in enumerate(zip(template, entries, strict=False)):
        if name != entry["name"]:
            raise CheckpointError(
                f"{ckpt}: leaf {i}: template has {name!r}, checkpoint has {entry['name']!r}"
            )
        shape, dtype = _describe(leaf)
        found_shape, found_dtype = tuple(entry["shape"]), entry["dtype"]
        if (shape, dtype) != (found_shape, found_dtype):
            raise CheckpointError(
                f"{ckpt}: leaf {name!r}: expected shape {shape} dtype {dtype} (template), "
                f"found shape {found_shape} dtype {found_dtype} (checkpoint)"
            )
    if len(template) != len(entries):
        n = min(len(template), len(entries))
        first_unmatched = template[n][0] if len(template) > n else entries[n]["name"]
        raise CheckpointError(
            f"{ckpt}: template has {len(template)} leaves, checkpoint has {len(entries)} "
            f"(first unmatched: {first_unmatched!r})"
        )


def _resolve(path_or_run_dir: PathLike) -> pathlib.Path:
    path = pathlib.Path(path_or_run_dir)
    if _CKPT_NAME.fullmatch(path.name) or (path / META_FILE).exists():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"no checkpoint in {path}")
    return latest


def restore_checkpoint(
    path_or_run_dir: PathLike,
    *,
    params_template: PyTree,
    opt_state_template: PyTree,
    key_template: PRNGKey | None = None,
) -> Restored:
    """Fill the templates' leaves from a checkpoint, verifying it first.

    Args:
      path_or_run_dir: a `ckpt_<epoch>` directory, or a run directory (its
        latest complete checkpoint is used).
      params_template: params of the saved structure, shapes and dtypes
        (values are ignored), e.g. `init_params(...)`.
      opt_state_template: `optimizer.init(params_template)` for the saved optimizer.
      key_template: optional; when given, the saved key must be of the same
        kind (raw or typed), impl and shape.

    Returns:
      Restored(params, opt_state, epoch, key, extra); arrays are bitwise equal
      to the saved ones and carry the templates' dtypes.

    Raises:
      CheckpointError: no checkpoint, missing/malformed meta.json, unknown
        format version, truncated or corrupted state file, or a template whose
        leaf names, shapes or dtypes differ from the checkpoint's.
    """
    ckpt = _resolve(path_or_run_dir)
    meta = _read_meta(ckpt)
    key_meta = meta["key"]
    entries = meta["leaves"][:-1] if key_meta is not None else meta["leaves"]
    template = _named_leaves("params", params_template) + _named_leaves(
        "opt_state", opt_state_template
    )
    _check_against_template(ckpt, template, entries)
    key_entry = meta["leaves"][-1] if key_meta is not None else None
    if key_template is not None:
        if key_entry is None:
            raise CheckpointError(f"{ckpt}: key_template given but no key was saved")
        _check_against_template(ckpt, [(KEY_LEAF, key_template)], [key_entry])
    elif key_meta is not None and not key_meta["typed"]:
        default_impl = jax.config.jax_default_prng_impl
        if key_meta["impl"] != default_impl:
            raise CheckpointError(
                f"{ckpt}: raw key was saved under PRNG impl {key_meta['impl']!r} but the "
                f"default is now {default_impl!r}; pass a key_template"
            )

    arrays = _read_state(ckpt, meta)
    leaves = [
        _decode(arrays[name], entry, leaf)
        for (name, leaf), entry in zip(template, entries, strict=True)
    ]
    n_params = len(jax.tree_util.tree_leaves(params_template))
    params = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(params_template), leaves[:n_params]
    )
    opt_state = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(opt_state_template), leaves[n_params:]
    )
    key = None
    if key_entry is not None:
        key = _decode(arrays[KEY_LEAF], key_entry, key_template)
    return Restored(params, opt_state, meta["epoch"], key, meta["extra"])
