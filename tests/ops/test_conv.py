"""conv2d and conv_transpose2d against direct-loop float64 oracles and numerical gradients."""
import numpy as np
import pytest

from mpinet.autograd import Variable
from mpinet.ops.conv import conv2d, conv_transpose2d
from mpinet.testing import check_backward, check_forward, check_gpu_matches_cpu


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def conv2d_reference(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """Cross-correlation by definition: one dot product per output position (no im2col)."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xpad = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xpad[:, :, ph:ph + h, pw:pw + wd] = x
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    y = np.zeros((n, o, oh, ow))
    for co in range(o):
        ci = (co // og) * cg  # first input channel of this output channel's group
        for i in range(oh):
            for j in range(ow):
                for a in range(kh):
                    for bb in range(kw):
                        patch = xpad[:, ci:ci + cg, i * sh + a * dh, j * sw + bb * dw]  # (N, cg)
                        y[:, co, i, j] += patch @ w[co, :, a, bb]
        if b is not None:
            y[:, co] += b[co]
    return y


def conv_transpose2d_reference(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1,
                               dilation=1):
    """Transposed convolution by definition: every input pixel scatters w-weighted copies."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    oph, opw = _pair(output_padding)
    n, cin, h, wd = x.shape
    _, cog, kh, kw = w.shape
    cout, cig = cog * groups, cin // groups
    oh = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    ow = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    full = np.zeros((n, cout, oh + 2 * ph + kh * dh + sh, ow + 2 * pw + kw * dw + sw))
    for ci in range(cin):
        g = ci // cig
        for co_local in range(cog):
            co = g * cog + co_local
            for i in range(h):
                for j in range(wd):
                    for a in range(kh):
                        for bb in range(kw):
                            full[:, co, i * sh + a * dh, j * sw + bb * dw] += (
                                x[:, ci, i, j] * w[ci, co_local, a, bb])
    y = full[:, :, ph:ph + oh, pw:pw + ow]
    if b is not None:
        y = y + b[None, :, None, None]
    return y


CONV_CASES = [  # (x shape, w shape, options)
    ((2, 3, 6, 5), (4, 3, 3, 3), {}),
    ((2, 2, 7, 6), (3, 2, 3, 3), dict(stride=2, padding=1)),
    ((1, 2, 8, 7), (2, 2, 3, 2), dict(dilation=2, padding=(2, 1))),
    ((2, 4, 5, 5), (6, 2, 3, 3), dict(groups=2, padding=1)),
    ((2, 3, 6, 6), (6, 1, 3, 3), dict(groups=3, stride=2, padding=1)),  # depthwise, multiplier 2
    ((1, 2, 7, 8), (3, 2, 3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))),
    ((2, 3, 5, 4), (2, 3, 1, 1), dict(stride=2)),
    ((1, 1, 9, 9), (2, 1, 5, 5), dict(padding=2)),  # LeNet-style first layer
]

