import math

import numpy as np
import pytest

from mpinet.ops import activation as A
from mpinet.testing import check_backward, check_forward, check_gpu_matches_cpu

rng = np.random.default_rng(0)


def _away_from_zero(shape):
    """Values with |x| >= 0.1, so numerical gradients never straddle the kink at 0."""
    x = rng.uniform(0.1, 3.0, shape)
    return x * rng.choice([-1.0, 1.0], shape)


_erf = np.vectorize(math.erf)


def _softmax_ref(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


CASES = {
    "relu": (A.relu, lambda x: np.where(x > 0, x, 0.0)),
    "leaky_relu": (lambda x: A.leaky_relu(x, 0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
    "sigmoid": (A.sigmoid, lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (A.tanh, lambda x: (np.exp(2 * x) - 1) / (np.exp(2 * x) + 1)),
    # GELU's oracle: Python's erf, elementwise (the op uses its own erfc expansion).
    "gelu": (A.gelu, lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_elementwise_forward_and_backward(name):
    fn, ref = CASES[name]
    x = _away_from_zero((3, 4, 5))
    check_forward(fn, ref, [x], atol=1e-12, rtol=1e-12)
    check_backward(fn, [x])


@pytest.mark.parametrize("w_shape", [(4,), (1,)])
def test_prelu_per_channel_and_shared(w_shape):
    x, w = _away_from_zero((2, 4, 3, 3)), rng.uniform(0.05, 0.5, w_shape)

    def ref(x, w):
        wb = w.reshape(1, -1, 1, 1) if w.size > 1 else w
        return np.where(x > 0, x, wb * x)

    check_forward(A.prelu, ref, [x, w])
    check_backward(A.prelu, [x, w])


def test_prelu_wrong_channel_count_is_named():
    with pytest.raises(ValueError, match=r"4 slopes.*\(N, 4, \.\.\.\).*\(2, 3, 5\)"):
        A.prelu(np.ones((2, 3, 5)), np.ones(4))


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_and_log_softmax(axis, log):
    x = rng.standard_normal((3, 4, 5))
    fn = (lambda v: A.log_softmax(v, axis)) if log else (lambda v: A.softmax(v, axis))
    ref = (lambda v: np.log(_softmax_ref(v, axis))) if log else (lambda v: _softmax_ref(v, axis))
    check_forward(fn, ref, [x], atol=1e-12, rtol=1e-12)
    check_backward(fn, [x])


def test_large_inputs_stay_finite_without_overflow_warnings():
    x = np.array([[-1e4, 0.0, 1e4], [800.0, 799.0, -800.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow is fine
        s = A.sigmoid(x).data
        ls = A.log_softmax(x).data
        sm = A.softmax(x).data
        g = A.gelu(x).data
    np.testing.assert_array_equal(s[0], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(ls[1], [-np.log1p(np.exp(-1.0)), -1 - np.log1p(np.exp(-1.0)),
                                       -1600 - np.log1p(np.exp(-1.0))], rtol=1e-12)
    np.testing.assert_allclose(sm.sum(axis=1), 1.0)
    np.testing.assert_array_equal(g[0], [0.0, 0.0, 1e4])


def test_normal_cdf_matches_math_erfc_including_the_far_tail():
    x = np.concatenate([np.linspace(-38, 38, 4001), [0.0, -1e-9, 1e-9]])
    want = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    tiny = want > 1e-300  # relative accuracy wherever the value is representable
    got = A.normal_cdf(x)
    np.testing.assert_allclose(got[tiny], want[tiny], rtol=1e-12)
    # float32: compare against the exact value at the float32-rounded input; in the far tail
    # the rounding of x*x inside exp(-x*x/2) alone costs ~1e-5 relative.
    x32 = x.astype(np.float32)
    want32 = np.array([0.5 * math.erfc(-float(v) / math.sqrt(2)) for v in x32])
    got32 = A.normal_cdf(x32).astype(np.float64)
    near, tail = np.abs(x) <= 5, (np.abs(x) > 5) & (want32 > 1e-37)
    np.testing.assert_allclose(got32[near], want32[near], rtol=2e-6)
    np.testing.assert_allclose(got32[tail], want32[tail], rtol=3e-5)


def _add_relu_operands(shape):
    """(a, b) with |a + b| >= 0.05 everywhere: no numerical gradient straddles the kink."""
    a = _away_from_zero(shape)
    return a, rng.uniform(-0.05, 0.05, shape)


def test_add_relu_forward_and_backward():
    a, b = _add_relu_operands((3, 4, 5))
    check_forward(A.add_relu, lambda a, b: np.maximum(a + b, 0), [a, b], atol=0, rtol=0)
    check_backward(A.add_relu, [a, b])


def test_add_relu_refuses_broadcasting_by_name():
    with pytest.raises(ValueError, match=r"add_relu: .*\(2, 3\).*\(3,\).*relu\(a \+ b\)"):
        A.add_relu(np.ones((2, 3)), np.ones(3))


def test_half_precision_inputs_are_computed_in_float32():
    x = np.linspace(-6, 6, 49).astype(np.float16)
    for fn in (A.gelu, A.sigmoid, A.softmax, A.log_softmax):
        y = fn(x).data
        assert y.dtype == np.float16 and np.isfinite(y).all()
    np.testing.assert_allclose(A.gelu(x).data.astype(np.float64),
                               CASES["gelu"][1](x.astype(np.float64)), atol=4e-3, rtol=4e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_gpu_matches_cpu(name, dtype):
    x = _away_from_zero((8, 16, 6, 6)).astype(dtype)
    check_gpu_matches_cpu(CASES[name][0], [x], atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_relu_gpu_matches_cpu(dtype):
    a, b = (v.astype(dtype) for v in _add_relu_operands((8, 16, 6, 6)))
    check_gpu_matches_cpu(A.add_relu, [a, b], atol=1e-6, rtol=1e-6)


@pytest.mark.gpu
def test_prelu_softmax_gpu_matches_cpu():
    x, w = _away_from_zero((4, 6, 5, 5)).astype(np.float32), np.full(6, 0.25, np.float32)
    check_gpu_matches_cpu(A.prelu, [x, w])
    check_gpu_matches_cpu(lambda v: A.softmax(v, 1), [x])
    check_gpu_matches_cpu(lambda v: A.log_softmax(v, -1), [x])
