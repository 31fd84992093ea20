"""Checkpoints on disk, one process's view: atomic write, verify, load, prune, find the latest.

``<dir>/ckpt-<step>/`` holds ``tensors.safetensors`` and ``meta.json`` (see ``format``).
Atomicity: the writer fills ``ckpt-<step>.tmp-<random>/``, fsyncs the files and the folder,
renames it to ``ckpt-<step>`` and fsyncs the parent. A crash at any point leaves either the old
set of checkpoints or the new one, plus at most a ``.tmp-`` folder that ``latest`` skips and the
next save removes. Replacing an existing ``ckpt-<step>`` renames the old one to
``ckpt-<step>.old-<random>`` first (two renames: a crash between them loses that step, never
an older one). Loading re-checks sizes and checksums, so a truncated or tampered file raises
``CheckpointError`` naming the file and what is wrong. Which rank writes is ``protocol``'s job.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import warnings
from collections import OrderedDict

import numpy as np

from .. import __version__
from .format import (FORMAT, META_FILE, TENSORS_FILE, WEIGHTS_FORMAT, CheckpointError,
                     check_metadata,
                     check_tensor_table, describe, deserialize, host_contiguous, join_tensors,
                     read_safetensors_metadata, serialize, split_tensors, tensors_digest)

_CKPT_NAME = re.compile(r"^ckpt-(\d+)$")
_LEFTOVER_NAME = re.compile(r"^ckpt-\d+\.(tmp|old)-[0-9a-f]+$")  # a crashed or replaced save's


# ---- writing -----------------------------------------------------------------------------
def write_checkpoint(directory: str, state: dict, per_rank: list, step: int, world_size: int,
                     keep: int) -> str:
    """Write ``state`` (plus ``per_rank[r]``: what differs on rank r) atomically to
    ``<directory>/ckpt-<step>``, then keep only the newest ``keep``; return the path."""
    tensors: dict = {}
    tree = split_tensors(state, (), tensors)
    per_rank_tree = [split_tensors(extra, ("ranks", str(r)), tensors)
                     for r, extra in enumerate(per_rank)]
    blob = serialize(tensors, metadata={"format": FORMAT, "step": str(step)})
    meta = describe(tree, per_rank_tree, tensors, blob, step, world_size)

    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, f"ckpt-{step}")
    tmp = f"{final}.tmp-{secrets.token_hex(4)}"
    os.mkdir(tmp)
    old = None
    try:
        write_file(os.path.join(tmp, TENSORS_FILE), blob)
        write_file(os.path.join(tmp, META_FILE),
                   json.dumps(meta, indent=1, allow_nan=True).encode())
        fsync_dir(tmp)
        if os.path.exists(final):
            old = f"{final}.old-{secrets.token_hex(4)}"
            os.rename(final, old)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(final):
            os.rename(old, final)  # the replaced checkpoint comes back
        raise
    fsync_dir(directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    prune(directory, keep, keep_path=final)
    return final


def prune(directory: str, keep: int, keep_path: str) -> None:
    """Remove all but the newest ``keep`` checkpoints, and leftovers of crashed saves."""
    names = os.listdir(directory)
    for name in names:
        if _LEFTOVER_NAME.match(name):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    if keep <= 0:
        return
    ckpts = sorted(checkpoint_dirs(directory), reverse=True)
    for _, path in ckpts[keep:]:
        if os.path.abspath(path) != os.path.abspath(keep_path):
            shutil.rmtree(path, ignore_errors=True)


def write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: str) -> None:
    """Make a rename or a new entry in ``path`` durable (POSIX: fsync the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_weights_file(path: str, state: "OrderedDict") -> None:
    """``state`` (name -> array, in order) as one safetensors file at ``path``, atomically:
    temporary file, fsync, rename, fsync of the folder. The header records the names in order
    and a sha256 of the contents."""
    tensors = OrderedDict((k, host_contiguous(v)) for k, v in state.items())
    metadata = {"format": WEIGHTS_FORMAT, "mpinet_version": __version__,
                "names": json.dumps(list(tensors)), "sha256": tensors_digest(tensors)}
    blob = serialize(tensors, metadata)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{secrets.token_hex(4)}")
    try:
        write_file(tmp, blob)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


# ---- reading -----------------------------------------------------------------------------
def read_metadata(path) -> dict:
    """The checked contents of ``<path>/meta.json`` (format, step, world size, files, state
    tree)."""
    path = os.fspath(path)
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path!r} is not a checkpoint directory (it does not exist or is a "
                              f"file); pass a <dir>/ckpt-<step> folder written by checkpoint.save")
    if not os.path.isfile(meta_path):
        hint = (" — it holds checkpoints: pass one of them, or use resume='auto' with this "
                "directory" if checkpoint_dirs(path) else "")
        raise CheckpointError(f"{meta_path}: missing, so {path!r} is not a complete "
                              f"checkpoint{hint}")
    with open(meta_path, "rb") as f:
        raw = f.read()
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e}); the file is damaged or "
                              f"truncated") from None
    return check_metadata(meta, meta_path)


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
    check_tensor_table(path, meta, deserialize(data, os.path.join(path, TENSORS_FILE)))
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
    tensors = deserialize(data, os.path.join(path, TENSORS_FILE))
    check_tensor_table(path, meta, tensors)
    state = join_tensors(meta["state"], tensors)
    state["model"] = OrderedDict(state["model"])
    if rank is None:
        rank = _world_rank(meta["world_size"])
    if 0 < rank < len(meta["per_rank"]):
        extra = join_tensors(meta["per_rank"][rank], tensors)
        state["model"].update((k, v) for k, v in extra.get("model", {}).items()
                              if k in state["model"])
        if "rng" in extra:
            state["rng"] = extra["rng"]
    return state


def _world_rank(saved_world_size: int) -> int:
    """This process's COMM_WORLD rank if MPI is in use with ``saved_world_size`` ranks, else 0."""
    mpi = sys.modules.get("mpi4py.MPI")  # asked only if the program already uses MPI
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return 0
    world = mpi.COMM_WORLD
    return world.Get_rank() if world.Get_size() == saved_world_size else 0


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
    tensors = deserialize(data, path)
    meta = read_safetensors_metadata(data, path)
    if meta.get("format") == WEIGHTS_FORMAT:
        if tensors_digest(tensors) != meta.get("sha256"):
            raise CheckpointError(f"{path}: sha256 of the tensors does not match the one "
                                  f"recorded in its header; the file was modified or damaged")
        names = json.loads(meta["names"])
        if sorted(names) != sorted(tensors):
            raise CheckpointError(f"{path}: header names {len(names)} tensors, the file holds "
                                  f"{len(tensors)}")
        return OrderedDict((k, tensors[k]) for k in names)
    return OrderedDict((k, tensors[k]) for k in sorted(tensors))


# ---- finding -----------------------------------------------------------------------------
def checkpoint_dirs(directory: str) -> list:
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
    for _, path in sorted(checkpoint_dirs(directory), reverse=True):
        try:
            verify(path)
        except CheckpointError as e:
            warnings.warn(f"checkpoint.latest: skipping {path}: {e}", stacklevel=2)
            continue
        return path
    return None

