"""The GPU kernels (mpinet.kernels, and the optimizers' mpinet.optim.kernels) against NumPy
float64 formulas, in float32, float64, float16 and bfloat16; the optimizer kernels also against
torch.optim where torch is installed."""
import math

import numpy as np
import pytest

# Importing the kernels loads no CUDA; the cp fixture skips where cupy is missing.
from mpinet.kernels import activation, batch_norm, elementwise
from mpinet.optim import kernels as optim_kernels

pytestmark = pytest.mark.gpu

DTYPES = ["float32", "float64", "float16", "bfloat16"]
# relative tolerance on results stored in each dtype (computation is float32/float64 inside)
RTOL = {"float32": 1e-5, "float64": 1e-12, "float16": 2e-3, "bfloat16": 1.6e-2}


@pytest.fixture
def cp():
    return pytest.importorskip("cupy")




def _dtype(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _gpu(cp, a, dtname):
    """(GPU array of dtype, the values it holds in float64)."""
    host = np.asarray(a).astype(_dtype(dtname))
    return cp.asarray(host), host.astype(np.float64)


def _host(a):
    return np.asarray(a.get()).astype(np.float64)


def _close(got, want, dtname, scale=None, what="", factor=1.0):
    """|got - want| <= factor * rtol * (|want| + scale); scale defaults to max |want| / 100 so
    values near zero are judged against the data's magnitude."""
    g = _host(got)
    assert g.shape == want.shape, f"{what}: shape {g.shape} != {want.shape}"
    scale = np.max(np.abs(want)) / 100 if scale is None else scale
    bad = np.abs(g - want) > factor * RTOL[dtname] * (np.abs(want) + scale)
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} differ; worst "
                           f"{np.max(np.abs(g - want))} at {np.argmax(np.abs(g - want))}")


_erf = np.vectorize(math.erf)


@pytest.mark.parametrize("dtname", DTYPES)
def test_activation_kernels(cp, dtname):
    rng = np.random.default_rng(0)
    shape = (3, 5, 7, 11)
    x, x64 = _gpu(cp, rng.standard_normal(shape) * 2, dtname)
    gy, gy64 = _gpu(cp, rng.standard_normal(shape), dtname)
    y_relu, r64 = _gpu(cp, np.maximum(x64, 0), dtname)
    y_sig, s64 = _gpu(cp, 1 / (1 + np.exp(-x64)), dtname)
    y_tanh, t64 = _gpu(cp, np.tanh(x64), dtname)

    out = activation.relu_backward(y_relu, gy)
    assert out.dtype == gy.dtype and out.shape == shape
    _close(out, np.where(r64 > 0, gy64, 0.0), dtname, what="relu_backward")
    _close(activation.sigmoid_backward(y_sig, gy), gy64 * s64 * (1 - s64), dtname,
           what="sigmoid_backward")
    _close(activation.tanh_backward(y_tanh, gy), gy64 * (1 - t64 * t64), dtname,
           what="tanh_backward")

    cdf = 0.5 * (1 + _erf(x64 / math.sqrt(2)))
    pdf = np.exp(-0.5 * x64 * x64) / math.sqrt(2 * math.pi)
    _close(activation.gelu_forward(x), x64 * cdf, dtname, what="gelu_forward")
    _close(activation.gelu_backward(x, gy), gy64 * (cdf + x64 * pdf), dtname, what="gelu_backward")


def test_bfloat16_rounding_is_nearest_even(cp):
    """The in-kernel float32 -> bfloat16 rounding of the ElementwiseKernels agrees bit for bit
    with ml_dtypes: an SGD step p - 1.0 * g of two bfloat16 values is exact in float32 and
    rarely representable in bfloat16. (cast_into checks the raw kernels' rounding.)"""
    bf16 = _dtype("bfloat16")
    rng = np.random.default_rng(1)
    x = (np.abs(rng.standard_normal(4096)) * 10 + 1).astype(bf16)
    b = (rng.standard_normal(4096) * 0.01).astype(bf16)
    got = cp.asarray(x)
    optim_kernels.sgd_update_(got, cp.asarray(b), None, 1.0)
    assert got.dtype == bf16
    want = (x.astype(np.float32) - b.astype(np.float32)).astype(bf16)
    np.testing.assert_array_equal(np.asarray(got.get()).view(np.uint16), want.view(np.uint16))