TRANSPOSED_CASES = [  # (x shape, w shape (in, out/groups, kh, kw), options)
    ((2, 3, 4, 3), (3, 2, 3, 3), {}),
    ((1, 2, 3, 4), (2, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ((2, 4, 3, 3), (4, 1, 2, 2), dict(stride=2, groups=2)),  # U-Net style 2x2 stride 2
    ((1, 2, 3, 3), (2, 2, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=2,
                                      output_padding=(1, 1))),
    ((1, 4, 3, 2), (4, 2, 3, 3), dict(groups=4, stride=3, padding=1, output_padding=2)),
]


def _inputs(rng, x_shape, w_shape, bias_size):
    return (rng.standard_normal(x_shape), rng.standard_normal(w_shape),
            rng.standard_normal(bias_size))


@pytest.mark.parametrize("x_shape,w_shape,opts", CONV_CASES)
def test_conv2d_forward_matches_direct_loops(x_shape, w_shape, opts):
    x, w, b = _inputs(np.random.default_rng(1), x_shape, w_shape, w_shape[0])
    check_forward(lambda x, w, b: conv2d(x, w, b, **opts),
                  lambda x, w, b: conv2d_reference(x, w, b, **opts), [x, w, b], atol=1e-12)
    check_forward(lambda x, w: conv2d(x, w, **opts),
                  lambda x, w: conv2d_reference(x, w, **opts), [x, w], atol=1e-12)


@pytest.mark.parametrize("x_shape,w_shape,opts", CONV_CASES)
def test_conv2d_backward_matches_numerical_gradients(x_shape, w_shape, opts):
    x, w, b = _inputs(np.random.default_rng(2), x_shape, w_shape, w_shape[0])
    check_backward(lambda x, w, b: conv2d(x, w, b, **opts), [x, w, b])


@pytest.mark.parametrize("x_shape,w_shape,opts", TRANSPOSED_CASES)
def test_conv_transpose2d_forward_matches_scatter_definition(x_shape, w_shape, opts):
    groups = opts.get("groups", 1)
    x, w, b = _inputs(np.random.default_rng(3), x_shape, w_shape, w_shape[1] * groups)
    check_forward(lambda x, w, b: conv_transpose2d(x, w, b, **opts),
                  lambda x, w, b: conv_transpose2d_reference(x, w, b, **opts), [x, w, b],
                  atol=1e-12)


@pytest.mark.parametrize("x_shape,w_shape,opts", TRANSPOSED_CASES)
def test_conv_transpose2d_backward_matches_numerical_gradients(x_shape, w_shape, opts):
    groups = opts.get("groups", 1)
    x, w, b = _inputs(np.random.default_rng(4), x_shape, w_shape, w_shape[1] * groups)
    check_backward(lambda x, w, b: conv_transpose2d(x, w, b, **opts), [x, w, b])


def test_conv_transpose2d_is_the_adjoint_of_conv2d():
    # <conv2d(x, w), y> == <x, conv_transpose2d(y, w)> for the same stride/padding/dilation/groups.
    rng = np.random.default_rng(5)
    opts = dict(stride=2, padding=1, dilation=1, groups=2)
    x, w = rng.standard_normal((2, 4, 7, 7)), rng.standard_normal((6, 2, 3, 3))
    y = rng.standard_normal(conv2d(x, w, **opts).shape)
    lhs = np.sum(conv2d(x, w, **opts).data * y)
    rhs = np.sum(x * conv_transpose2d(y, w, **opts).data)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


def test_float32_stays_float32_and_matches_float64():
    rng = np.random.default_rng(6)
    x, w, b = _inputs(rng, (4, 3, 10, 10), (8, 3, 3, 3), 8)
    xv, wv, bv = (Variable(a.astype(np.float32), requires_grad=True) for a in (x, w, b))
    y = conv2d(xv, wv, bv, stride=2, padding=1)
    assert y.dtype == np.float32
    y.backward(np.ones(y.shape, np.float32))
    assert xv.grad.dtype == wv.grad.dtype == bv.grad.dtype == np.float32
    np.testing.assert_allclose(y.data, conv2d_reference(x, w, b, stride=2, padding=1),
                               rtol=1e-4, atol=1e-4)


def test_input_that_needs_no_gradient_gets_none():
    rng = np.random.default_rng(7)
    x = Variable(rng.standard_normal((1, 2, 5, 5)))  # data: no gradient wanted
    w = Variable(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    conv2d(x, w).sum().backward()
    assert x.grad is None and w.grad is not None


@pytest.mark.parametrize("call,match", [
    (lambda: conv2d(np.zeros((1, 3, 5, 5)), np.zeros((4, 2, 3, 3))),
     r"input has 3 channels but weight \(4, 2, 3, 3\)"),
    (lambda: conv2d(np.zeros((1, 4, 5, 5)), np.zeros((3, 2, 3, 3)), groups=2),
     "divisible by groups=2"),
    (lambda: conv2d(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 3, 3))),
     r"output size \(0, 0\) is not positive"),
    (lambda: conv2d(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), np.zeros(2)),
     r"bias must have shape \(1,\)"),
    (lambda: conv2d(np.zeros((1, 1, 5, 5), np.float32), np.zeros((1, 1, 3, 3))),
     "input dtype float32 differs from weight dtype float64"),
    (lambda: conv2d(np.zeros((1, 5, 5)), np.zeros((1, 1, 3, 3))), r"4-D \(N, C, H, W\)"),
    (lambda: conv2d(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), stride=0),
     "stride must be >= 1"),
    (lambda: conv_transpose2d(np.zeros((1, 3, 4, 4)), np.zeros((2, 3, 3, 3))),
     r"input has 3 channels but weight \(2, 3, 3, 3\) expects 2"),
    (lambda: conv_transpose2d(np.zeros((1, 2, 4, 4)), np.zeros((2, 3, 3, 3)), stride=2,
                              output_padding=2), "output_padding"),
])
def test_bad_shapes_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- GPU: cuDNN path against the NumPy im2col path ----------------------------------------
@pytest.fixture
def cudnn_fp32(monkeypatch):
    """cuDNN in true fp32 (no TF32), so fp32 tolerances apply; heuristic plans (no per-shape
    benchmarking) keep these many small shapes quick."""
    from mpinet.kernels import cudnn

    monkeypatch.setattr(cudnn, "allow_tf32", False)
    monkeypatch.setattr(cudnn, "benchmark", False)


