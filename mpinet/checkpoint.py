"""Checkpoints: save, find and restore a whole training state, atomically and without pickle.

    path = checkpoint.save("runs/ckpt", model.training_state(), step, comm, keep=3)  # every rank
    path = checkpoint.resolve_resume("auto", "runs/ckpt", comm)   # newest good one, or None
    model.load_training_state(checkpoint.load(path))

On disk, ``<dir>/ckpt-<step>/`` holds two files, both plain data (a stranger's checkpoint can
not run code when loaded — nothing here unpickles):

  * ``tensors.safetensors``: every array of the state, keyed by its path in the state with
    "/" between levels: ``model/layer1.0.conv1.weight``, ``optimizer/tensors/0.momentum_buffer``.
    CuPy arrays are copied to the host; bfloat16 is stored as safetensors' BF16 (read back
    through ml_dtypes).
  * ``meta.json``: the rest of the state as JSON, each array replaced by ``{"$tensor": key}``,
    plus format version, step, world size, config (``state["config"]`` if given), creation time,
    mpinet version, the sha256 and size of ``tensors.safetensors``, and its own checksum
    (``meta_sha256``, over the canonical JSON of everything else).

Per-rank parts: the state is rank 0's, but some of it may differ between ranks — batch-norm
running statistics (each rank normalises its own batches) and RNG states (dropout's generator
is seeded per rank). ``save`` compares every rank's ``model`` entries (by
sha256) and ``rng`` with rank 0's and stores those that differ as per-rank overrides
(``ranks/<r>/model/<name>`` tensors, ``per_rank`` in meta.json); ``load(path, rank=r)`` applies
rank r's, so each rank resumes exactly where it stopped at the same world size.

Atomicity: rank 0 writes into ``ckpt-<step>.tmp-<random>/``, fsyncs the files and the folder,
renames it to ``ckpt-<step>`` and fsyncs the parent. A crash at any point leaves either the old
set of checkpoints or the new one, plus at most a ``.tmp-`` folder that ``latest`` skips and the
next ``save`` removes. Replacing an existing ``ckpt-<step>`` renames the old one to
``ckpt-<step>.old-<random>`` first (two renames: a crash between them loses that step, never
an older one). ``load`` re-checks sizes and checksums, so a truncated or tampered file raises
``CheckpointError`` naming the file and what is wrong.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import secrets
import shutil
import warnings
from collections import OrderedDict

import numpy as np

from . import __version__, backend

FORMAT = "mpinet-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FORMAT = "mpinet-weights"
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
_TENSOR_REF = "$tensor"  # marks an array's place in the JSON tree
_CKPT_NAME = re.compile(r"^ckpt-(\d+)$")
_LEFTOVER_NAME = re.compile(r"^ckpt-\d+\.(tmp|old)-[0-9a-f]+$")  # a crashed or replaced save's
_REQUIRED_META = ("format", "format_version", "step", "world_size", "created", "mpinet_version",
                  "files", "tensors", "state", "per_rank", "meta_sha256")
_STATE_KEYS = ("model", "optimizer", "global_step")


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, found or trusted; the message names file and problem."""


# ---- saving ------------------------------------------------------------------------------
def save(directory, state: dict, step: int, comm, keep: int = 3) -> str:
    """Write ``state`` (``Model.training_state()``) to ``<directory>/ckpt-<step>``; return its path.

    Collective: every rank calls it with the same ``step`` (checked; a mismatch raises on every
    rank, naming the ranks). Rank 0 writes its state plus what differs on other ranks (see the
    module docstring); every rank returns only once the checkpoint is complete on disk (or
    raises the same error if rank 0 failed to write it). Afterwards only the newest ``keep``
    checkpoints remain (``keep <= 0`` keeps all).
    """
    directory = os.fspath(directory)
    model = state.get("model") or {}
    gathered = comm.allgather_obj({"step": int(step), "rng": state.get("rng"),
                                   "model": {k: _array_digest(v) for k, v in model.items()}})
    _check_agreement(gathered)
    # Every rank knows from `gathered` which ranks differ, so all take part in this or none.
    differs = [[k for k, d in g["model"].items() if d != gathered[0]["model"][k]]
               for g in gathered]
    overrides = None
    if any(differs[1:]):
        mine = {k: _host_contiguous(model[k]) for k in differs[comm.rank]} if comm.rank else {}
        overrides = comm.allgather_obj(mine)
    outcome = None
    if comm.rank == 0:
        try:
            per_rank = [{} for _ in gathered]
            for r, g in enumerate(gathered[1:], start=1):
                if overrides and overrides[r]:
                    per_rank[r]["model"] = overrides[r]
                if g["rng"] != gathered[0]["rng"]:
                    per_rank[r]["rng"] = g["rng"]
            outcome = {"path": _write_checkpoint(directory, state, per_rank, int(step), comm.size,
                                                 keep)}
        except Exception as e:  # noqa: BLE001 - sent to every rank, re-raised everywhere
            outcome = {"error": f"{type(e).__name__}: {e}"}
    # Doubles as the closing barrier: no rank returns before rank 0 has finished writing.
    outcome = comm.bcast_obj(outcome, root=0)
    if "error" in outcome:
        raise CheckpointError(f"checkpoint.save to {directory!r} failed on rank 0: "
                              f"{outcome['error']}")
    return outcome["path"]