def _bn_ref(x64, gamma, beta, eps):
    axes = (0, 2, 3) if x64.ndim == 4 else (0,)
    shape = (1, -1, 1, 1) if x64.ndim == 4 else (1, -1)
    mean = x64.mean(axis=axes)
    var = x64.var(axis=axes)
    invstd = 1 / np.sqrt(var + eps)
    xhat = (x64 - mean.reshape(shape)) * invstd.reshape(shape)
    return xhat * gamma.reshape(shape) + beta.reshape(shape), mean, invstd, xhat, axes, shape


TWO_LAUNCH_SHAPES = ((40, 3, 30, 30), (36, 2, 31, 31))  # channels above batch_norm.ONE_BLOCK_MAX


def stat_tol_of(dtname):
    return 1e-12 if dtname == "float64" else 2e-6


@pytest.mark.parametrize("dtname", DTYPES)
@pytest.mark.parametrize("shape,offset", [((8, 6, 5, 7), 0.0), ((32, 16, 4, 4), 0.0),
                                          ((64, 12), 0.0), ((16, 4, 33, 33), 1000.0),
                                          ((3, 5, 1, 1), 0.0),
                                          ((40, 3, 30, 30), 0.0),      # > ONE_BLOCK_MAX per
                                          ((36, 2, 31, 31), 1000.0)])  # channel: 2 launches
def test_batch_norm_train_and_backward(cp, dtname, shape, offset):
    one_block = shape[0] * int(np.prod(shape[2:])) <= batch_norm.ONE_BLOCK_MAX
    assert one_block == (shape not in TWO_LAUNCH_SHAPES)  # both kernel families are covered
    rng = np.random.default_rng(2)
    eps = 1e-5
    c = shape[1]
    x, x64 = _gpu(cp, rng.standard_normal(shape) * 3 + offset + rng.standard_normal(
        (1, c) + (1,) * (len(shape) - 2)), dtname)
    gamma64 = rng.standard_normal(c)
    beta64 = rng.standard_normal(c)
    pdt = cp.float64 if dtname == "float64" else cp.float32  # parameters: float32 masters
    gamma, beta = cp.asarray(gamma64, dtype=pdt), cp.asarray(beta64, dtype=pdt)
    gamma64, beta64 = _host(gamma), _host(beta)

    rm0 = cp.asarray(rng.standard_normal(c), dtype=pdt)
    rv0 = cp.asarray(rng.random(c) + 0.5, dtype=pdt)
    rm0_host, rv0_host = _host(rm0), _host(rv0)
    y, mean, invstd, rm1, rv1 = batch_norm.batch_norm_train(x, gamma, beta, eps, rm0, rv0, 0.3)
    y_ref, m_ref, is_ref, xhat, axes, pshape = _bn_ref(x64, gamma64, beta64, eps)
    # Running statistics from the same launch: PyTorch's rule with the unbiased variance,
    # written in place (the arrays given are the arrays returned: CUDA graphs replay on them).
    m = x64.size // c
    assert rm1 is rm0 and rv1 is rv0
    assert rm1.dtype == rm0.dtype and rv1.dtype == rv0.dtype
    np.testing.assert_allclose(_host(rm1), 0.7 * rm0_host + 0.3 * m_ref, rtol=stat_tol_of(dtname),
                               atol=10 * stat_tol_of(dtname) * (1 + offset))
    np.testing.assert_allclose(_host(rv1), 0.7 * rv0_host + 0.3 * x64.var(axis=axes) * m / (m - 1),
                               rtol=20 * stat_tol_of(dtname))
    y2, _, _, none_m, none_v = batch_norm.batch_norm_train(x, gamma, beta, eps)
    assert none_m is None and none_v is None
    np.testing.assert_array_equal(_host(y2), _host(y))
    stat_dtype = np.float64 if dtname == "float64" else np.float32
    assert y.dtype == x.dtype and mean.dtype == stat_dtype and invstd.dtype == stat_dtype
    stat_tol = stat_tol_of(dtname)
    np.testing.assert_allclose(_host(mean), m_ref, rtol=stat_tol, atol=stat_tol * 10)
    np.testing.assert_allclose(_host(invstd), is_ref, rtol=20 * stat_tol)
    # x - mean loses ~|mean| * 2^-24 in float32 (as in any float32 implementation)
    loose = 1 + offset / 100
    _close(y, y_ref, dtname, scale=1.0, what="batch_norm_train y", factor=loose)

    gy, gy64 = _gpu(cp, rng.standard_normal(shape), dtname)
    gx, ggamma, gbeta = batch_norm.batch_norm_backward(x, gy, gamma, mean, invstd)
    gb_ref = gy64.sum(axis=axes)
    gg_ref = (gy64 * xhat).sum(axis=axes)
    gx_ref = (gamma64 * is_ref).reshape(pshape) * (
        gy64 - gb_ref.reshape(pshape) / m - xhat * gg_ref.reshape(pshape) / m)
    assert gx.dtype == x.dtype and ggamma.dtype == gamma.dtype
    tol = 1e-10 if dtname == "float64" else 1e-4
    np.testing.assert_allclose(_host(gbeta), gb_ref, rtol=tol, atol=tol * np.sqrt(m))
    np.testing.assert_allclose(_host(ggamma), gg_ref, rtol=tol, atol=tol * np.sqrt(m))
    _close(gx, gx_ref, dtname, scale=np.max(np.abs(gx_ref)) / 10, what="batch_norm_backward gx",
           factor=loose)

    rm, rv = cp.asarray(m_ref, dtype=pdt), cp.asarray(1 / is_ref**2 - eps, pdt)
    y_inf = batch_norm.batch_norm_infer(x, gamma, beta, rm, rv, eps)
    _close(y_inf, (x64 - _host(rm).reshape(pshape)) / np.sqrt(_host(rv).reshape(pshape) + eps)
           * gamma64.reshape(pshape) + beta64.reshape(pshape), dtname, scale=1.0,
           what="batch_norm_infer", factor=loose)

    # ReLU fused in: exactly the separate relu kernel's values and mask, both kernel families;
    # the layer's batch counter is incremented by the same launch.
    batches = cp.asarray(np.int64(41))
    y_r, *_ = batch_norm.batch_norm_train(x, gamma, beta, eps, relu=True,
                                          num_batches_tracked=batches)
    assert int(batches) == 42
    other = cp.zeros((1,), cp.int32)  # not the kernel's int64: counted outside the kernel
    batch_norm.batch_norm_train(x, gamma, beta, eps, num_batches_tracked=other)
    assert int(other[0]) == 1
    np.testing.assert_array_equal(_host(y_r), _host(activation.relu(y)))
    assert (_host(y_r) == 0).mean() > 0.2
    gx_r, gg_r, gb_r = batch_norm.batch_norm_backward(x, gy, gamma, mean, invstd, relu_y=y_r)
    gx_m, gg_m, gb_m = batch_norm.batch_norm_backward(x, activation.relu_backward(y_r, gy), gamma,
                                                      mean, invstd)
    for got, want in ((gx_r, gx_m), (gg_r, gg_m), (gb_r, gb_m)):
        np.testing.assert_array_equal(_host(got), _host(want))
    np.testing.assert_array_equal(
        _host(batch_norm.batch_norm_infer(x, gamma, beta, rm, rv, eps, relu=True)),
        _host(activation.relu(y_inf)))


