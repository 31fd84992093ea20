"""The checkpoint file format: a state tree split into safetensors bytes and a JSON tree.

Plain data only (nothing here unpickles). Every array of the state goes into
``tensors.safetensors`` under its "/"-joined path in the state (``model/layer1.0.conv1.weight``);
``meta.json`` holds the rest of the tree with each array replaced by ``{"$tensor": key}``, plus
the format version, sizes and sha256 digests that ``mpinet.checkpoint.store`` checks on load.
bfloat16 is stored as safetensors' BF16 (read back through ml_dtypes). This module knows bytes
and trees; files and directories are ``store``'s job, ranks ``protocol``'s.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os

import numpy as np

from .. import __version__, backend

FORMAT = "mpinet-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FORMAT = "mpinet-weights"
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
_TENSOR_REF = "$tensor"  # marks an array's place in the JSON tree
_REQUIRED_META = ("format", "format_version", "step", "world_size", "created", "mpinet_version",
                  "files", "tensors", "state", "per_rank", "meta_sha256")
_STATE_KEYS = ("model", "optimizer", "global_step")


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, found or trusted; the message names file and problem."""


def array_digest(a) -> str:
    arr = host_contiguous(a)
    h = hashlib.sha256(f"{dtype_name(arr)}{list(arr.shape)}".encode())
    h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()


def split_tensors(obj, path: tuple, tensors: dict):
    """JSON tree of ``obj`` with each array moved into ``tensors`` under its "/"-joined path."""
    where = "/".join(path) or "(the state)"
    if isinstance(obj, np.ndarray) or backend.is_gpu_array(obj):
        key = "/".join(path)
        if key in tensors:
            raise CheckpointError(f"two arrays of the state map to the tensor name {key!r}; "
                                  f"rename one (state keys must not contain '/')")
        arr = host_contiguous(obj)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        tensors[key] = arr
        return {_TENSOR_REF: key}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise CheckpointError(f"state key {k!r} under {where} is a {type(k).__name__}; "
                                      f"checkpoint state keys must be strings (JSON)")
            out[k] = split_tensors(v, path + (k,), tensors)
        if set(out) == {_TENSOR_REF}:
            raise CheckpointError(f"state under {where} is a dict with the single key "
                                  f"{_TENSOR_REF!r}, which marks arrays in meta.json; rename it")
        return out
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, path + (str(i),), tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} at {where} in a checkpoint: only "
                          f"arrays and JSON values (dict, list, str, int, float, bool, None)")


def host_contiguous(a) -> np.ndarray:
    """A C-contiguous host copy or view of ``a``, keeping 0-d arrays 0-d (np.ascontiguousarray
    would make them (1,))."""
    return np.require(backend.to_numpy(a), requirements="C")


def dtype_name(arr: np.ndarray) -> str:
    return arr.dtype.name  # e.g. "float32", "bfloat16" (ml_dtypes), "int64"


def serialize(tensors: dict, metadata: dict) -> bytes:
    """safetensors bytes of NumPy ``tensors`` (bfloat16 included: its dtype name is
    safetensors' "bfloat16")."""
    from safetensors.numpy import save

    return save(tensors, metadata=metadata)


def meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def describe(tree: dict, per_rank_tree: list, tensors: dict, blob: bytes, step: int,
             world_size: int) -> dict:
    """The meta.json content for a checkpoint: ``tree``/``per_rank_tree`` from ``split_tensors``,
    ``blob`` the safetensors bytes of ``tensors``; sealed by its own digest (``meta_sha256``)."""
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "world_size": int(world_size),
        "config": tree.get("config"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mpinet_version": __version__,
        "files": {TENSORS_FILE: {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}},
        "tensors": {k: {"dtype": dtype_name(a), "shape": list(a.shape)}
                    for k, a in tensors.items()},
        "state": tree,
        "per_rank": per_rank_tree,
    }
    meta["meta_sha256"] = meta_digest(meta)
    return meta


