"""Per-class IoU and Dice for segmentation, exact over ranks: every rank adds its shard's
confusion matrix, one allreduce sums them, and the scores come from the total.

    report = segmentation_report(model, test_set)     # every rank gets the same dict
    report["iou"], report["dice"]                     # (K,) per class; NaN for a class absent
                                                      # from both truth and prediction
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import no_grad
from ..data.loader import DataLoader
from ..data.sampler import ShardSampler


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts, [true class, predicted class]. pred, truth: int arrays, same shape."""
    pred, truth = np.asarray(pred).ravel(), np.asarray(truth).ravel()
    flat = truth.astype(np.int64) * num_classes + pred.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores_from_confusion(cm: np.ndarray) -> dict:
    """Per-class IoU = TP / (TP + FP + FN) and Dice = 2 TP / (2 TP + FP + FN) (NaN when 0 / 0),
    their means over classes present, and pixel accuracy."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp, fn = cm.sum(axis=0) - tp, cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
        dice = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return {
        "iou": iou,
        "dice": dice,
        "mean_iou": float(np.nanmean(iou)),
        "mean_dice": float(np.nanmean(dice)),
        "pixel_accuracy": float(tp.sum() / max(cm.sum(), 1)),
    }


def segmentation_report(model, data, batch_size: int = 64) -> dict:
    """Confusion matrix of ``model`` on ``data`` (ArrayDataset or file-backed), summed over ranks,
    and the scores of ``scores_from_confusion``; uses the eval transform given to ``fit``."""
    k = int(data.num_classes)
    comm = model.comm
    sampler = ShardSampler(len(data), batch_size, comm.rank, comm.size)
    cm = np.zeros((k, k), dtype=np.int64)
    model.network.eval()
    with no_grad():
        for x, y, _ in DataLoader(
            data, sampler, prefetch=1, transform=getattr(model, "eval_transform", None)
        ):
            if int(x.shape[0]) == 0:
                continue
            pred = backend.to_numpy(model._predict_forward(x).data.argmax(axis=1))
            cm += confusion_matrix(pred, backend.to_numpy(y), k)
    model.network.train()
    if comm.size > 1:  # float64 holds exact integers to 2**53 pixels
        cm = np.rint(np.asarray(comm.allreduce_obj(cm.astype(np.float64), op="sum"))).astype(
            np.int64
        )
    return {"confusion": cm, **scores_from_confusion(cm)}


def format_report(report: dict, class_names=None) -> str:
    names = class_names or [str(i) for i in range(len(report["iou"]))]
    rows = zip(names, report["iou"], report["dice"], strict=True)
    per = ", ".join(f"{n}: IoU {i:.4f} Dice {d:.4f}" for n, i, d in rows)
    return (
        f"per class: {per}; mean IoU {report['mean_iou']:.4f}, mean Dice "
        f"{report['mean_dice']:.4f}, pixel accuracy {report['pixel_accuracy']:.4f}"
    )
