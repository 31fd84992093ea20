"""Segmentation losses against float64 NumPy references and numerical gradients."""

import numpy as np
import pytest

from mpinet.autograd import Variable
from mpinet.ops import segmentation_loss as sl
from mpinet.testing import check_backward, check_forward

RNG = np.random.default_rng(0)
LOGITS = RNG.standard_normal((2, 3, 4, 5))
LABELS = RNG.integers(0, 3, size=(2, 4, 5))
WEIGHTS = np.array([0.5, 1.0, 2.0])


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def dice_ref(x, labels, w=None, smooth=1.0):
    p = softmax(x)
    t = np.eye(x.shape[1])[labels].transpose(0, 3, 1, 2)
    dice = (2 * (p * t).sum(axis=(2, 3)) + smooth) / (
        p.sum(axis=(2, 3)) + t.sum(axis=(2, 3)) + smooth
    )
    w = np.ones(x.shape[1]) if w is None else w
    return np.mean(1 - (dice * w).sum(axis=1) / w.sum())


def ce_ref(x, labels, w=None):
    logp = np.log(softmax(x))
    picked = np.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
    w = np.ones(x.shape[1]) if w is None else w
    return np.mean(-w[labels] * picked)


def bce_ref(x, t, pos=None):
    sp_pos, sp_neg = np.logaddexp(0, x), np.logaddexp(0, -x)
    pos = 1.0 if pos is None else pos
    return np.mean(pos * t * sp_neg + (1 - t) * sp_pos)


@pytest.mark.parametrize("w", [None, WEIGHTS])
def test_dice_and_weighted_ce_forward_and_backward(w):
    check_forward(
        lambda x: sl.dice_loss(x, LABELS, w), lambda x: np.asarray(dice_ref(x, LABELS, w)), [LOGITS]
    )
    check_backward(lambda x: sl.dice_loss(x, LABELS, w), [LOGITS])
    check_forward(
        lambda x: sl.weighted_cross_entropy(x, LABELS, w),
        lambda x: np.asarray(ce_ref(x, LABELS, w)),
        [LOGITS],
    )
    check_backward(lambda x: sl.weighted_cross_entropy(x, LABELS, w), [LOGITS])


@pytest.mark.parametrize("pos", [None, 3.0])
def test_bce_with_logits_is_stable_and_correct(pos):
    x = RNG.standard_normal((2, 4, 5)) * 5
    x[0, 0, 0], x[0, 0, 1] = 80.0, -80.0  # exp(80) would overflow float32 in the naive form
    t = (RNG.random((2, 4, 5)) < 0.5).astype(np.float64)
    check_forward(
        lambda v: sl.bce_with_logits(v, t, pos), lambda v: np.asarray(bce_ref(v, t, pos)), [x]
    )
    check_backward(lambda v: sl.bce_with_logits(v, t, pos), [x])
    big = sl.bce_with_logits(Variable(np.array([80.0, -80.0], np.float32)), np.array([0.0, 1.0]))
    assert np.isfinite(big.data) and abs(float(big.data) - 80.0) < 1e-3


def test_named_losses_and_bad_inputs():
    two = RNG.standard_normal((2, 2, 4, 5))
    binary = (LABELS > 0).astype(np.int64)
    got = sl.segmentation_loss("bce")(Variable(two), binary).data
    np.testing.assert_allclose(got, bce_ref(two[:, 1] - two[:, 0], binary.astype(float)), rtol=1e-7)
    got = sl.segmentation_loss("dice+ce", WEIGHTS)(Variable(LOGITS), LABELS).data
    np.testing.assert_allclose(
        got, dice_ref(LOGITS, LABELS, WEIGHTS) + ce_ref(LOGITS, LABELS, WEIGHTS)
    )
    with pytest.raises(ValueError, match="choose one of"):
        sl.segmentation_loss("focal")
    with pytest.raises(ValueError, match="3 non-negative numbers"):
        sl.dice_loss(Variable(LOGITS), LABELS, [1.0, 2.0])
    with pytest.raises(ValueError, match="binary masks"):
        sl.segmentation_loss("bce")(Variable(LOGITS), LABELS)
