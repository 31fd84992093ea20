"""Pooling ops against per-window float64 oracles and numerical gradients."""
import math

import numpy as np
import pytest

from mpinet.autograd import Variable
from mpinet.ops.pool import adaptive_avg_pool2d, avg_pool2d, global_avg_pool2d, max_pool2d
from mpinet.testing import check_backward, check_forward, check_gpu_matches_cpu


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _out_len(n, k, s, p, ceil_mode):
    o = (math.ceil if ceil_mode else math.floor)((n + 2 * p - k) / s) + 1
    if ceil_mode and (o - 1) * s >= n + p:
        o -= 1
    return o


def pool_reference(x, kind, kernel_size, stride=None, padding=0, ceil_mode=False):
    """PyTorch's definitions, one window at a time: window = [o*s - p, o*s - p + k) clipped to
    the input; avg divides by the window clipped to the padded input (count_include_pad)."""
    (kh, kw) = _pair(kernel_size)
    (sh, sw) = _pair(stride if stride is not None else kernel_size)
    (ph, pw) = _pair(padding)
    n, c, h, w = x.shape
    oh, ow = _out_len(h, kh, sh, ph, ceil_mode), _out_len(w, kw, sw, pw, ceil_mode)
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * sh - ph, j * sw - pw
            window = x[:, :, max(h0, 0):min(h0 + kh, h), max(w0, 0):min(w0 + kw, w)]
            if kind == "max":
                y[:, :, i, j] = window.max(axis=(2, 3))
            else:
                count = (min(h0 + kh, h + ph) - h0) * (min(w0 + kw, w + pw) - w0)
                y[:, :, i, j] = window.sum(axis=(2, 3)) / count
    return y


CASES = [  # (x shape, kernel, stride, padding, ceil_mode)
    ((2, 3, 6, 6), 2, None, 0, False),
    ((2, 2, 7, 7), 3, 2, 1, False),        # overlapping windows with padding (ResNet stem)
    ((1, 2, 7, 6), 3, 2, 0, True),         # ceil_mode (SqueezeNet)
    ((1, 2, 6, 7), (3, 2), (1, 2), (1, 1), False),
    ((2, 1, 5, 5), 3, 1, 1, False),        # stride 1: heavy overlap
    ((1, 2, 8, 7), 3, 2, 1, True),         # ceil_mode with padding: clipped last windows
]


@pytest.mark.parametrize("kind,op", [("max", max_pool2d), ("avg", avg_pool2d)])
@pytest.mark.parametrize("shape,k,s,p,ceil", CASES)
def test_pool_forward_matches_windows(kind, op, shape, k, s, p, ceil):
    x = np.random.default_rng(0).standard_normal(shape)
    check_forward(lambda x: op(x, k, s, p, ceil), lambda x: pool_reference(x, kind, k, s, p, ceil),
                  [x], atol=1e-12)


@pytest.mark.parametrize("op", [max_pool2d, avg_pool2d])
@pytest.mark.parametrize("shape,k,s,p,ceil", CASES)
def test_pool_backward_matches_numerical_gradients(op, shape, k, s, p, ceil):
    x = np.random.default_rng(1).standard_normal(shape)  # distinct values: no ties
    check_backward(lambda x: op(x, k, s, p, ceil), [x])


def test_max_pool_ties_send_the_gradient_to_the_first_maximum():
    x = Variable(np.ones((1, 1, 4, 4)), requires_grad=True)
    max_pool2d(x, 2).sum().backward()
    want = np.zeros((4, 4))
    want[::2, ::2] = 1.0  # top-left of each 2x2 window
    np.testing.assert_array_equal(x.grad[0, 0], want)


def test_max_pool_padding_never_wins():
    x = -np.ones((1, 1, 3, 3)) * 5.0  # all negative: a zero pad would win
    np.testing.assert_array_equal(max_pool2d(x, 3, 2, 1).data, -5.0)


def test_max_pool_overlapping_windows_accumulate_gradient():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0  # the centre is the maximum of all four 2x2 windows (stride 1)
    v = Variable(x, requires_grad=True)
    max_pool2d(v, 2, 1).sum().backward()
    assert v.grad[0, 0, 1, 1] == 4.0 and v.grad.sum() == 4.0


def test_global_avg_pool():
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5))
    check_forward(global_avg_pool2d, lambda x: x.mean(axis=(2, 3)), [x], atol=1e-12)
    check_backward(global_avg_pool2d, [x])


@pytest.mark.parametrize("out", [1, 2, (3, 1), (None, 2)])
def test_adaptive_avg_pool_divisible(out):
    x = np.random.default_rng(3).standard_normal((2, 2, 6, 4))
    oh, ow = (out, out) if isinstance(out, int) else out
    oh, ow = oh or 6, ow or 4

    def reference(x):
        return x.reshape(2, 2, oh, 6 // oh, ow, 4 // ow).mean(axis=(3, 5))

    check_forward(lambda x: adaptive_avg_pool2d(x, out), reference, [x], atol=1e-12)
    check_backward(lambda x: adaptive_avg_pool2d(x, out), [x])


def test_float32_stays_float32():
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for op in (lambda v: max_pool2d(v, 3, 2, 1), lambda v: avg_pool2d(v, 2),
               global_avg_pool2d, lambda v: adaptive_avg_pool2d(v, 2)):
        v = Variable(x, requires_grad=True)
        y = op(v)
        y.backward(np.ones(y.shape, np.float32))
        assert y.dtype == np.float32 and v.grad.dtype == np.float32


@pytest.mark.parametrize("call,match", [
    (lambda: max_pool2d(np.zeros((1, 1, 4, 4)), 3, 1, 2), "at most half the kernel"),
    (lambda: avg_pool2d(np.zeros((1, 1, 2, 2)), 3), r"output size \(0, 0\) is not positive"),
    (lambda: max_pool2d(np.zeros((4, 4)), 2), r"4-D \(N, C, H, W\)"),
    (lambda: adaptive_avg_pool2d(np.zeros((1, 1, 7, 7)), 2), r"\(7, 7\) is not divisible"),
    (lambda: global_avg_pool2d(np.zeros((1, 4))), r"4-D"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.gpu
@pytest.mark.parametrize("shape,k,s,p,ceil", CASES)
def test_pools_gpu_match_cpu(shape, k, s, p, ceil):
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    for op in (max_pool2d, avg_pool2d):
        check_gpu_matches_cpu(lambda x, op=op: op(x, k, s, p, ceil), [x], atol=1e-6, rtol=1e-6)
    check_gpu_matches_cpu(global_avg_pool2d, [x], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape,k,s,p,ceil", CASES)
def test_pools_match_torch(shape, k, s, p, ceil):
    torch = pytest.importorskip("torch")
    from test_conv import _torch_compare

    x = np.random.default_rng(6).standard_normal(shape)
    F = torch.nn.functional
    _torch_compare(lambda x: max_pool2d(x, k, s, p, ceil),
                   lambda x: F.max_pool2d(x, k, s, p, ceil_mode=ceil), [x])
    _torch_compare(lambda x: avg_pool2d(x, k, s, p, ceil),
                   lambda x: F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=True), [x])
