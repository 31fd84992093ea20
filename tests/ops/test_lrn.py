"""Local response normalisation and elementwise maximum: forward against per-channel float64
NumPy loops, backward against float64 numerical gradients, and LRN against torch when present."""
import numpy as np
import pytest

from mpinet import nn
from mpinet.autograd import Variable
from mpinet.ops.lrn import local_response_norm
from mpinet.ops.maximum import maximum
from mpinet.testing import check_backward, check_forward, check_gpu_matches_cpu


def lrn_reference(x, size, alpha, beta, k):
    """One channel at a time: the window [c - (size-1)//2, c + size//2] clipped to [0, C)."""
    y = np.empty_like(x)
    channels = x.shape[1]
    for c in range(channels):
        lo, hi = max(0, c - (size - 1) // 2), min(channels, c + size // 2 + 1)
        s = k + alpha / size * (x[:, lo:hi] ** 2).sum(axis=1)
        y[:, c] = x[:, c] * s ** -beta
    return y


CASES = [  # (shape, size, alpha, beta, k)
    ((2, 7, 3, 4), 5, 1e-1, 0.75, 1.0),     # AlexNet/Caffe-style odd window
    ((2, 3, 2, 2), 5, 0.5, 0.6, 2.0),       # window wider than the channels
    ((1, 6, 3, 3), 4, 0.3, 0.75, 1.5),      # even window: ONNX's placement
    ((3, 4, 5), 3, 1.0, 0.5, 1.0),          # (N, C, L)
]


@pytest.mark.parametrize("shape,size,alpha,beta,k", CASES)
def test_lrn_forward_matches_reference(shape, size, alpha, beta, k):
    x = np.random.default_rng(0).standard_normal(shape) * 2
    check_forward(lambda v: local_response_norm(v, size, alpha, beta, k),
                  lambda a: lrn_reference(a, size, alpha, beta, k), [x], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("shape,size,alpha,beta,k", CASES)
def test_lrn_backward_matches_numerical(shape, size, alpha, beta, k):
    x = np.random.default_rng(1).standard_normal(shape)
    check_backward(lambda v: local_response_norm(v, size, alpha, beta, k), [x])


def test_lrn_layer_matches_torch_for_odd_sizes():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).standard_normal((2, 9, 4, 4)).astype(np.float32)
    layer = nn.LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=2.0)
    want = torch.nn.LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=2.0)(torch.from_numpy(x))
    np.testing.assert_allclose(layer(Variable(x)).data, want.numpy(), atol=1e-6, rtol=1e-6)


def test_lrn_refuses_bad_arguments():
    with pytest.raises(ValueError, match="size must be a positive int"):
        nn.LocalResponseNorm(0)
    with pytest.raises(ValueError, match="LocalResponseNorm: expected input"):
        nn.LocalResponseNorm(3)(Variable(np.zeros((2, 3), np.float32)))


def test_maximum_forward_and_backward():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    check_forward(maximum, np.maximum, [a, b], atol=0, rtol=0)
    check_backward(maximum, [a, b])
    check_backward(maximum, [a, rng.standard_normal((3, 1))])  # broadcasting


def test_maximum_ties_go_to_the_first_operand():
    a = Variable(np.ones(3), requires_grad=True)
    b = Variable(np.ones(3), requires_grad=True)
    maximum(a, b).backward(np.full(3, 2.0))
    np.testing.assert_array_equal(a.grad, [2, 2, 2])
    np.testing.assert_array_equal(b.grad, [0, 0, 0])


@pytest.mark.gpu
def test_lrn_gpu_matches_cpu():
    x = np.random.default_rng(4).standard_normal((2, 7, 5, 5)).astype(np.float32)
    check_gpu_matches_cpu(lambda v: local_response_norm(v, 5, 1e-1, 0.75, 1.0), [x])
