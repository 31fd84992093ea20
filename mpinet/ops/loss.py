"""Losses: cross-entropy (fused log-softmax + NLL, with label smoothing) and mean squared error.

Losses are computed in at least float32 (bf16/fp16 logits are upcast inside), and their
gradients are returned in the input's dtype, as mixed precision expects.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Function
from .activation import log_softmax_array

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(op: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


class CrossEntropy(Function):
    """logits (N, C) with labels (N,), or (N, C, d1, ...) with labels (N, d1, ...).

    Loss per element: (1 - eps) * -log p[label] + eps * mean_c(-log p[c]) (PyTorch's label
    smoothing). Positions whose label equals ``ignore_index`` add nothing and are not counted by
    the mean.
    """

    def __init__(self, label_smoothing: float, reduction: str, ignore_index):
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got "
                             f"{label_smoothing}")
        _check_reduction("cross_entropy", reduction)
        self.smoothing = float(label_smoothing)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, logits, labels):
        xp = backend.xp_of(logits)
        _check_shapes(logits, labels)
        num_classes = logits.shape[1]
        valid = None if self.ignore_index is None else labels != self.ignore_index
        _check_label_range(labels, valid, num_classes)
        safe_labels = labels if valid is None else xp.where(valid, labels, 0)

        logp = log_softmax_array(logits.astype(_loss_dtype(logits), copy=False), axis=1)
        idx = xp.expand_dims(safe_labels.astype(np.int64, copy=False), 1)  # (N, 1, ...)
        nll = -xp.take_along_axis(logp, idx, axis=1).squeeze(1)  # (N, ...)
        loss = nll
        if self.smoothing:
            loss = (1 - self.smoothing) * nll - self.smoothing * logp.mean(axis=1)
        if valid is not None:
            loss = loss * valid
        count = int(valid.sum()) if valid is not None else loss.size
        self.count = max(count, 1)
        self.save(logp, idx, valid)
        self.logits_dtype = logits.dtype
        if self.reduction == "none":
            return loss
        total = loss.sum()
        if self.reduction == "mean":
            total = total / loss.dtype.type(self.count)
        return xp.asarray(total)  # NumPy reductions give scalars; outputs must be arrays

    def backward(self, gy):
        logp, idx, valid = self.saved
        xp = backend.xp_of(logp)
        num_classes = logp.shape[1]
        # d loss / d logits = softmax - target distribution, per element.
        grad = xp.exp(logp)
        grad -= grad.dtype.type(self.smoothing / num_classes)
        classes = xp.arange(num_classes).reshape((1, num_classes) + (1,) * (logp.ndim - 2))
        grad -= (classes == idx) * grad.dtype.type(1 - self.smoothing)  # the one-hot part
        if self.reduction == "mean":
            scale = gy.astype(grad.dtype) / grad.dtype.type(self.count)  # 0-d
        elif self.reduction == "sum":
            scale = gy.astype(grad.dtype)
        else:
            scale = xp.expand_dims(gy.astype(grad.dtype), 1)  # (N, 1, ...)
        if valid is not None:
            scale = scale * xp.expand_dims(valid, 1)
        grad *= scale
        return grad.astype(self.logits_dtype, copy=False), None


def _loss_dtype(x):
    return x.dtype if x.dtype.itemsize >= 4 else np.dtype(np.float32)


def _check_shapes(logits, labels) -> None:
    if logits.ndim < 2:
        raise ValueError(f"cross_entropy: logits must be (N, C) or (N, C, H, W), got shape "
                         f"{tuple(logits.shape)}")
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(f"cross_entropy: labels must have shape {expected} for logits of "
                         f"shape {tuple(logits.shape)} (class axis 1 removed), got "
                         f"{tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: labels must be integer class indices, got dtype "
                        f"{labels.dtype}; convert with labels.astype('int64')")


_GPU_CHECKED_CLASS_COUNTS: set = set()


def _check_label_range(labels, valid, num_classes: int) -> None:
    """Refuse labels outside [0, C).

    On GPU reading the verdict back is a CPU-GPU sync point, which would stall the launch queue
    in the middle of every training step. There the check runs once per class count (the first
    batch): the data set readers already guarantee labels < their num_classes, so what is left
    to catch is a model whose output size does not match the data set, which the first batch
    shows.
    """
    if labels.size == 0:
        return
    if backend.is_gpu_array(labels):
        if num_classes in _GPU_CHECKED_CLASS_COUNTS:
            return
        _GPU_CHECKED_CLASS_COUNTS.add(num_classes)
    bad = (labels < 0) | (labels >= num_classes)
    if valid is not None:
        bad &= valid
    if bool(bad.any()):
        value = int(labels[bad].ravel()[0])
        raise ValueError(f"cross_entropy: label {value} is out of range for num_classes="
                         f"{num_classes} (valid labels are 0..{num_classes - 1}); check the "
                         f"data set's labels or the model's output size")


class MSE(Function):
    def __init__(self, reduction: str):
        _check_reduction("mse", reduction)
        self.reduction = reduction

    def forward(self, y, t):
        if tuple(y.shape) != tuple(t.shape):
            raise ValueError(f"mse: prediction shape {tuple(y.shape)} and target shape "
                             f"{tuple(t.shape)} differ; they must match")
        diff = y - t
        self.save(diff)
        sq = diff * diff
        if self.reduction == "none":
            return sq
        xp = backend.xp_of(sq)
        return xp.asarray(sq.mean() if self.reduction == "mean" else sq.sum())

    def backward(self, gy):
        (diff,) = self.saved
        g = 2 * diff * gy
        if self.reduction == "mean":
            g = g / diff.dtype.type(max(diff.size, 1))
        g = g.astype(diff.dtype, copy=False)
        return (g if self.needs_input_grad[0] else None,
                -g if self.needs_input_grad[1] else None)


def cross_entropy(logits, labels, label_smoothing: float = 0.0, reduction: str = "mean",
                  ignore_index: int | None = None):
    """Softmax cross-entropy from raw logits and integer labels (like torch's cross_entropy).

    logits (N, C) with labels (N,), or (N, C, H, W) with labels (N, H, W) for segmentation.
    ``reduction``: "mean" (over all non-ignored labels), "sum" or "none" (per element).
    ``ignore_index``: a label value (e.g. 255 for VOC borders) that contributes nothing.
    """
    return CrossEntropy(label_smoothing, reduction, ignore_index).apply(logits, labels)


def mse(y, t, reduction: str = "mean"):
    """Mean squared error; ``t`` may be a constant array or a Variable."""
    return MSE(reduction).apply(y, t)
