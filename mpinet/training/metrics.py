"""Losses and metrics as sums: each rank sums over its samples, one allreduce adds the ranks'
sums, and a figure is a global sum divided by a global count — so 1, 2 or 4 ranks report the
same numbers, and each sample counts exactly once."""
from __future__ import annotations

import numpy as np

from .. import amp, backend
from ..autograd import Variable
from ..data import arrays as data_arrays
from ..ops import loss as loss_ops

LOSSES = tuple(loss_ops.LOSS_FUNCTIONS)  # the names of mpinet.ops.loss's registry
METRICS = ("accuracy", "iou", "mae")


def check_names(loss, metrics) -> None:
    """Raise ValueError for a loss or metric name this module does not know."""
    if loss not in LOSSES and not callable(loss):
        raise ValueError(f"loss must be one of {LOSSES} or a callable(output, target), got "
                         f"{loss!r}")
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metrics {bad}; available: {METRICS}")


def compute_loss(loss, out: Variable, y, label_smoothing: float = 0.0,
                 ignore_index: int | None = None) -> Variable:
    """``loss`` (a name of LOSSES or a callable(output, target)) of ``out`` against ``y``, in fp32.

    ``ignore_index``: the target value of padded steps (SequenceDataset's per-step targets),
    which the class-label losses skip; None otherwise (counting the valid labels would cost a
    host sync per step on the GPU). Elementwise losses take targets shaped like the output
    ((N,) targets for an (N, 1) output are reshaped; anything else mismatched is refused)."""
    if out.dtype != np.float32 and out.dtype.kind == "f":
        out = amp.cast(out, np.dtype(np.float32))  # losses in fp32
    if callable(loss):
        return loss(out, y)
    if loss == "cross_entropy":
        return loss_ops.cross_entropy(out, y, label_smoothing=label_smoothing,
                                      ignore_index=ignore_index)
    if loss in data_arrays.CLASS_LABEL_LOSSES:
        return loss_ops.LOSS_FUNCTIONS[loss](out, y, ignore_index=ignore_index)
    return loss_ops.LOSS_FUNCTIONS[loss](out, Variable(data_arrays.regression_target(out, y, loss)))


def metric_sums(metrics, out, y) -> dict:
    """Per-batch sums (not means) as device scalars: reduced over ranks, divided by counts."""
    xp = backend.xp_of(out)
    sums = {}
    if "accuracy" in metrics:
        # In samples' worth: for segmentation each sample contributes its pixel fraction.
        per_sample = int(np.prod(y.shape[1:])) if y.ndim > 1 else 1
        sums["correct"] = (out.argmax(axis=1) == y).sum() / per_sample
    if "iou" in metrics:  # foreground (class > 0) intersection and union, summed
        pred_fg, true_fg = out.argmax(axis=1) > 0, y > 0
        sums["intersection"] = (pred_fg & true_fg).sum()
        sums["union"] = (pred_fg | true_fg).sum()
    if "mae" in metrics:  # in samples' worth: the mean over each sample's elements
        per_sample = max(int(np.prod(y.shape[1:])), 1)
        sums["abs_err"] = xp.abs(out.reshape(y.shape) - y).sum() / per_sample
    return sums


def reduce_sums(comm, sums: dict) -> dict:
    """The sums over every rank, as host floats (one host sync and one small allreduce)."""
    keys = sorted(sums)
    local = np.array([float(backend.to_numpy(sums[k])) for k in keys], dtype=np.float64)
    # A NumPy array, so the object reduction adds elementwise (a list would concatenate).
    total = comm.allreduce_obj(local, op="sum") if comm.size > 1 else local
    return dict(zip(keys, np.asarray(total, dtype=np.float64).tolist(), strict=True))


def logs_from_sums(sums: dict, count: int) -> dict:
    """The logged figures (loss, accuracy, iou, mae) from global sums over ``count`` samples."""
    logs = {}
    if "loss" in sums:
        logs["loss"] = sums["loss"] / max(count, 1)
    if "correct" in sums:
        logs["accuracy"] = sums["correct"] / max(count, 1)
    if "intersection" in sums:
        logs["iou"] = sums["intersection"] / max(sums["union"], 1)
    if "abs_err" in sums:
        logs["mae"] = sums["abs_err"] / max(count, 1)
    return logs