def test_batch_norm_bad_shapes(cp):
    x = cp.zeros((4, 3, 2, 2), dtype=cp.float32)
    with pytest.raises(ValueError, match=r"gamma has shape \(4,\), expected \(3,\)"):
        batch_norm.batch_norm_train(x, cp.ones(4, cp.float32), cp.zeros(3, cp.float32), 1e-5)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) or \(N, C\)"):
        batch_norm.batch_norm_train(x[0], cp.ones(3, cp.float32), cp.zeros(3, cp.float32), 1e-5)


# ----------------------------------------------------------------------------- optimizers

def _sgd_ref(p, g, buf, lr, mom, damp, wd, nesterov, first):
    d = g + wd * p
    if mom == 0:
        return p - lr * d, buf
    buf = d.copy() if first else mom * buf + (1 - damp) * d
    return p - lr * (d + mom * buf if nesterov else buf), buf


@pytest.mark.parametrize("mom,damp,wd,nesterov", [(0.0, 0.0, 0.0, False), (0.0, 0.0, 1e-2, False),
                                                  (0.9, 0.0, 5e-4, False), (0.9, 0.1, 1e-3, False),
                                                  (0.9, 0.0, 1e-3, True)])
def test_sgd_update_matches_formula(cp, mom, damp, wd, nesterov):
    rng = np.random.default_rng(4)
    n = 10007
    p64 = rng.standard_normal(n)
    p = cp.asarray(p64, dtype=cp.float32)
    p64 = _host(p)
    buf = cp.zeros(n, dtype=cp.float32) if mom else None
    b64 = np.zeros(n)
    for step in range(3):
        g64 = rng.standard_normal(n).astype(np.float32).astype(np.float64)
        optim_kernels.sgd_update_(p, cp.asarray(g64, dtype=cp.float32), buf, 0.1, mom, damp, wd,
                                  nesterov, first_step=step == 0)
        p64, b64 = _sgd_ref(p64, g64, b64, 0.1, mom, damp, wd, nesterov, step == 0)
    np.testing.assert_allclose(_host(p), p64, rtol=1e-5, atol=1e-6)
    if mom:
        np.testing.assert_allclose(_host(buf), b64, rtol=1e-5, atol=1e-6)


