"""Nearest/bilinear upsampling against PyTorch's formulas, evaluated pixel by pixel."""
import math
import os

import numpy as np
import pytest

from mpinet.autograd import Variable
from mpinet.ops.upsample import upsample
from mpinet.testing import check_backward, check_forward, check_gpu_matches_cpu


def _source(o, n_in, n_out, scale_factor, mode, align_corners):
    """PyTorch's source coordinate of output index o (upsample kernels, ATen)."""
    scale = 1.0 / scale_factor if scale_factor else n_in / n_out
    if mode == "nearest":
        return min(int(math.floor(o * scale + 1e-9)), n_in - 1)
    if align_corners:
        return o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return max((o + 0.5) * scale - 0.5, 0.0)


def upsample_reference(x, scale_factor, mode, align_corners):
    n, c, h, w = x.shape
    oh, ow = int(h * scale_factor), int(w * scale_factor)
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            si = _source(i, h, oh, scale_factor, mode, align_corners)
            sj = _source(j, w, ow, scale_factor, mode, align_corners)
            if mode == "nearest":
                y[:, :, i, j] = x[:, :, si, sj]
                continue
            i0, j0 = int(si), int(sj)
            i1, j1 = min(i0 + 1, h - 1), min(j0 + 1, w - 1)
            li, lj = si - i0, sj - j0
            y[:, :, i, j] = ((1 - li) * ((1 - lj) * x[:, :, i0, j0] + lj * x[:, :, i0, j1])
                             + li * ((1 - lj) * x[:, :, i1, j0] + lj * x[:, :, i1, j1]))
    return y


MODES = [("nearest", False), ("bilinear", False), ("bilinear", True)]


@pytest.mark.parametrize("mode,align", MODES)
@pytest.mark.parametrize("scale", [2, 3, 1.5])
def test_upsample_forward_matches_formulas(mode, align, scale):
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 5))
    check_forward(lambda x: upsample(x, scale, mode, align),
                  lambda x: upsample_reference(x, scale, mode, align), [x], atol=1e-12)


@pytest.mark.parametrize("mode,align", MODES)
@pytest.mark.parametrize("scale", [2, 1.5])
def test_upsample_backward_matches_numerical_gradients(mode, align, scale):
    x = np.random.default_rng(1).standard_normal((1, 2, 3, 4))
    check_backward(lambda x: upsample(x, scale, mode, align), [x])


def test_bilinear_known_values_from_pytorch():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    # torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    want = np.array([[1.0, 1.25, 1.75, 2.0], [1.5, 1.75, 2.25, 2.5],
                     [2.5, 2.75, 3.25, 3.5], [3.0, 3.25, 3.75, 4.0]])
    np.testing.assert_allclose(upsample(x, 2, "bilinear").data[0, 0], want, atol=1e-12)
    third = 1.0 / 3.0  # align_corners=True: corners fixed, even spacing
    row0 = np.array([1.0, 1 + third, 2 - third, 2.0])
    want_ac = np.stack([row0 + 2 * t for t in (0, third, 2 * third, 1.0)])
    np.testing.assert_allclose(upsample(x, 2, "bilinear", True).data[0, 0], want_ac, atol=1e-12)
    np.testing.assert_array_equal(upsample(x, 2).data[0, 0],
                                  np.repeat(np.repeat(x[0, 0], 2, 0), 2, 1))


def test_size_argument_and_float32():
    x = np.random.default_rng(2).standard_normal((1, 3, 4, 4)).astype(np.float32)
    v = Variable(x, requires_grad=True)
    y = upsample(v, mode="bilinear", size=(7, 9))
    assert y.shape == (1, 3, 7, 9) and y.dtype == np.float32
    y.backward(np.ones(y.shape, np.float32))
    assert v.grad.dtype == np.float32
    # Bilinear weights of each output sum to 1, so the total gradient equals the output count.
    np.testing.assert_allclose(v.grad.sum(), 3 * 7 * 9, rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="bicubic"), "mode must be one of"),
    (dict(mode="nearest", align_corners=True), "only applies to mode='bilinear'"),
    (dict(scale_factor=0), "scale_factor must be a positive number"),
    (dict(scale_factor=0.1), "must be two positive ints"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        upsample(np.zeros((1, 1, 4, 4)), **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("mode,align", MODES)
def test_upsample_gpu_matches_cpu(mode, align):
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 6)).astype(np.float32)
    # The interpolation runs as cuBLAS matmuls: TF32 (CUPY_TF32=1) keeps only ~3 digits.
    tol = 2e-3 if os.environ.get("CUPY_TF32") == "1" else 1e-5
    check_gpu_matches_cpu(lambda x: upsample(x, 2, mode, align), [x], atol=tol, rtol=tol)


@pytest.mark.parametrize("mode,align,scale", [("nearest", False, 2), ("nearest", False, 3),
                                              ("bilinear", False, 2), ("bilinear", False, 1.5),
                                              ("bilinear", True, 2), ("bilinear", True, 1.5)])
def test_upsample_matches_torch(mode, align, scale):
    torch = pytest.importorskip("torch")
    from test_conv import _torch_compare

    x = np.random.default_rng(4).standard_normal((2, 2, 4, 5))
    _torch_compare(lambda x: upsample(x, scale, mode, align),
                   lambda x: torch.nn.functional.interpolate(
                       x, scale_factor=scale, mode=mode,
                       align_corners=align if mode == "bilinear" else None), [x])