def check_metadata(meta, meta_path: str) -> dict:
    """``meta`` (parsed meta.json) if it is a well-formed, untampered checkpoint description of
    a version this mpinet reads; else raise CheckpointError naming ``meta_path``."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path}: missing keys {missing}; not an mpinet checkpoint or "
                              f"damaged")
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{meta_path}: format is {meta['format']!r}, expected {FORMAT!r}")
    if not isinstance(meta["format_version"], int) or meta["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format version {meta['format_version']!r}; this "
                              f"mpinet ({__version__}) reads versions up to {FORMAT_VERSION}: "
                              "upgrade mpinet")
    if meta_digest(meta) != meta["meta_sha256"]:
        raise CheckpointError(f"{meta_path}: checksum mismatch (meta_sha256): the file was "
                              f"modified or damaged after it was written")
    if not isinstance(meta["state"], dict) or any(k not in meta["state"] for k in _STATE_KEYS):
        raise CheckpointError(f"{meta_path}: 'state' must be an object with at least "
                              f"{list(_STATE_KEYS)}")
    files = meta["files"]
    if not isinstance(files, dict) or set(files) != {TENSORS_FILE}:
        raise CheckpointError(f"{meta_path}: 'files' must list exactly [{TENSORS_FILE!r}], got "
                              f"{files!r:.200}")
    entry = files[TENSORS_FILE]
    if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("bytes"), int)):
        raise CheckpointError(f"{meta_path}: files[{TENSORS_FILE!r}] must be "
                              f'{{"sha256": str, "bytes": int}}, got {entry!r:.200}')
    shapes = {"step": int, "world_size": int, "tensors": dict, "per_rank": list}
    bad = [k for k, t in shapes.items() if not isinstance(meta[k], t)]
    if bad or not isinstance(meta["state"]["model"], dict) or \
            not all(isinstance(x, dict) for x in meta["per_rank"]):
        raise CheckpointError(f"{meta_path}: malformed entries {bad or ['state.model/per_rank']}")
    return meta


def check_tensor_table(path: str, meta: dict, tensors: dict) -> None:
    table = meta["tensors"]
    file_path = os.path.join(path, TENSORS_FILE)
    if set(table) != set(tensors):
        raise CheckpointError(f"{file_path}: holds tensors {sorted(set(tensors) - set(table))[:5]} "
                              f"not in meta.json and lacks {sorted(set(table) - set(tensors))[:5]}")
    for key, arr in tensors.items():
        if table[key] != {"dtype": dtype_name(arr), "shape": list(arr.shape)}:
            raise CheckpointError(f"{file_path}: tensor {key!r} is {dtype_name(arr)} "
                                  f"{list(arr.shape)}, meta.json says {table[key]}")
    refs: list = []
    _collect_refs(meta["state"], refs)
    _collect_refs(meta["per_rank"], refs)
    if sorted(refs) != sorted(table):
        raise CheckpointError(f"{os.path.join(path, META_FILE)}: the state refers to tensors "
                              f"{sorted(set(refs) - set(table))[:5]} that are not stored, or "
                              f"stores {sorted(set(table) - set(refs))[:5]} it never uses")


def _collect_refs(node, out: list) -> None:
    if isinstance(node, dict):
        if set(node) == {_TENSOR_REF}:
            out.append(node[_TENSOR_REF])
            return
        for v in node.values():
            _collect_refs(v, out)
    elif isinstance(node, list):
        for v in node:
            _collect_refs(v, out)


def join_tensors(node, tensors: dict):
    if isinstance(node, dict):
        if set(node) == {_TENSOR_REF}:
            return tensors[node[_TENSOR_REF]]
        return {k: join_tensors(v, tensors) for k, v in node.items()}
    if isinstance(node, list):
        return [join_tensors(v, tensors) for v in node]
    return node


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "U64": np.uint64,
    "I32": np.int32, "U32": np.uint32, "I16": np.int16, "U16": np.uint16, "I8": np.int8,
    "U8": np.uint8, "BOOL": np.bool_, "C64": np.complex64,
}


def _numpy_dtype(code: str, where: str) -> np.dtype:
    if code in _SAFETENSORS_DTYPES:
        return np.dtype(_SAFETENSORS_DTYPES[code])
    if code == "BF16":
        try:
            import ml_dtypes
        except ImportError:
            raise CheckpointError(f"{where}: holds bfloat16 tensors; install ml_dtypes "
                                  f"(pip install ml_dtypes) to read them") from None
        return np.dtype(ml_dtypes.bfloat16)
    raise CheckpointError(f"{where}: tensor dtype {code} is not supported (supported: "
                          f"{', '.join([*_SAFETENSORS_DTYPES, 'BF16'])})")


def deserialize(data: bytes, where: str) -> dict:
    """name -> NumPy array from safetensors bytes; a malformed file raises CheckpointError."""
    from safetensors import SafetensorError, deserialize

    try:
        views = deserialize(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{where}: not a valid safetensors file ({e}); damaged or "
                              f"truncated") from None
    out = {}
    for name, view in views:
        dtype = _numpy_dtype(view["dtype"], where)
        out[name] = np.frombuffer(view["data"], dtype=dtype).reshape(view["shape"])
    return out


def read_safetensors_metadata(data: bytes, where: str) -> dict:
    """The ``__metadata__`` strings of a safetensors file's header ({} if none)."""
    if len(data) < 8:
        raise CheckpointError(f"{where}: {len(data)} bytes, too short for a safetensors file")
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}: unreadable safetensors header ({e})") from None
    return header.get("__metadata__") or {}


def tensors_digest(tensors: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = host_contiguous(tensors[name])
        h.update(json.dumps([name, dtype_name(arr), list(arr.shape)]).encode())
        h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()