def _adam_ref(p, g, m, v, lr, b1, b2, eps, wd, step, decoupled):
    if decoupled:
        p = p * (1 - lr * wd)
    else:
        g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    denom = np.sqrt(v) / math.sqrt(1 - b2**step) + eps
    return p - lr / (1 - b1**step) * m / denom, m, v


@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (False, 1e-2), (True, 1e-2)])
def test_adam_update_matches_formula(cp, decoupled, wd):
    rng = np.random.default_rng(5)
    n = 4099
    p = cp.asarray(rng.standard_normal(n), dtype=cp.float32)
    p64 = _host(p)
    m, v = cp.zeros(n, cp.float32), cp.zeros(n, cp.float32)
    m64, v64 = np.zeros(n), np.zeros(n)
    for step in range(1, 4):
        g64 = rng.standard_normal(n).astype(np.float32).astype(np.float64)
        optim_kernels.adam_update_(p, cp.asarray(g64, dtype=cp.float32), m, v, 1e-3, 0.9, 0.999,
                                   1e-8, wd, step, decoupled)
        p64, m64, v64 = _adam_ref(p64, g64, m64, v64, 1e-3, 0.9, 0.999, 1e-8, wd, step,
                                  decoupled)
    np.testing.assert_allclose(_host(p), p64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_host(m), m64, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_host(v), v64, rtol=1e-5, atol=1e-9)


