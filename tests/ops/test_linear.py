import numpy as np
import pytest

from mpinet.ops import linear as L
from mpinet.testing import check_backward, check_forward, check_gpu_matches_cpu

rng = np.random.default_rng(0)


def _ref(x, w, b=None):
    # Oracle by explicit sums (independent of the op's matmul layout).
    y = np.einsum("...i,oi->...o", x, w)
    return y if b is None else y + b


@pytest.mark.parametrize("x_shape", [(5, 4), (2, 3, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_and_backward(x_shape, bias):
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal((3, 4)), rng.standard_normal(3)
    inputs = [x, w, b] if bias else [x, w]
    check_forward(lambda *a: L.linear(*a), _ref, inputs)
    check_backward(lambda *a: L.linear(*a), inputs)


def test_linear_shape_errors_name_the_sizes():
    w = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"in_features=4.*\(5, 6\)"):
        L.linear(np.zeros((5, 6)), w)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\).*\(4,\)"):
        L.linear(np.zeros((5, 4)), w, np.zeros(4))
    with pytest.raises(ValueError, match="2-D"):
        L.linear(np.zeros((5, 4)), np.zeros(4))


def test_linear_keeps_bfloat16_compute_dtype():
    from mpinet import backend
    bf16 = backend.bfloat16()
    x, w = np.ones((2, 4), bf16), np.ones((3, 4), bf16)
    assert L.linear(x, w).dtype == bf16


@pytest.mark.gpu
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gpu_matches_cpu(bias):
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((16, 32), (8, 32), (8,)))
    check_gpu_matches_cpu(lambda *a: L.linear(*a), [x, w, b] if bias else [x, w])
