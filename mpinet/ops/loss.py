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


# ---- elementwise losses: BCE, BCE with logits, L1, SmoothL1, Huber, KL, and NLL -------------
class _PointwiseLoss(Function):
    """A loss that is a sum/mean of per-element terms l(y, t), with dl/dy known in closed form.

    Subclasses define ``pointwise(y, t) -> (l, dl_dy)`` on raw arrays (computed in >= float32).
    Targets are constants (no gradient), as in every training use of these losses.
    """

    op = "loss"

    def __init__(self, reduction: str):
        _check_reduction(self.op, reduction)
        self.reduction = reduction

    def forward(self, y, t):
        if tuple(y.shape) != tuple(t.shape):
            raise ValueError(f"{self.op}: input shape {tuple(y.shape)} and target shape "
                             f"{tuple(t.shape)} differ; they must match")
        dtype = _loss_dtype(y)
        loss, dy = self.pointwise(y.astype(dtype, copy=False), t.astype(dtype, copy=False))
        self.save(dy)
        self.y_dtype = y.dtype
        return _reduce(loss, self.reduction)

    def backward(self, gy):
        (dy,) = self.saved
        if self.reduction == "mean":
            g = dy * (gy.astype(dy.dtype) / dy.dtype.type(max(dy.size, 1)))
        else:
            g = dy * gy.astype(dy.dtype)
        return g.astype(self.y_dtype, copy=False), None

    def pointwise(self, y, t):
        raise NotImplementedError


def _reduce(loss, reduction: str):
    if reduction == "none":
        return loss
    xp = backend.xp_of(loss)
    return xp.asarray(loss.mean() if reduction == "mean" else loss.sum())


class BCE(_PointwiseLoss):
    """-(t log p + (1 - t) log(1 - p)) of probabilities p, logs clamped at -100 (as torch)."""

    op = "binary_cross_entropy"

    def pointwise(self, p, t):
        xp = backend.xp_of(p)
        if p.size and bool(((p < 0) | (p > 1)).any()):
            raise ValueError(f"{self.op}: input must be probabilities in [0, 1] (apply sigmoid "
                             f"first, or use binary_cross_entropy_with_logits); got values in "
                             f"[{float(p.min())}, {float(p.max())}]")
        log_p = xp.maximum(xp.log(p), -100)
        log_1p = xp.maximum(xp.log1p(-p), -100)
        loss = -(t * log_p + (1 - t) * log_1p)
        eps = p.dtype.type(1e-12)  # torch's clamp of the gradient's denominator
        grad = (p - t) / xp.maximum((1 - p) * p, eps)
        return loss, grad


class BCEWithLogits(_PointwiseLoss):
    """BCE of sigmoid(x) from logits x, stably; ``pos_weight`` weighs the positive term
    (torch's: loss = (1 - t) x + (1 + (pos_weight - 1) t) softplus(-x))."""

    op = "binary_cross_entropy_with_logits"

    def __init__(self, reduction: str, pos_weight=None):
        super().__init__(reduction)
        self.pos_weight = pos_weight

    def pointwise(self, x, t):
        xp = backend.xp_of(x)
        softplus_neg = xp.log1p(xp.exp(-xp.abs(x))) + xp.maximum(-x, 0)  # log(1 + e^-x)
        sig_neg = xp.exp(-(softplus_neg + x))  # sigmoid(-x) = exp(-softplus(x)), softplus(x) >= 0
        if self.pos_weight is None:
            log_weight = 1
        else:
            pw = xp.asarray(self.pos_weight, dtype=x.dtype)
            log_weight = 1 + (pw - 1) * t
        loss = (1 - t) * x + log_weight * softplus_neg
        return loss, (1 - t) - log_weight * sig_neg


class L1(_PointwiseLoss):
    op = "l1"

    def pointwise(self, y, t):
        xp = backend.xp_of(y)
        d = y - t
        return xp.abs(d), xp.sign(d)