def _check_agreement(gathered: list) -> None:
    """Same step and same model entry names on every rank, else raise (on every rank alike)."""
    steps = [g["step"] for g in gathered]
    if len(set(steps)) != 1:
        by_step: dict = {}
        for rank, s in enumerate(steps):
            by_step.setdefault(s, []).append(rank)
        detail = "; ".join(f"step {s} on ranks {ranks}" for s, ranks in sorted(by_step.items()))
        raise CheckpointError(f"checkpoint.save: the ranks disagree on the step ({detail}); every "
                              f"rank must call save at the same step (it is a collective)")
    names0 = list(gathered[0]["model"])
    for r, g in enumerate(gathered):
        if list(g["model"]) != names0:
            raise CheckpointError(f"checkpoint.save: rank {r}'s model has entries "
                                  f"{sorted(set(g['model']) ^ set(names0))[:5]} that rank 0's "
                                  f"lacks or the other way round; every rank must save the "
                                  f"same model")


def _array_digest(a) -> str:
    arr = _host_contiguous(a)
    h = hashlib.sha256(f"{_dtype_name(arr)}{list(arr.shape)}".encode())
    h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _write_checkpoint(directory: str, state: dict, per_rank: list, step: int, world_size: int,
                      keep: int) -> str:
    tensors: dict = {}
    tree = _split_tensors(state, (), tensors)
    per_rank_tree = [_split_tensors(extra, ("ranks", str(r)), tensors)
                     for r, extra in enumerate(per_rank)]
    blob = _serialize(tensors, metadata={"format": FORMAT, "step": str(step)})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "world_size": int(world_size),
        "config": tree.get("config"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mpinet_version": __version__,
        "files": {TENSORS_FILE: {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}},
        "tensors": {k: {"dtype": _dtype_name(a), "shape": list(a.shape)} for k, a in tensors.items()},
        "state": tree,
        "per_rank": per_rank_tree,
    }
    meta["meta_sha256"] = _meta_digest(meta)

    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, f"ckpt-{step}")
    tmp = f"{final}.tmp-{secrets.token_hex(4)}"
    os.mkdir(tmp)
    old = None
    try:
        _write_file(os.path.join(tmp, TENSORS_FILE), blob)
        _write_file(os.path.join(tmp, META_FILE),
                    json.dumps(meta, indent=1, allow_nan=True).encode())
        _fsync_dir(tmp)
        if os.path.exists(final):
            old = f"{final}.old-{secrets.token_hex(4)}"
            os.rename(final, old)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(final):
            os.rename(old, final)  # the replaced checkpoint comes back
        raise
    _fsync_dir(directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _prune(directory, keep, keep_path=final)
    return final


def _prune(directory: str, keep: int, keep_path: str) -> None:
    """Remove all but the newest ``keep`` checkpoints, and leftovers of crashed saves."""
    names = os.listdir(directory)
    for name in names:
        if _LEFTOVER_NAME.match(name):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    if keep <= 0:
        return
    ckpts = sorted(_checkpoint_dirs(directory), reverse=True)
    for _, path in ckpts[keep:]:
        if os.path.abspath(path) != os.path.abspath(keep_path):
            shutil.rmtree(path, ignore_errors=True)


def _split_tensors(obj, path: tuple, tensors: dict):
    """JSON tree of ``obj`` with each array moved into ``tensors`` under its "/"-joined path."""
    where = "/".join(path) or "(the state)"
    if isinstance(obj, np.ndarray) or backend.is_gpu_array(obj):
        key = "/".join(path)
        if key in tensors:
            raise CheckpointError(f"two arrays of the state map to the tensor name {key!r}; "
                                  f"rename one (state keys must not contain '/')")
        arr = _host_contiguous(obj)
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
            out[k] = _split_tensors(v, path + (k,), tensors)
        if set(out) == {_TENSOR_REF}:
            raise CheckpointError(f"state under {where} is a dict with the single key "
                                  f"{_TENSOR_REF!r}, which marks arrays in meta.json; rename it")
        return out
    if isinstance(obj, (list, tuple)):
        return [_split_tensors(v, path + (str(i),), tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} at {where} in a checkpoint: only "
                          f"arrays and JSON values (dict, list, str, int, float, bool, None)")


def _host_contiguous(a) -> np.ndarray:
    """A C-contiguous host copy or view of ``a``, keeping 0-d arrays 0-d (np.ascontiguousarray
    would make them (1,))."""
    return np.require(backend.to_numpy(a), requirements="C")


def _dtype_name(arr: np.ndarray) -> str:
    return arr.dtype.name  # e.g. "float32", "bfloat16" (ml_dtypes), "int64"


def _serialize(tensors: dict, metadata: dict) -> bytes:
    """safetensors bytes of NumPy ``tensors`` (bfloat16 included: its dtype name is
    safetensors' "bfloat16")."""
    from safetensors.numpy import save  # noqa: PLC0415

    return save(tensors, metadata=metadata)


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    """Make a rename or a new entry in ``path`` durable (POSIX: fsync the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# ---- loading -----------------------------------------------------------------------------
def read_metadata(path) -> dict:
    """The checked contents of ``<path>/meta.json`` (format, step, world size, files, state tree)."""
    path = os.fspath(path)
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path!r} is not a checkpoint directory (it does not exist or is a "
                              f"file); pass a <dir>/ckpt-<step> folder written by checkpoint.save")
    if not os.path.isfile(meta_path):
        hint = (" — it holds checkpoints: pass one of them, or use resume='auto' with this "
                "directory" if _checkpoint_dirs(path) else "")
        raise CheckpointError(f"{meta_path}: missing, so {path!r} is not a complete checkpoint{hint}")
    with open(meta_path, "rb") as f:
        raw = f.read()
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e}); the file is damaged or "
                              f"truncated") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path}: missing keys {missing}; not an mpinet checkpoint or "
                              f"damaged")
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{meta_path}: format is {meta['format']!r}, expected {FORMAT!r}")
    if not isinstance(meta["format_version"], int) or meta["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format version {meta['format_version']!r}; this mpinet "
                              f"({__version__}) reads versions up to {FORMAT_VERSION}: upgrade "
                              f"mpinet")
    if _meta_digest(meta) != meta["meta_sha256"]:
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


def _read_verified(path: str, name: str, expect: dict) -> bytes:
    """The bytes of ``path/name``, checked against ``expect`` ({"sha256", "bytes"})."""
    file_path = os.path.join(path, name)
    try:
        with open(file_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{file_path}: missing from the checkpoint") from None
    except IsADirectoryError:
        raise CheckpointError(f"{file_path}: a directory where the checkpoint's tensor file "
                              f"should be; the checkpoint is damaged") from None
    if len(data) != expect["bytes"]:
        raise CheckpointError(f"{file_path}: {len(data)} bytes, expected {expect['bytes']} "
                              f"({'truncated' if len(data) < expect['bytes'] else 'grown'}); "
                              f"the checkpoint is damaged")
    digest = hashlib.sha256(data).hexdigest()
    if digest != expect["sha256"]:
        raise CheckpointError(f"{file_path}: sha256 {digest[:16]}... does not match the "
                              f"recorded {expect['sha256'][:16]}...; the file was modified or "
                              f"damaged after it was written")
    return data


def verify(path) -> dict:
    """Check a checkpoint completely (metadata, sizes, checksums, tensor list) without
    building the state; return its metadata. Raises ``CheckpointError``."""
    path = os.fspath(path)
    meta = read_metadata(path)
    data = _read_verified(path, TENSORS_FILE, meta["files"][TENSORS_FILE])
    _check_tensor_table(path, meta, _deserialize(data, os.path.join(path, TENSORS_FILE)))
    return meta


def load(path, rank: int | None = None) -> dict:
    """The state saved at ``path`` (a ``ckpt-<step>`` folder) as rank ``rank`` had it, arrays
    as NumPy. Verifies everything first.

    Same structure as given to ``save`` (model as an OrderedDict in saved order; tuples come
    back as lists). ``rank``: whose per-rank parts (batch-norm statistics, RNG states) to
    apply; rank 0's when the checkpoint has no such rank (fewer ranks saved it). Left as None,
    it is this process's rank in MPI's COMM_WORLD when MPI is running with as many ranks as
    saved the checkpoint, else 0 — pass the communicator's rank to be explicit.
    """
    path = os.fspath(path)
    meta = read_metadata(path)
    data = _read_verified(path, TENSORS_FILE, meta["files"][TENSORS_FILE])
    tensors = _deserialize(data, os.path.join(path, TENSORS_FILE))
    _check_tensor_table(path, meta, tensors)
    state = _join_tensors(meta["state"], tensors)
    state["model"] = OrderedDict(state["model"])
    if rank is None:
        rank = _world_rank(meta["world_size"])
    if 0 < rank < len(meta["per_rank"]):
        extra = _join_tensors(meta["per_rank"][rank], tensors)
        state["model"].update((k, v) for k, v in extra.get("model", {}).items()
                              if k in state["model"])
        if "rng" in extra:
            state["rng"] = extra["rng"]
    return state


def _world_rank(saved_world_size: int) -> int:
    """This process's COMM_WORLD rank if MPI is in use with ``saved_world_size`` ranks, else 0."""
    import sys  # noqa: PLC0415

    mpi = sys.modules.get("mpi4py.MPI")  # asked only if the program already uses MPI
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return 0
    world = mpi.COMM_WORLD
    return world.Get_rank() if world.Get_size() == saved_world_size else 0


def _check_tensor_table(path: str, meta: dict, tensors: dict) -> None:
    table = meta["tensors"]
    file_path = os.path.join(path, TENSORS_FILE)
    if set(table) != set(tensors):
        raise CheckpointError(f"{file_path}: holds tensors {sorted(set(tensors) - set(table))[:5]} "
                              f"not in meta.json and lacks {sorted(set(table) - set(tensors))[:5]}")
    for key, arr in tensors.items():
        if table[key] != {"dtype": _dtype_name(arr), "shape": list(arr.shape)}:
            raise CheckpointError(f"{file_path}: tensor {key!r} is {_dtype_name(arr)} "
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


def _join_tensors(node, tensors: dict):
    if isinstance(node, dict):
        if set(node) == {_TENSOR_REF}:
            return tensors[node[_TENSOR_REF]]
        return {k: _join_tensors(v, tensors) for k, v in node.items()}
    if isinstance(node, list):
        return [_join_tensors(v, tensors) for v in node]
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
            import ml_dtypes  # noqa: PLC0415
        except ImportError:
            raise CheckpointError(f"{where}: holds bfloat16 tensors; install ml_dtypes "
                                  f"(pip install ml_dtypes) to read them") from None
        return np.dtype(ml_dtypes.bfloat16)
    raise CheckpointError(f"{where}: tensor dtype {code} is not supported (supported: "
                          f"{', '.join([*_SAFETENSORS_DTYPES, 'BF16'])})")


def _deserialize(data: bytes, where: str) -> dict:
    """name -> NumPy array from safetensors bytes; a malformed file raises CheckpointError."""
    from safetensors import SafetensorError, deserialize  # noqa: PLC0415

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


def _read_safetensors_metadata(data: bytes, where: str) -> dict:
    """The ``__metadata__`` strings of a safetensors file's header ({} if none)."""
    if len(data) < 8:
        raise CheckpointError(f"{where}: {len(data)} bytes, too short for a safetensors file")
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}: unreadable safetensors header ({e})") from None
    return header.get("__metadata__") or {}


# ---- finding -----------------------------------------------------------------------------
def _checkpoint_dirs(directory: str) -> list:
    """[(step, path)] of the ``ckpt-<step>`` folders in ``directory`` (by name; not checked)."""
    found = []
    for name in os.listdir(directory):
        m = _CKPT_NAME.match(name)
        path = os.path.join(directory, name)
        if m and os.path.isdir(path):
            found.append((int(m.group(1)), path))
    return found


def latest(directory) -> str | None:
    """The newest checkpoint in ``directory`` that verifies, or None (missing or empty folder).

    Unfinished saves (``.tmp-`` folders) and checkpoints that fail verification are skipped
    with a warning naming each and why.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return None
    for name in sorted(os.listdir(directory)):
        if _LEFTOVER_NAME.match(name):
            warnings.warn(f"checkpoint.latest: skipping {os.path.join(directory, name)}, an "
                          f"unfinished or replaced save", stacklevel=2)
    for _, path in sorted(_checkpoint_dirs(directory), reverse=True):
        try:
            verify(path)
        except CheckpointError as e:
            warnings.warn(f"checkpoint.latest: skipping {path}: {e}", stacklevel=2)
            continue
        return path
    return None


def resolve_resume(resume, directory, comm) -> str | None:
    """The checkpoint to resume from, the same on every rank (collective unless ``resume`` is
    falsy). ``"auto"``: the newest good one in ``directory``, or None to start fresh; a path:
    that checkpoint, verified. Rank 0 decides and broadcasts; errors raise on every rank."""
    if not resume:
        return None
    outcome = None
    if comm.rank == 0:
        try:
            if resume == "auto":
                if not directory:
                    raise CheckpointError("resume='auto' needs a checkpoint directory to look in "
                                          "(checkpoint_dir / --checkpoint-dir)")
                outcome = {"path": latest(directory)}
            else:
                verify(resume)
                outcome = {"path": os.fspath(resume)}
        except Exception as e:  # noqa: BLE001 - sent to every rank, re-raised everywhere
            outcome = {"error": str(e) if isinstance(e, CheckpointError)
                       else f"{type(e).__name__}: {e}"}
    outcome = comm.bcast_obj(outcome, root=0)
    if "error" in outcome:
        raise CheckpointError(f"cannot resume from {resume!r}: {outcome['error']}")
    return outcome["path"]


# ---- weights alone (Keras-style) ---------------------------------------------------------
def save_weights(path, network, comm) -> None:
    """Write ``network``'s parameters and buffers to one safetensors file (rank 0, atomically:
    temporary file, fsync, rename, fsync of the folder). Collective: returns on every rank once
    the file is complete. The header records the names in order and a sha256 of the contents."""
    path = os.fspath(path)
    outcome = None
    if comm.rank == 0:
        try:
            tensors = OrderedDict((k, _host_contiguous(v)) for k, v in network.state_dict().items())
            metadata = {"format": WEIGHTS_FORMAT, "mpinet_version": __version__,
                        "names": json.dumps(list(tensors)),
                        "sha256": _tensors_digest(tensors)}
            blob = _serialize(tensors, metadata)
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{secrets.token_hex(4)}")
            try:
                _write_file(tmp, blob)
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            _fsync_dir(folder)
            outcome = {"ok": True}
        except Exception as e:  # noqa: BLE001 - sent to every rank, re-raised everywhere
            outcome = {"error": f"{type(e).__name__}: {e}"}
    outcome = comm.bcast_obj(outcome, root=0)
    if "error" in outcome:
        raise CheckpointError(f"save_weights to {path!r} failed on rank 0: {outcome['error']}")


def load_weights(path) -> "OrderedDict[str, np.ndarray]":
    """name -> NumPy array from a safetensors weights file (``save_weights``' or any other).

    A file written by ``save_weights`` is checked against its recorded sha256 and comes back in
    the saved order; a foreign safetensors file loads unchecked, in name order."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such weights file") from None
    tensors = _deserialize(data, path)
    meta = _read_safetensors_metadata(data, path)
    if meta.get("format") == WEIGHTS_FORMAT:
        if _tensors_digest(tensors) != meta.get("sha256"):
            raise CheckpointError(f"{path}: sha256 of the tensors does not match the one "
                                  f"recorded in its header; the file was modified or damaged")
        names = json.loads(meta["names"])
        if sorted(names) != sorted(tensors):
            raise CheckpointError(f"{path}: header names {len(names)} tensors, the file holds "
                                  f"{len(tensors)}")
        return OrderedDict((k, tensors[k]) for k in names)
    return OrderedDict((k, tensors[k]) for k in sorted(tensors))


def _tensors_digest(tensors: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = _host_contiguous(tensors[name])
        h.update(json.dumps([name, _dtype_name(arr), list(arr.shape)]).encode())
        h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()


__all__ = ["CheckpointError", "save", "load", "latest", "resolve_resume", "verify",
           "read_metadata", "save_weights", "load_weights"]