def _float32(*arrays):
    return [a.astype(np.float32) for a in arrays]


@pytest.mark.gpu
@pytest.mark.parametrize("x_shape,w_shape,opts", CONV_CASES + [
    ((8, 16, 16, 16), (32, 16, 3, 3), dict(padding=1)),
    ((4, 32, 15, 15), (32, 1, 3, 3), dict(groups=32, stride=2, padding=1)),
])
def test_conv2d_gpu_matches_cpu(cudnn_fp32, x_shape, w_shape, opts):
    x, w, b = _float32(*_inputs(np.random.default_rng(8), x_shape, w_shape, w_shape[0]))
    check_gpu_matches_cpu(lambda x, w, b: conv2d(x, w, b, **opts), [x, w, b],
                          atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("x_shape,w_shape,opts", TRANSPOSED_CASES + [
    ((4, 32, 8, 8), (32, 16, 2, 2), dict(stride=2)),
])
def test_conv_transpose2d_gpu_matches_cpu(cudnn_fp32, x_shape, w_shape, opts):
    groups = opts.get("groups", 1)
    x, w, b = _float32(*_inputs(np.random.default_rng(9), x_shape, w_shape,
                                w_shape[1] * groups))
    check_gpu_matches_cpu(lambda x, w, b: conv_transpose2d(x, w, b, **opts), [x, w, b],
                          atol=1e-4, rtol=1e-4)


# ---- PyTorch, where it is installed (the GPU machine), as a second oracle -----------------
def _torch_compare(ours, theirs, inputs):
    """Forward and input gradients of ``ours`` (mpinet) and ``theirs`` (torch) in float64."""
    torch = pytest.importorskip("torch")
    variables = [Variable(a.copy(), requires_grad=True) for a in inputs]
    y = ours(*variables)
    gy = np.random.default_rng(11).standard_normal(y.shape)
    y.backward(gy)
    tensors = [torch.tensor(a, requires_grad=True) for a in inputs]
    ty = theirs(*tensors)
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), atol=1e-10, rtol=1e-10)
    for v, t in zip(variables, tensors, strict=True):
        np.testing.assert_allclose(v.grad, t.grad.numpy(), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("x_shape,w_shape,opts", CONV_CASES)
def test_conv2d_matches_torch(x_shape, w_shape, opts):
    torch = pytest.importorskip("torch")
    inputs = _inputs(np.random.default_rng(12), x_shape, w_shape, w_shape[0])
    _torch_compare(lambda x, w, b: conv2d(x, w, b, **opts),
                   lambda x, w, b: torch.nn.functional.conv2d(x, w, b, **opts), inputs)


@pytest.mark.parametrize("x_shape,w_shape,opts", TRANSPOSED_CASES)
def test_conv_transpose2d_matches_torch(x_shape, w_shape, opts):
    torch = pytest.importorskip("torch")
    groups = opts.get("groups", 1)
    inputs = _inputs(np.random.default_rng(13), x_shape, w_shape, w_shape[1] * groups)
    _torch_compare(lambda x, w, b: conv_transpose2d(x, w, b, **opts),
                   lambda x, w, b: torch.nn.functional.conv_transpose2d(x, w, b, **opts), inputs)