class SmoothL1(_PointwiseLoss):
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (torch's SmoothL1Loss)."""

    op = "smooth_l1"

    def __init__(self, reduction: str, beta: float = 1.0):
        super().__init__(reduction)
        if beta < 0:
            raise ValueError(f"smooth_l1: beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def pointwise(self, y, t):
        xp = backend.xp_of(y)
        d = y - t
        a = xp.abs(d)
        if self.beta == 0:
            return a, xp.sign(d)
        small = a < self.beta
        beta = y.dtype.type(self.beta)
        return xp.where(small, 0.5 * d * d / beta, a - 0.5 * beta), \
            xp.where(small, d / beta, xp.sign(d))


class Huber(_PointwiseLoss):
    """0.5 d^2 where |d| <= delta, else delta (|d| - 0.5 delta) (torch's HuberLoss)."""

    op = "huber"

    def __init__(self, reduction: str, delta: float = 1.0):
        super().__init__(reduction)
        if delta <= 0:
            raise ValueError(f"huber: delta must be > 0, got {delta}")
        self.delta = float(delta)

    def pointwise(self, y, t):
        xp = backend.xp_of(y)
        d = y - t
        a = xp.abs(d)
        delta = y.dtype.type(self.delta)
        small = a <= delta
        return xp.where(small, 0.5 * d * d, delta * (a - 0.5 * delta)), \
            xp.where(small, d, delta * xp.sign(d))


class KLDiv(_PointwiseLoss):
    """KL divergence from log-probabilities ``x`` to target probabilities ``t`` (or
    log-probabilities with ``log_target``): t (log t - x), 0 where t = 0 (torch's kl_div).
    ``reduction="batchmean"`` divides the sum by the batch size (the true KL per sample)."""

    op = "kl_div"

    def __init__(self, reduction: str, log_target: bool = False):
        self.batchmean = reduction == "batchmean"
        super().__init__("sum" if self.batchmean else reduction)
        self.log_target = log_target

    def forward(self, x, t):
        out = super().forward(x, t)
        if self.batchmean:
            self.batch = max(int(x.shape[0]) if x.ndim else 1, 1)
            out = out / out.dtype.type(self.batch)
        return out

    def backward(self, gy):
        if self.batchmean:
            gy = gy / gy.dtype.type(self.batch)
        return super().backward(gy)

    def pointwise(self, x, t):
        xp = backend.xp_of(x)
        if self.log_target:
            return xp.exp(t) * (t - x), -xp.exp(t)
        log_t = xp.log(xp.where(t > 0, t, 1))
        return xp.where(t > 0, t * (log_t - x), 0), -t


class NLL(Function):
    """Negative log-likelihood of log-probabilities (N, C, ...) at integer labels (N, ...);
    labels equal to ``ignore_index`` add nothing and are not counted by the mean."""

    def __init__(self, reduction: str, ignore_index: int | None):
        _check_reduction("nll", reduction)
        self.reduction, self.ignore_index = reduction, ignore_index

    def forward(self, logp, labels):
        xp = backend.xp_of(logp)
        _check_shapes(logp, labels)
        valid = None if self.ignore_index is None else labels != self.ignore_index
        _check_label_range(labels, valid, logp.shape[1])
        safe = labels if valid is None else xp.where(valid, labels, 0)
        idx = xp.expand_dims(safe.astype(np.int64, copy=False), 1)
        loss = -xp.take_along_axis(logp.astype(_loss_dtype(logp), copy=False), idx, 1).squeeze(1)
        if valid is not None:
            loss = loss * valid
        self.count = max(int(valid.sum()) if valid is not None else loss.size, 1)
        self.save(idx, valid)
        self.in_shape, self.in_dtype = logp.shape, logp.dtype
        if self.reduction == "none":
            return loss
        total = loss.sum()
        return xp.asarray(total / total.dtype.type(self.count) if self.reduction == "mean"
                          else total)

    def backward(self, gy):
        idx, valid = self.saved
        xp = backend.xp_of(idx)
        scale = gy.astype(np.float64 if self.in_dtype == np.float64 else np.float32)
        if self.reduction == "mean":
            scale = scale / scale.dtype.type(self.count)
        per = xp.broadcast_to(scale, idx.squeeze(1).shape).astype(scale.dtype)
        if valid is not None:
            per = per * valid
        grad = xp.zeros(self.in_shape, per.dtype)
        xp.put_along_axis(grad, idx, -xp.expand_dims(per, 1), axis=1)
        return grad.astype(self.in_dtype, copy=False), None


def binary_cross_entropy(p, t, reduction: str = "mean"):
    """BCE of probabilities ``p`` in [0, 1] against targets ``t`` (floats in [0, 1])."""
    return BCE(reduction).apply(p, t)


def binary_cross_entropy_with_logits(x, t, reduction: str = "mean", pos_weight=None):
    """BCE of sigmoid(x), computed stably from logits; ``pos_weight`` (scalar or per class,
    broadcast over the last axis) multiplies the positive term."""
    return BCEWithLogits(reduction, pos_weight).apply(x, t)


def l1(y, t, reduction: str = "mean"):
    """Mean absolute error |y - t|."""
    return L1(reduction).apply(y, t)


def smooth_l1(y, t, reduction: str = "mean", beta: float = 1.0):
    return SmoothL1(reduction, beta).apply(y, t)


def huber(y, t, reduction: str = "mean", delta: float = 1.0):
    return Huber(reduction, delta).apply(y, t)


def kl_div(log_q, p, reduction: str = "mean", log_target: bool = False):
    """KL(p || q) terms from log-probabilities ``log_q`` and target probabilities ``p``;
    reduction "mean" (over elements, torch's default), "batchmean", "sum" or "none"."""
    return KLDiv(reduction, log_target).apply(log_q, p)


def nll(log_probs, labels, reduction: str = "mean", ignore_index: int | None = -100):
    """Negative log-likelihood of log-probabilities (N, C, ...) (e.g. from log_softmax)."""
    return NLL(reduction, ignore_index).apply(log_probs, labels)


# Loss names for Model.compile(loss=...) and the CLI: name -> fn(output, target).
LOSS_FUNCTIONS = {
    "cross_entropy": cross_entropy,
    "mse": mse,
    "nll": nll,
    "bce": binary_cross_entropy,
    "bce_with_logits": binary_cross_entropy_with_logits,
    "l1": l1,
    "mae": l1,
    "smooth_l1": smooth_l1,
    "huber": huber,
    "kl_div": kl_div,
}
