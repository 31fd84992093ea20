"""The byte format of the object collectives (``bcast_obj``, ``allgather_obj``, ``allreduce_obj``):
small Python values without pickle, so no rank can be made to run code by what another sends.

Carries None, bool, int, float (NaN and inf included), str, bytes, list, tuple, dict (any of
these as keys) and NumPy arrays and scalars of any dtype NumPy or ml_dtypes names (bfloat16).
CuPy arrays arrive as NumPy arrays. Anything else is refused with a TypeError naming the type.

Layout: 8 bytes little-endian length of a UTF-8 JSON tree, the tree, then the raw array bytes
it points into. Every container is a one-key object naming its kind, so no user key can be
mistaken for a marker: {"l": [...]} list, {"t": [...]} tuple, {"d": [[k, v], ...]} dict,
{"a": [offset, nbytes, dtype, shape]} array, {"s": [offset, nbytes, dtype]} NumPy scalar,
{"b": [offset, nbytes]} bytes.
"""
from __future__ import annotations

import json

import numpy as np

from mpinet import backend

_HEADER = 8


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        return np.dtype(backend.bfloat16())
    return np.dtype(name)


def encode(obj) -> bytes:
    blobs: list[bytes] = []
    offset = [0]

    def blob(data: bytes) -> list:
        start = offset[0]
        blobs.append(data)
        offset[0] += len(data)
        return [start, len(data)]

    def walk(x):
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, (int, float)) and not isinstance(x, np.generic):
            return x
        if isinstance(x, np.generic):
            return {"s": [*blob(np.asarray(x).tobytes()), x.dtype.name]}
        if backend.is_gpu_array(x):
            x = backend.to_numpy(x)
        if isinstance(x, np.ndarray):
            arr = np.ascontiguousarray(x)
            return {"a": [*blob(arr.tobytes()), arr.dtype.name, list(arr.shape)]}
        if isinstance(x, (bytes, bytearray, memoryview)):
            return {"b": blob(bytes(x))}
        if isinstance(x, list):
            return {"l": [walk(v) for v in x]}
        if isinstance(x, tuple):
            return {"t": [walk(v) for v in x]}
        if isinstance(x, dict):
            return {"d": [[walk(k), walk(v)] for k, v in x.items()]}
        raise TypeError(f"object collectives carry None, bool, int, float, str, bytes, lists, "
                        f"tuples, dicts and NumPy arrays; got {type(x).__module__}."
                        f"{type(x).__name__}")

    tree = json.dumps(walk(obj), separators=(",", ":")).encode()
    return len(tree).to_bytes(_HEADER, "little") + tree + b"".join(blobs)


def decode(data) -> object:
    data = memoryview(data)
    n = int.from_bytes(data[:_HEADER], "little")
    tree = json.loads(bytes(data[_HEADER:_HEADER + n]))
    base = _HEADER + n

    def raw(start, nbytes):
        return bytes(data[base + start:base + start + nbytes])

    def walk(x):
        if not isinstance(x, dict):
            return x
        (kind, v), = x.items()
        if kind == "l":
            return [walk(i) for i in v]
        if kind == "t":
            return tuple(walk(i) for i in v)
        if kind == "d":
            return {_hashable(walk(k)): walk(val) for k, val in v}
        if kind == "a":
            start, nbytes, dtype, shape = v
            return np.frombuffer(raw(start, nbytes), dtype=_dtype(dtype)).reshape(shape).copy()
        if kind == "s":
            start, nbytes, dtype = v
            return np.frombuffer(raw(start, nbytes), dtype=_dtype(dtype))[0]
        if kind == "b":
            return raw(*v)
        raise ValueError(f"object collective: unknown node kind {kind!r} (mismatched mpinet "
                         f"versions across ranks?)")

    return walk(tree)


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key
