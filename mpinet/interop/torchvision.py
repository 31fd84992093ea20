"""Weights from PyTorch: load a torchvision-style state dict into the matching mpinet zoo model.

    # with torch, once:
    #   safetensors.torch.save_file(torchvision_model.state_dict(), "r18.safetensors")
    net = mpinet.models.build_model("resnet18", num_classes=1000, input_size=224)
    interop.load_torchvision_weights(net, "r18.safetensors")

The file is read as data (safetensors), never unpickled: a ``.pth`` file must be converted by
its owner with torch (``torch.load`` is never called here).

Name mapping (torchvision name -> mpinet name), applied in this order:
  1. A ``module.`` prefix on every name (a state dict saved from DataParallel/DDP) is dropped.
  2. Every other name maps to itself: the zoo's torchvision families (alexnet, vgg11/16[_bn],
     squeezenet1_0/1_1, resnet18/34/50) use torchvision's module names, Sequential indices
     included (``features.0.weight``, ``layer1.0.bn1.running_mean``, ``fc.weight``).
  3. ``*.num_batches_tracked`` (torch int64, 0-d) is converted to the model's buffer dtype; a
     model without that buffer skips it (reported in ``skipped``).
  4. Floating arrays are cast to the model's dtype (float64/float16/bfloat16 -> float32); shapes
     must match exactly.

Where the zoo model differs from torchvision's, shapes (not names) differ, and loading refuses
with the name and both shapes:
  * resnet ``stem="cifar"`` (the default for input_size <= 64): ``conv1.weight`` is 3x3, not 7x7
    -> build with ``stem="imagenet"`` to use ImageNet weights;
  * alexnet / vgg built for small inputs: the first classifier Linear has fewer inputs (their
    adaptive pools do not replicate a small feature map up to 6x6 / 7x7) -> use input_size 224;
  * ``num_classes`` / ``in_channels`` other than the file's: the classifier / first convolution
    differ -> build with the file's values, or load with ``strict=False`` after dropping those
    entries from the state (``exclude=("fc.",)``).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from .. import backend

_DDP_PREFIX = "module."
_COUNTER = "num_batches_tracked"


class LoadResult(NamedTuple):
    loaded: list      # mpinet names that received a value
    missing: list     # model entries the state did not provide
    unexpected: list  # state entries the model does not have
    skipped: list     # entries dropped on purpose (num_batches_tracked without a buffer, exclude)


def load_torchvision_weights(model, path_or_state, strict: bool = True,
                             exclude: tuple = ()) -> LoadResult:
    """Load torchvision-named weights into ``model`` (an mpinet Module, or a Model's network).

    path_or_state: a safetensors file path, or a dict name -> array (NumPy, CuPy or torch
        tensors). See the module docstring for the name mapping.
    strict: refuse (KeyError) when the model has entries the state lacks or the other way round.
        Shape mismatches are always refused (ValueError naming the entry and both shapes).
    exclude: name prefixes of state entries to leave out (e.g. ``("fc.",)`` to keep a new head).
    """
    network = getattr(model, "network", model)
    source = _read_state(path_or_state)
    if source and all(k.startswith(_DDP_PREFIX) for k in source):
        source = OrderedDict((k[len(_DDP_PREFIX):], v) for k, v in source.items())
    targets = network.state_dict()
    skipped = [k for k in source if exclude and k.startswith(tuple(exclude))]
    mapped = OrderedDict()
    for name, value in source.items():
        if name in skipped:
            continue
        if name.endswith("." + _COUNTER) and name not in targets:
            skipped.append(name)
            continue
        mapped[name] = value
    missing = [k for k in targets if k not in mapped]
    unexpected = [k for k in mapped if k not in targets]
    if strict and (missing or unexpected):
        raise KeyError(f"load_torchvision_weights into {type(network).__name__}: the state lacks "
                       f"{_few(missing)} and has {_few(unexpected)} that the model does not; "
                       f"check the model name/options, or pass strict=False (and exclude=) to "
                       f"load the rest")
    converted = OrderedDict()
    for name, value in mapped.items():
        if name not in targets:
            continue
        target = targets[name]
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"load_torchvision_weights: {name!r} is {tuple(value.shape)} in the "
                             f"state but {tuple(target.shape)} in the model; build the model "
                             f"with the options the weights were trained with (num_classes, "
                             f"in_channels, input_size, resnet stem='imagenet'; see "
                             f"mpinet.interop) or exclude=({name.rsplit('.', 1)[0] + '.'!r},)")
        converted[name] = _as_dtype(value, np.dtype(target.dtype), name,
                                    counter=name.endswith("." + _COUNTER))
    network.load_state_dict(converted, strict=False)
    return LoadResult(list(converted), missing, unexpected, skipped)


def _few(names: list) -> str:
    return f"{names[:8]}{' ...' if len(names) > 8 else ''} ({len(names)})"


def _read_state(path_or_state) -> "OrderedDict[str, np.ndarray]":
    if isinstance(path_or_state, (str, os.PathLike)):
        from ..checkpoint import load_weights

        return load_weights(path_or_state)
    if not hasattr(path_or_state, "items"):
        raise TypeError(f"load_torchvision_weights: expected a safetensors path or a dict of "
                        f"arrays, got {type(path_or_state).__name__}")
    return OrderedDict((str(k), _to_numpy(v, k)) for k, v in path_or_state.items())


def _to_numpy(value, name) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor; torch not imported
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":  # NumPy has no bfloat16: go through float32
            import ml_dtypes

            return t.float().numpy().astype(ml_dtypes.bfloat16)
        return t.numpy()
    if isinstance(value, np.ndarray) or backend.is_gpu_array(value):
        return backend.to_numpy(value)
    raise TypeError(f"load_torchvision_weights: state entry {name!r} is a {type(value).__name__}, "
                    f"expected an array or a torch tensor")


def _as_dtype(value: np.ndarray, dtype: np.dtype, name: str, counter: bool) -> np.ndarray:
    """``value`` as ``dtype``: floats to the model's float type (bfloat16 included), a batch
    counter to whatever the buffer holds; integers and floats otherwise do not mix."""
    if value.dtype == dtype:
        return value
    if counter:
        return value.astype(dtype)
    if (value.dtype.kind in "iub" and dtype.kind == "f"
            or value.dtype.kind == "f" and dtype.kind in "iu"):
        raise ValueError(f"load_torchvision_weights: {name!r} is {value.dtype} in the state but "
                         f"{dtype} in the model; integer and floating entries do not convert")
    return value.astype(dtype)


__all__ = ["load_torchvision_weights", "LoadResult"]
