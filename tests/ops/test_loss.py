import math

import numpy as np
import pytest

from mpinet.autograd import Variable
from mpinet.ops import loss as Lo
from mpinet.testing import check_backward, check_forward, check_gpu_matches_cpu

rng = np.random.default_rng(0)


def _ce_ref(logits, labels, smoothing=0.0, reduction="mean", ignore_index=None):
    """Oracle: per element, loop over positions with an explicit log-sum-exp."""
    x = np.moveaxis(logits, 1, -1).reshape(-1, logits.shape[1])  # (M, C)
    y = labels.reshape(-1)
    losses, count = [], 0
    for row, label in zip(x, y, strict=True):
        if ignore_index is not None and label == ignore_index:
            losses.append(0.0)
            continue
        count += 1
        m = row.max()
        logp = row - (m + math.log(sum(math.exp(v - m) for v in row)))
        losses.append((1 - smoothing) * -logp[label] + smoothing * -logp.mean())
    losses = np.array(losses)
    if reduction == "none":
        return losses.reshape(labels.shape)
    return np.array(losses.sum() / (count if reduction == "mean" else 1))


@pytest.mark.parametrize("logits_shape", [(6, 5), (2, 4, 3, 3)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_forward_and_backward(logits_shape, smoothing, reduction):
    logits = rng.standard_normal(logits_shape) * 3
    labels = rng.integers(0, logits_shape[1], (logits_shape[0],) + logits_shape[2:])

    def fn(x, t):
        return Lo.cross_entropy(x, t, label_smoothing=smoothing, reduction=reduction)

    check_forward(fn, lambda x, t: _ce_ref(x, t, smoothing, reduction), [logits, labels],
                  atol=1e-12, rtol=1e-12)
    check_backward(fn, [logits, labels])


def test_label_smoothing_against_a_hand_computed_value():
    # logits (0, ln 3) -> p = (1/4, 3/4); label 0, eps = 0.1:
    # loss = 0.9 * -ln(1/4) + 0.1 * mean(-ln(1/4), -ln(3/4))
    logits = np.array([[0.0, math.log(3.0)]])
    want = 0.9 * math.log(4) + 0.05 * (math.log(4) + math.log(4 / 3))
    got = Lo.cross_entropy(logits, np.array([0]), label_smoothing=0.1).item()
    assert got == pytest.approx(want, rel=1e-14)


def test_ignore_index_drops_positions_from_sum_and_mean():
    logits = rng.standard_normal((2, 3, 2, 2))
    labels = np.array([[[0, 255], [2, 1]], [[255, 255], [1, 0]]])
    check_forward(lambda x, t: Lo.cross_entropy(x, t, ignore_index=255),
                  lambda x, t: _ce_ref(x, t, ignore_index=255), [logits, labels],
                  atol=1e-12, rtol=1e-12)
    # Labels bound in the closure: testing.numerical_grads also nudges integer inputs, and
    # 255 - 1e-6 stored in an int array becomes 254.
    check_backward(lambda x: Lo.cross_entropy(x, labels, ignore_index=255), [logits])


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4 + 2.0, -1e4]], dtype=np.float32)
    labels = np.array([0, 0])
    x = Variable(logits, requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss = Lo.cross_entropy(x, labels, reduction="none")
        loss.backward(np.ones(2, np.float32))
    np.testing.assert_allclose(loss.data, [0.0, 2.0 + math.log1p(2 * math.exp(-2.0))],
                               rtol=1e-6, atol=1e-6)
    assert np.isfinite(x.grad).all()
    np.testing.assert_allclose(x.grad.sum(axis=1), 0.0, atol=1e-6)  # softmax - onehot


def test_half_precision_logits_give_a_float32_loss_and_half_gradient():
    x = Variable(rng.standard_normal((4, 10)).astype(np.float16), requires_grad=True)
    loss = Lo.cross_entropy(x, np.arange(4))
    assert loss.dtype == np.float32
    loss.backward()
    assert x.grad.dtype == np.float16


@pytest.mark.parametrize("bad", [5, -1])
def test_out_of_range_label_names_value_and_num_classes(bad):
    with pytest.raises(ValueError, match=rf"label {bad} is out of range for num_classes=5"):
        Lo.cross_entropy(np.zeros((3, 5)), np.array([0, bad, 1]))


def test_label_shape_and_dtype_errors():
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 3, 3\).*got \(2, 3\)"):
        Lo.cross_entropy(np.zeros((2, 4, 3, 3)), np.zeros((2, 3), np.int64))
    with pytest.raises(TypeError, match="integer class indices.*float64"):
        Lo.cross_entropy(np.zeros((2, 4)), np.zeros(2))
    with pytest.raises(ValueError, match="reduction must be one of"):
        Lo.cross_entropy(np.zeros((2, 4)), np.zeros(2, np.int64), reduction="avg")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse(reduction):
    y, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    agg = {"mean": np.mean, "sum": np.sum, "none": lambda a: a}[reduction]
    check_forward(lambda a, b: Lo.mse(a, b, reduction), lambda a, b: np.asarray(agg((a - b) ** 2)),
                  [y, t])
    check_backward(lambda a, b: Lo.mse(a, b, reduction), [y, t])
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(3, 4\)"):
        Lo.mse(y, t.T)


@pytest.mark.gpu
@pytest.mark.parametrize("logits_shape", [(64, 10), (2, 5, 8, 8)])
def test_cross_entropy_gpu_matches_cpu(logits_shape):
    logits = rng.standard_normal(logits_shape).astype(np.float32)
    labels = rng.integers(0, logits_shape[1], (logits_shape[0],) + logits_shape[2:])
    check_gpu_matches_cpu(lambda x, t: Lo.cross_entropy(x, t, label_smoothing=0.1),
                          [logits, labels])


@pytest.mark.gpu
def test_mse_gpu_matches_cpu():
    y, t = rng.standard_normal((8, 5)).astype(np.float32), rng.standard_normal((8, 5))
    check_gpu_matches_cpu(lambda a, b: Lo.mse(a, b), [y, t.astype(np.float32)])
