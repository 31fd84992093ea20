"""The model file: one self-describing file that rebuilds a trained model in a fresh process.

    model.save("digits.mpinet")                     # or: python -m mpinet.train --save-model ...
    model = mpinet.load_model("digits.mpinet")      # architecture, weights, preprocessing
    model.evaluate(test_set); model.predict(x)      # no compile() needed

Layout: a safetensors file (data only: nothing in it is ever unpickled or executed). Its tensors
are the network's ``state_dict()`` (parameters then buffers, by dotted name). Its header's
``__metadata__`` holds four strings:

  * ``format``: ``"mpinet-model"``; ``format_version``: ``"1"`` (a reader refuses newer versions);
  * ``metadata``: JSON, the fields below;
  * ``sha256``: over the canonical JSON of ``metadata`` and every tensor's name, dtype, shape and
    bytes (in ``tensors`` order) — a changed byte anywhere is reported, not loaded.

``metadata`` (format version 1):

  * ``architecture``: ``{"kind": "zoo", "name", "options"}`` or ``{"kind": "registered", "name",
    "arguments"}`` (see ``mpinet.nn.registry``);
  * ``preprocess``: ``Preprocess.to_dict()``: ``input_shape`` (C, H, W), ``layout``, ``pixels``
    (the [0, 1] convention), per-channel ``mean``/``std`` or null;
  * ``class_names``: list or null; ``precision``: "fp32" | "bf16" | "fp16" (the forward's);
  * ``training``: ``loss``, ``label_smoothing``, ``metrics`` (what ``evaluate`` reports), the
    training ``transform``'s parameters (crop padding, flip, seed; a ``Compose``'s parts) or
    null, and the trainer's ``config`` (its flags) or null. A loss given as a callable is not
    stored (``loss`` is null): a loaded model's ``evaluate`` then reports cross-entropy as its
    loss, its metrics unchanged;
  * ``evaluation``: figures the saving process measured (e.g. the trainer's final test
    ``{"data": "digits/test", "loss": ..., "accuracy": ...}``) or null;
  * ``tensors``: the state's names in order; ``mpinet_version``, ``format_version``, ``created``.

Errors (``ModelFileError``, a ValueError) are one line: the file's path, then the problem —
missing, truncated, not a model file, a newer format version, a checksum mismatch.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import secrets
from collections import OrderedDict

import numpy as np

from .. import __version__, backend
from ..data.preprocess import Preprocess
from ..nn import registry

FORMAT = "mpinet-model"
FORMAT_VERSION = 1
SUFFIX = ".mpinet"
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own bound on a header's size
_REQUIRED = ("architecture", "preprocess", "precision", "tensors", "format_version")


class ModelFileError(ValueError):
    """A model file that cannot be written or trusted; the message names the file first."""

    def __init__(self, path, problem: str):
        self.path, self.problem = os.fspath(path), problem
        super().__init__(f"{self.path}: {problem}")


# ---- saving ------------------------------------------------------------------------------
def save(model, path, *, preprocess: Preprocess | None = None, class_names=None,
         evaluation: dict | None = None) -> str:
    """Write ``model`` (an ``mpinet.Model``) to ``path``; returns the path.

    Collective when the model spans several ranks: every rank calls it; batch-norm statistics
    that differ between ranks are averaged first (as ``evaluate`` does); rank 0 writes
    atomically (temporary file, fsync, rename) and every rank returns once the file is complete,
    or raises the same ModelFileError.

    preprocess: overrides ``model.preprocess`` (default: it, else the normalisation of the
        ``eval_transform`` given to ``fit``, else none with the network's ``input_shape``).
    class_names: overrides ``model.class_names``. evaluation: figures to record (JSON data).
    """
    path = os.fspath(path)
    comm = model.comm
    if getattr(model, "dp", None) is not None:
        model.dp.synchronize()  # updates still in flight (GPU, deferred "forward" mode) land first
    _agree_buffers(model, path)
    outcome = None
    if comm.rank == 0:
        try:
            meta = _metadata(model, preprocess, class_names, evaluation)
            tensors = OrderedDict((k, np.require(backend.to_numpy(v), requirements="C"))
                                  for k, v in model.network.state_dict().items())
            meta["tensors"] = list(tensors)
            _write_atomically(path, _serialize(tensors, meta))
            outcome = {"ok": True}
        except ModelFileError as e:
            outcome = {"error": e.problem}
        except ValueError as e:  # what cannot be recorded; the message says how to fix it
            outcome = {"error": str(e)}
        except Exception as e:
            outcome = {"error": f"{type(e).__name__}: {e}"}
    if comm.size > 1:
        outcome = comm.bcast_obj(outcome, root=0)
    if "error" in outcome:
        raise ModelFileError(path, f"cannot save the model: {outcome['error']}")
    return path


def _agree_buffers(model, path: str) -> None:
    """Give every rank the same buffers (batch-norm running statistics: each rank normalised its
    own batches) by averaging them, as ``evaluate`` does, but only if they differ: ``evaluate``
    has usually averaged them already, and averaging equal values again can change their last
    bit (at 3 ranks), so the file would not hold what was evaluated."""
    comm = model.comm
    if comm.size == 1:
        return
    digest = hashlib.sha256()
    for _, buf in model.network.named_buffers():
        host = np.require(backend.to_numpy(buf), requirements="C")
        digest.update(host.reshape(-1).view(np.uint8))
    if len(set(comm.allgather_obj(digest.hexdigest()))) > 1:
        if getattr(model, "dp", None) is None:
            raise ModelFileError(path, "cannot save the model: batch-norm statistics differ "
                                       "between ranks and the model is not compiled to average "
                                       "them")
        model.dp.synchronize()
        model.dp.average_buffers()


def _metadata(model, preprocess, class_names, evaluation) -> dict:
    network = model.network
    architecture = registry.architecture_of(network)
    if preprocess is None:
        preprocess = getattr(model, "preprocess", None)
    if preprocess is None:
        input_shape = getattr(network, "input_shape", None)
        if input_shape is None:
            raise ValueError(f"{type(network).__name__} has no input_shape; pass preprocess="
                             f"Preprocess(input_shape, mean, std) to save()")
        preprocess = Preprocess.from_transform(getattr(model, "eval_transform", None), input_shape)
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    loss = getattr(model, "loss_name", "cross_entropy")
    return {
        "format_version": FORMAT_VERSION,
        "mpinet_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "architecture": architecture,
        "preprocess": preprocess.to_dict(),
        "class_names": None if class_names is None else [str(c) for c in class_names],
        "precision": _precision_name(getattr(model, "precision", None)),
        "training": {
            "loss": loss if isinstance(loss, str) else None,
            "label_smoothing": float(getattr(model, "label_smoothing", 0.0)),
            "metrics": list(getattr(model, "metrics", ("accuracy",))),
            "transform": _transform_parameters(getattr(model, "transform", None)),
            "config": _json_or_none(getattr(model, "config", None)),
        },
        "evaluation": _json_or_none(evaluation),
    }


def _precision_name(precision) -> str:
    """'fp32' | 'bf16' | 'fp16' from a name, an ``amp.Precision`` or None (not compiled)."""
    if precision is None:
        return "fp32"
    return precision if isinstance(precision, str) else str(precision.name)


def _transform_parameters(transform):
    """The training transform's settings, for the record (not needed to run the model)."""
    if transform is None:
        return None
    fields = ("crop_padding", "flip", "seed", "labels_too")
    params = {"type": type(transform).__name__}
    params.update({f: getattr(transform, f) for f in fields if hasattr(transform, f)})
    if isinstance(getattr(transform, "transforms", None), (list, tuple)):  # a Compose
        params["parts"] = [_transform_parameters(t) for t in transform.transforms]
    return _json_or_none(params)


def _json_or_none(value):
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return None


def _digest(meta_json: str, tensors: dict, names: list) -> str:
    h = hashlib.sha256(meta_json.encode())
    for name in names:
        arr = tensors[name]
        h.update(json.dumps([name, arr.dtype.name, list(arr.shape)]).encode())
        h.update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
    return h.hexdigest()


def _canonical(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _serialize(tensors: dict, meta: dict) -> bytes:
    from safetensors.numpy import save as save_safetensors

    meta_json = _canonical(meta)
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "metadata": meta_json,
              "sha256": _digest(meta_json, tensors, list(tensors))}
    return save_safetensors(dict(tensors), metadata=header)


def _write_atomically(path: str, blob: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename durable
    finally:
        os.close(fd)


# ---- loading -----------------------------------------------------------------------------
def read(path) -> tuple["OrderedDict[str, np.ndarray]", dict]:
    """(tensors by name in saved order, metadata) of a verified model file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ModelFileError(path, "no such model file") from None
    except IsADirectoryError:
        raise ModelFileError(path, "is a directory, not a model file") from None
    except OSError as e:
        raise ModelFileError(path, f"cannot read ({e.strerror})") from None
    header = _read_header(path, data)
    info = header.get("__metadata__") or {}
    if info.get("format") != FORMAT:
        raise ModelFileError(path, f"not an mpinet model file (format {info.get('format')!r}, "
                                   f"expected {FORMAT!r}); plain weights load with "
                                   f"Model.load_weights")
    version = info.get("format_version", "")
    if not version.isdigit():
        raise ModelFileError(path, f"format version {version!r} is not a number; damaged file")
    if int(version) > FORMAT_VERSION:
        raise ModelFileError(path, f"model-file format version {version} is newer than this "
                                   f"mpinet {__version__} reads (up to {FORMAT_VERSION}); "
                                   f"upgrade mpinet to load it")
    _check_length(path, data, header)
    tensors = _deserialize(path, data)
    meta_json = info.get("metadata", "")
    try:
        meta = json.loads(meta_json)
    except json.JSONDecodeError as e:
        raise ModelFileError(path, f"metadata is not valid JSON ({e}); damaged file") from None
    missing = [k for k in _REQUIRED if k not in meta] if isinstance(meta, dict) else list(_REQUIRED)
    if missing:
        raise ModelFileError(path, f"metadata lacks {missing}; damaged file")
    names = meta["tensors"]
    if sorted(names) != sorted(tensors):
        raise ModelFileError(path, f"metadata names {len(names)} tensors but the file holds "
                                   f"{len(tensors)}; damaged file")
    actual = _digest(meta_json, tensors, names)
    if actual != info.get("sha256"):
        raise ModelFileError(path, f"checksum mismatch (content sha256 {actual[:12]}..., "
                                   f"recorded {str(info.get('sha256'))[:12]}...); the file was "
                                   f"modified or damaged")
    return OrderedDict((k, tensors[k]) for k in names), meta


def _read_header(path: str, data: bytes) -> dict:
    if len(data) < 9:
        raise ModelFileError(path, f"truncated: {len(data)} bytes, too short for a model file")
    n = int.from_bytes(data[:8], "little")
    if data[8:9] != b"{" or n > _HEADER_LIMIT:
        raise ModelFileError(path, "not an mpinet model file (no safetensors header)")
    if 8 + n > len(data):
        raise ModelFileError(path, f"truncated: the header needs {n} bytes, {len(data) - 8} "
                                   f"follow its length")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(path, f"damaged header ({e})") from None
    if not isinstance(header, dict):
        raise ModelFileError(path, "damaged header (not a JSON object)")
    return header


def _check_length(path: str, data: bytes, header: dict) -> None:
    n = int.from_bytes(data[:8], "little")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise ModelFileError(path, "damaged header (bad tensor offsets)") from None
    present = len(data) - 8 - n
    if present < end:
        raise ModelFileError(path, f"truncated: {present} of {end} bytes of tensor data present")
    if present > end:
        raise ModelFileError(path, f"{present - end} unexpected bytes after the tensor data; "
                                   f"damaged file")


_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16,
           "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}


def _deserialize(path: str, data: bytes) -> dict:
    from safetensors import SafetensorError, deserialize

    try:
        views = deserialize(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise ModelFileError(path, f"damaged tensor data ({e})") from None
    out = {}
    for name, view in views:
        code = view["dtype"]
        if code == "BF16":
            dtype = np.dtype(backend.bfloat16())
        elif code in _DTYPES:
            dtype = np.dtype(_DTYPES[code])
        else:
            raise ModelFileError(path, f"tensor {name!r} has unsupported dtype {code}")
        out[name] = np.frombuffer(view["data"], dtype=dtype).reshape(view["shape"])
    return out


def _build(architecture: dict):
    """A fresh network (initialised weights) for the file's architecture; ValueError if this
    mpinet cannot build it."""
    kind, name = architecture.get("kind"), architecture.get("name")
    if kind == "zoo":
        from ..models import available_models, build_model

        if name not in available_models():
            raise ValueError(f"zoo model {name!r} is not in this mpinet's zoo "
                             f"({', '.join(available_models())})")
        return build_model(name, **architecture.get("options", {}))
    if kind == "registered":
        return registry.build_registered(name, architecture.get("arguments", {}))
    raise ValueError(f"unknown architecture kind {kind!r} (expected 'zoo' or 'registered')")


def load_network(path):
    """(network on the host with the file's weights, metadata). The global weight-init
    generator is left as it was (building the network draws from it)."""
    from ..nn import init

    path = os.fspath(path)
    tensors, meta = read(path)
    generator_state = init.generator().bit_generator.state
    try:
        network = _build(meta["architecture"])
    except (TypeError, ValueError) as e:
        raise ModelFileError(path, f"cannot rebuild the architecture: {e}") from None
    finally:
        init.generator().bit_generator.state = generator_state
    try:
        network.load_state_dict(tensors)
    except (KeyError, ValueError) as e:
        raise ModelFileError(path, f"weights do not fit the architecture: {e}") from None
    return network, meta


def load_model(path, comm=None):
    """An ``mpinet.Model`` from a model file: architecture rebuilt, weights loaded, preprocessing,
    precision, class names and the evaluation loss/metrics restored. Ready for ``predict`` and
    ``evaluate`` without ``compile()``; ``compile()`` it to train further. ``comm``: as for
    ``Model`` (default: all MPI ranks). ``model.metadata`` holds the file's metadata."""
    from .. import Model

    network, meta = load_network(path)
    model = Model(network, comm)
    model.precision = meta["precision"]
    model.preprocess = Preprocess.from_dict(meta["preprocess"])
    model.class_names = meta.get("class_names")
    training = meta.get("training") or {}
    if training.get("loss"):
        model.loss_name = training["loss"]
    model.label_smoothing = float(training.get("label_smoothing") or 0.0)
    if training.get("metrics"):
        model.metrics = tuple(training["metrics"])
    model.metadata = meta
    return model


def describe(path) -> str:
    """A few lines on what a verified model file holds
    (``python -m mpinet.training.model_file``)."""
    tensors, meta = read(path)
    arch = meta["architecture"]
    arguments = arch.get("options", arch.get("arguments", {}))
    pre = meta["preprocess"]
    norm = (f"mean {pre['mean']}, std {pre['std']}" if pre.get("mean") is not None
            else "none (pixels in [0, 1])")
    names = meta.get("class_names")
    lines = [f"{path}: mpinet model file, format version {meta['format_version']}, written by "
             f"mpinet {meta.get('mpinet_version')} at {meta.get('created')}",
             f"  architecture: {arch['kind']} {arch['name']} {json.dumps(arguments)}",
             f"  input: {tuple(pre['input_shape'])}, normalisation: {norm}",
             f"  precision: {meta['precision']}, {len(tensors)} tensors, "
             f"{sum(int(t.size) for t in tensors.values()):,} values",
             f"  classes: {names if names is None or len(names) <= 20 else names[:20] + ['...']}"]
    if meta.get("evaluation"):
        lines.append(f"  evaluation: {json.dumps(meta['evaluation'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m mpinet.training.model_file FILE...``: check and describe model files (exit 2
    if one is missing, damaged or from a newer format; ``--json`` prints the whole metadata)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m mpinet.training.model_file",
                                     description="Verify and describe mpinet model files.")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--json", action="store_true", help="print the metadata as JSON")
    args = parser.parse_args(argv)
    for path in args.files:
        try:
            print(json.dumps(read(path)[1], indent=1) if args.json else describe(path))
        except ModelFileError as e:
            print(f"mpinet.training.model_file: error: {e}", file=sys.stderr)
            return 2
    return 0


__all__ = ["save", "read", "load_network", "load_model", "describe", "ModelFileError", "FORMAT",
           "FORMAT_VERSION", "SUFFIX"]


if __name__ == "__main__":
    raise SystemExit(main())