def test_optimizers_match_torch(cp):
    """Three steps of our kernels against torch.optim (CPU, float64) on the same gradients."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    n = 1000
    p0 = rng.standard_normal(n)
    grads = [rng.standard_normal(n) for _ in range(3)]
    cases = [("sgd", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-3)),
             ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
             ("adam", dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2)),
             ("adamw", dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2))]
    for kind, kw in cases:
        tp = torch.nn.Parameter(torch.tensor(p0))
        opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam,
               "adamw": torch.optim.AdamW}[kind]([tp], **kw)
        p = cp.asarray(p0)  # float64 on the GPU: compare tightly
        a, b = cp.zeros(n), cp.zeros(n)
        for step, g in enumerate(grads, start=1):
            tp.grad = torch.tensor(g)
            opt.step()
            if kind == "sgd":
                optim_kernels.sgd_update_(p, cp.asarray(g), a, kw["lr"], kw["momentum"],
                                          kw.get("dampening", 0.0), kw["weight_decay"],
                                          kw.get("nesterov", False), first_step=step == 1)
            else:
                optim_kernels.adam_update_(p, cp.asarray(g), a, b, kw["lr"], kw["betas"][0],
                                           kw["betas"][1], kw["eps"], kw["weight_decay"], step,
                                           decoupled=kind == "adamw")
        np.testing.assert_allclose(_host(p), tp.detach().numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=f"{kind} {kw}")


@pytest.mark.parametrize("dtname", DTYPES)
def test_max_pool_kernels_match_numpy_path(cp, dtname):
    """The fused max pool (ResNet stem: 3x3, stride 2, padding 1) picks the same values as the
    NumPy path in every dtype (max is exact) and routes each gradient to the first maximum."""
    from mpinet.autograd import Variable
    from mpinet.ops.pool import max_pool2d

    rng = np.random.default_rng(7)
    x_host = rng.standard_normal((2, 3, 9, 8)).astype(_dtype(dtname))
    x_host[0, 0, :3, :3] = x_host[0, 0, 1, 1]  # ties: the first position in the window wins
    gy_host = rng.standard_normal((2, 3, 5, 4)).astype(_dtype(dtname))
    got, want = [], []
    for to_dev, sink in ((cp.asarray, got), (np.asarray, want)):
        x = Variable(to_dev(x_host), requires_grad=True)
        y = max_pool2d(x, 3, 2, 1)
        y.backward(to_dev(gy_host))
        sink += [np.asarray(cp.asnumpy(y.data) if to_dev is cp.asarray else y.data),
                 np.asarray(cp.asnumpy(x.grad) if to_dev is cp.asarray else x.grad)]
    np.testing.assert_array_equal(got[0].astype(np.float64), want[0].astype(np.float64))
    # an input that wins several windows sums their gradients: order may differ from NumPy's
    np.testing.assert_allclose(got[1].astype(np.float64), want[1].astype(np.float64),
                               rtol=RTOL[dtname], atol=RTOL[dtname] * 4)


def _vec_cases(cp, dtname, rng, shape):
    """(aligned contiguous array, a misaligned view of the same shape) with their float64
    values: the view starts one element into its buffer, so the kernels must take the
    one-value-per-thread path for it."""
    x, x64 = _gpu(cp, rng.standard_normal(shape), dtname)
    n = int(np.prod(shape))
    buf = cp.asarray(rng.standard_normal(n + 1).astype(_dtype(dtname)))
    view = buf[1:].reshape(shape)
    assert view.data.ptr % 16 != 0
    return (x, x64), (view, _host(view))


# shapes: n a multiple of every vector width; n with a tail; channels crossing vectors (HW = 3)
VEC_SHAPES = [(4, 8, 4, 4), (3, 5, 7, 3), (2, 7, 1, 3)]


@pytest.mark.parametrize("dtname", DTYPES)
@pytest.mark.parametrize("shape", VEC_SHAPES)
def test_vector_elementwise_kernels(cp, dtname, shape):
    rng = np.random.default_rng(3)
    tol = RTOL[dtname]
    for x, x64 in _vec_cases(cp, dtname, rng, shape):
        x64 = x64.copy()
        y = activation.relu(x)
        np.testing.assert_array_equal(_host(y), np.maximum(x64, 0))
        gy, gy64 = _gpu(cp, rng.standard_normal(shape), dtname)
        np.testing.assert_array_equal(_host(activation.relu_backward(y, gy)),
                                      np.where(x64 > 0, gy64, 0))
        b, b64 = _gpu(cp, rng.standard_normal(shape[1]), dtname)
        want = x64 + b64.reshape(1, -1, 1, 1)
        target = x.copy() if x.flags.c_contiguous else x  # the view is updated in place
        got = elementwise.add_channel_bias_(target, b)
        assert got is target
        _close(got, want, dtname, what=f"add_channel_bias_ {shape}")
        z, z64 = _gpu(cp, rng.standard_normal(shape), dtname)
        _close(elementwise.add(x, z), _host(x) + z64, dtname, what=f"add {shape}")
        np.testing.assert_array_equal(_host(elementwise.add(x, z, relu_after=True)),
                                      _host(activation.relu(elementwise.add(x, z))))
        s = batch_norm.channel_sum(x)
        assert s.dtype == x.dtype and s.shape == (shape[1],)
        want_s = _host(x).sum(axis=(0, 2, 3))
        np.testing.assert_allclose(_host(s), want_s, rtol=tol,
                                   atol=tol * np.abs(_host(x)).sum() / 10)


@pytest.mark.parametrize("dtname", ["float16", "bfloat16", "float64"])
def test_cast_into_equals_astype_both_ways(cp, dtname):
    rng = np.random.default_rng(5)
    x32 = (rng.standard_normal(4099) * 10.0 ** rng.integers(-8, 8, 4099)).astype(np.float32)
    x32[:4] = [np.nan, np.inf, -np.inf, 70000.0]  # 70000 overflows float16
    x32 = cp.asarray(x32)
    low = cp.empty(x32.shape, _dtype(dtname))
    elementwise.cast_into(low, x32)
    np.testing.assert_array_equal(_host(low), _host(x32.astype(low.dtype)))
    back = cp.empty(x32.shape, cp.float32)
    elementwise.cast_into(back, low)
    np.testing.assert_array_equal(_host(back), _host(low.astype(cp.float32)))
    strided = cp.empty((4099, 2), cp.float32)[:, 0]  # not contiguous: CuPy's copy
    elementwise.cast_into(strided, low)
    np.testing.assert_array_equal(_host(strided), _host(back))


def test_relu_keeps_nan_and_vector_path_matches_numpy_for_bfloat16(cp):
    x = cp.asarray(np.array([np.nan, -1, 0, 2, -0.5, 3, np.inf, -np.inf, 1], np.float32)
                   .astype(_dtype("bfloat16")))
    y = _host(activation.relu(x))
    assert np.isnan(y[0])
    np.testing.assert_array_equal(y[1:], [0, 0, 2, 0, 3, np.inf, 0, 1])
