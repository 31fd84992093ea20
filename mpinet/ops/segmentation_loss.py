"""Segmentation losses built from differentiable ops (autograd gives the gradients): soft Dice,
binary cross-entropy with logits, class-weighted cross-entropy, and their sum.

All take logits (N, K, H, W) and labels (N, H, W) int class ids (``bce_with_logits`` also takes
float targets of the logits' shape) and return the mean over samples of a per-sample loss, so
the data-parallel weighting by local / global sample count gives the exact global mean (a Dice
pooled over the whole batch would not split over ranks).

class_weights (K,): per-class weights. Dice: a weighted mean of the per-class Dice losses.
Cross-entropy: pixel losses weighted by their true class's weight (not renormalised: the loss
of a sample stays a plain mean over its pixels, so ranks add up exactly).
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Variable
from . import activation, arith
from . import loss as loss_ops

SEGMENTATION_LOSSES = ("cross_entropy", "dice", "bce", "dice+ce")


def _one_hot(labels, num_classes: int, dtype):
    """labels (N, H, W) int -> (N, K, H, W) one-hot constant array of dtype."""
    xp = backend.xp_of(labels)
    classes = xp.arange(num_classes).reshape(1, num_classes, 1, 1)
    return (labels[:, None] == classes).astype(dtype)


def _labels_array(labels):
    return labels.data if isinstance(labels, Variable) else labels


def _check(logits, labels, class_weights):
    labels = _labels_array(labels)
    if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"segmentation losses need logits (N, K, H, W) and labels (N, H, W); got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    k = logits.shape[1]
    if class_weights is not None:
        w = np.asarray(class_weights, dtype=np.float64).reshape(-1)
        if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"class_weights must be {k} non-negative numbers (one per class), "
                f"not all zero; got {list(w)}"
            )
        return labels, w
    return labels, None


def dice_loss(logits, labels, class_weights=None, smooth: float = 1.0):
    """Mean over samples of 1 - (weighted) mean over classes of the soft Dice
    (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth), p = softmax over classes."""
    labels, w = _check(logits, labels, class_weights)
    k = logits.shape[1]
    xp = backend.xp_of(logits.data)
    probs = activation.softmax(logits, axis=1)  # (N, K, H, W)
    target = _one_hot(labels, k, logits.dtype)
    inter = arith.sum(probs * target, axis=(2, 3))  # (N, K)
    denom = arith.sum(probs, axis=(2, 3)) + xp.asarray(target.sum(axis=(2, 3)))
    dice = (inter * 2.0 + smooth) / (denom + smooth)  # (N, K)
    weights = xp.asarray(
        (w if w is not None else np.ones(k)) / (w.sum() if w is not None else k), dtype=logits.dtype
    )
    per_sample = arith.sum(dice * weights.reshape(1, k), axis=1)  # (N,)
    return arith.mean(1.0 - per_sample)


def bce_with_logits(logits, targets, pos_weight=None):
    """Mean binary cross-entropy of sigmoid(logits): ``mpinet.ops.loss``'s stable op, after the
    targets (labels or floats, the logits' shape) are made an array of the logits' dtype."""
    t = _labels_array(targets)
    if tuple(t.shape) != tuple(logits.shape):
        raise ValueError(
            f"bce_with_logits: targets {tuple(t.shape)} must match logits {tuple(logits.shape)}"
        )
    return loss_ops.binary_cross_entropy_with_logits(
        logits, t.astype(logits.dtype), pos_weight=pos_weight
    )


def weighted_cross_entropy(logits, labels, class_weights=None):
    """Mean over samples of the mean over pixels of -w[y] log softmax(logits)[y]."""
    labels, w = _check(logits, labels, class_weights)
    k = logits.shape[1]
    xp = backend.xp_of(logits.data)
    target = _one_hot(labels, k, logits.dtype)
    if w is not None:
        target = target * xp.asarray(w, dtype=logits.dtype).reshape(1, k, 1, 1)
    logp = activation.log_softmax(logits, axis=1)
    return arith.mean(-arith.sum(logp * target, axis=1))


def segmentation_loss(name: str, class_weights=None):
    """A loss callable(logits, labels) for ``Model.compile(loss=...)`` by name: cross_entropy
    (class-weighted), dice, bce (binary: K = 1 logit against labels in {0, 1}, or K = 2 with
    the foreground logit minus the background one), dice+ce (the sum)."""
    if name not in SEGMENTATION_LOSSES:
        raise ValueError(
            f"segmentation loss {name!r} is unknown; choose one of: "
            f"{', '.join(SEGMENTATION_LOSSES)}"
        )

    def loss(logits, labels):
        labels = _labels_array(labels)
        if name == "cross_entropy":
            return weighted_cross_entropy(logits, labels, class_weights)
        if name == "dice":
            return dice_loss(logits, labels, class_weights)
        if name == "dice+ce":
            return dice_loss(logits, labels, class_weights) + weighted_cross_entropy(
                logits, labels, class_weights
            )
        k = logits.shape[1]
        if k not in (1, 2):
            raise ValueError(f"bce is for binary masks (1 or 2 output channels), the model has {k}")
        fg = logits[:, 0] if k == 1 else logits[:, 1] - logits[:, 0]
        pos = None if class_weights is None else float(class_weights[-1]) / float(class_weights[0])
        return bce_with_logits(fg, (labels > 0).astype(logits.dtype), pos_weight=pos)

    loss.__name__ = f"segmentation_loss_{name}"
    return loss
