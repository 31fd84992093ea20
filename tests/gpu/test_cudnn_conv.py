"""cuDNN convolution fast path (mpinet.kernels.cudnn) against a NumPy float64 reference:
forward, data-grad and weight-grad for stride, padding, dilation, groups (incl. depthwise), 1x1,
the 7x7/2 stem and a rectangular kernel, in float32 (TF32 and strict), float16 and bfloat16;
float64 is refused (callers use their xp path)."""
import numpy as np
import pytest


# ----------------------------------------------------------------------------- float64 oracle

def _patches(xp, r, s, ho, wo, stride, dilation):
    """xp[..., r*dh + i*sh, s*dw + j*sw] for i < ho, j < wo (a strided view)."""
    h0, w0 = r * dilation[0], s * dilation[1]
    return xp[..., h0:h0 + stride[0] * (ho - 1) + 1:stride[0],
              w0:w0 + stride[1] * (wo - 1) + 1:stride[1]]


def ref_fprop(x, w, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    k, cg, r_, s_ = w.shape
    ho = (h + 2 * padding[0] - dilation[0] * (r_ - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * padding[1] - dilation[1] * (s_ - 1) - 1) // stride[1] + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    xg = xp.reshape(n, groups, cg, *xp.shape[2:])
    wg = w.reshape(groups, k // groups, cg, r_, s_)
    y = np.zeros((n, groups, k // groups, ho, wo))
    for r in range(r_):
        for s in range(s_):
            y += np.einsum("ngchw,gkc->ngkhw", _patches(xg, r, s, ho, wo, stride, dilation),
                           wg[..., r, s])
    return y.reshape(n, k, ho, wo)


def ref_dgrad(gy, w, x_shape, stride, padding, dilation, groups):
    n, c, h, wd = x_shape
    k, cg, r_, s_ = w.shape
    ho, wo = gy.shape[2:]
    gxp = np.zeros((n, groups, cg, h + 2 * padding[0], wd + 2 * padding[1]))
    gyg = gy.reshape(n, groups, k // groups, ho, wo)
    wg = w.reshape(groups, k // groups, cg, r_, s_)
    for r in range(r_):
        for s in range(s_):
            _patches(gxp, r, s, ho, wo, stride, dilation)[...] += np.einsum(
                "ngkhw,gkc->ngchw", gyg, wg[..., r, s])
    gx = gxp[..., padding[0]:padding[0] + h, padding[1]:padding[1] + wd]
    return gx.reshape(x_shape)


def ref_wgrad(x, gy, w_shape, stride, padding, dilation, groups):
    n = x.shape[0]
    k, cg, r_, s_ = w_shape
    ho, wo = gy.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    xg = xp.reshape(n, groups, cg, *xp.shape[2:])
    gyg = gy.reshape(n, groups, k // groups, ho, wo)
    gw = np.zeros((groups, k // groups, cg, r_, s_))
    for r in range(r_):
        for s in range(s_):
            gw[..., r, s] = np.einsum("ngkhw,ngchw->gkc", gyg,
                                      _patches(xg, r, s, ho, wo, stride, dilation))
    return gw.reshape(w_shape)


def test_reference_matches_direct_loops():
    """The oracle itself, against a naive loop on a tiny grouped, strided, dilated case."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 7, 6))
    w = rng.standard_normal((6, 2, 2, 3))
    st, pd, dl, g = (2, 1), (1, 2), (2, 1), 2
    y = ref_fprop(x, w, st, pd, dl, g)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (2, 2)))
    want = np.zeros_like(y)
    for k in range(6):
        grp = k // 3
        for i in range(y.shape[2]):
            for j in range(y.shape[3]):
                for c in range(2):
                    for r in range(2):
                        for s in range(3):
                            want[0, k, i, j] += (w[k, c, r, s]
                                                 * xp[0, grp * 2 + c, i * 2 + r * 2, j + s])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    # dgrad and wgrad are the adjoints of fprop: <fprop(x, w), gy> = <x, dgrad(gy)> = <w, wgrad>
    gy = rng.standard_normal(y.shape)
    lhs = np.sum(y * gy)
    assert np.isclose(lhs, np.sum(x * ref_dgrad(gy, w, x.shape, st, pd, dl, g)))
    assert np.isclose(lhs, np.sum(w * ref_wgrad(x, gy, w.shape, st, pd, dl, g)))


# ----------------------------------------------------------------------------- GPU vs oracle

# (x shape, w shape, stride, padding, dilation, groups)
CONFIGS = {
    "3x3": ((2, 8, 10, 10), (16, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    "3x3_s2": ((2, 8, 9, 9), (8, 8, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    "dilated": ((2, 4, 12, 12), (8, 4, 3, 3), (1, 1), (2, 2), (2, 2), 1),
    "groups2": ((2, 8, 8, 8), (12, 4, 3, 3), (1, 1), (1, 1), (1, 1), 2),
    "depthwise": ((2, 8, 8, 8), (8, 1, 3, 3), (1, 1), (1, 1), (1, 1), 8),
    "1x1_s2": ((2, 8, 8, 8), (16, 8, 1, 1), (2, 2), (0, 0), (1, 1), 1),
    "stem7x7_s2": ((2, 3, 20, 20), (8, 3, 7, 7), (2, 2), (3, 3), (1, 1), 1),
    "rect": ((2, 4, 9, 11), (6, 4, 3, 5), (1, 2), (1, 2), (2, 1), 1),
}

# relative error bound (max |got - ref| / max |ref|) per dtype
TOL = {"float32": 5e-3, "float32_strict": 1e-5, "float16": 5e-3, "bfloat16": 2e-2}


def _dtype(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name.replace("_strict", ""))


def _to_gpu(cp, a, dtype):
    """Round a float64 array to dtype; return (gpu array, the rounded values in float64)."""
    host = a.astype(dtype)
    return cp.asarray(host), host.astype(np.float64)


def _rel_err(got, want):
    got = np.asarray(got.get()).astype(np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != reference {want.shape}"
    return np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)


@pytest.fixture
def conv(request):
    cp = pytest.importorskip("cupy")
    from mpinet.kernels import cudnn

    saved = cudnn.allow_tf32, cudnn.benchmark
    yield cp, cudnn
    cudnn.allow_tf32, cudnn.benchmark = saved


@pytest.mark.gpu
@pytest.mark.parametrize("dtname", ["float32", "float32_strict", "float16", "bfloat16"])
@pytest.mark.parametrize("cfg", sorted(CONFIGS))
def test_conv_matches_float64(conv, cfg, dtname):
    cp, cc = conv
    cc.allow_tf32 = dtname != "float32_strict"
    x_shape, w_shape, st, pd, dl, g = CONFIGS[cfg]
    rng = np.random.default_rng(sorted(CONFIGS).index(cfg))
    dtype = _dtype(dtname)
    x, x64 = _to_gpu(cp, rng.standard_normal(x_shape), dtype)
    w, w64 = _to_gpu(cp, rng.standard_normal(w_shape), dtype)
    y = cc.conv_fprop(x, w, st, pd, dl, g)
    assert y.dtype == dtype
    y_ref = ref_fprop(x64, w64, st, pd, dl, g)
    assert _rel_err(y, y_ref) < TOL[dtname], "fprop"

    gy, gy64 = _to_gpu(cp, rng.standard_normal(y_ref.shape), dtype)
    gx = cc.conv_dgrad(gy, w, x_shape, st, pd, dl, g)
    assert _rel_err(gx, ref_dgrad(gy64, w64, x_shape, st, pd, dl, g)) < TOL[dtname], "dgrad"
    gw = cc.conv_wgrad(x, gy, w_shape, st, pd, dl, g)
    assert _rel_err(gw, ref_wgrad(x64, gy64, w_shape, st, pd, dl, g)) < TOL[dtname], "wgrad"


@pytest.mark.gpu
@pytest.mark.parametrize("bench", [False, True])
@pytest.mark.parametrize("dtname", ["float32", "bfloat16"])
def test_heuristic_and_benchmarked_plans_agree_with_reference(conv, bench, dtname):
    cp, cc = conv
    cc.benchmark = bench
    x_shape, w_shape, st, pd, dl, g = (8, 16, 16, 16), (32, 16, 3, 3), (1, 1), (1, 1), (1, 1), 1
    rng = np.random.default_rng(7)
    dtype = _dtype(dtname)
    x, x64 = _to_gpu(cp, rng.standard_normal(x_shape), dtype)
    w, w64 = _to_gpu(cp, rng.standard_normal(w_shape), dtype)
    cc.clear_cache()
    decided = sum(cc.autotune_stats.values())
    y_ref = ref_fprop(x64, w64, st, pd, dl, g)
    gy, gy64 = _to_gpu(cp, rng.standard_normal(y_ref.shape), dtype)
    for _ in range(2):  # the second call runs the cached plan
        y = cc.conv_fprop(x, w, st, pd, dl, g)
        assert _rel_err(y, y_ref) < TOL[dtname], "fprop"
        gx = cc.conv_dgrad(gy, w, x_shape, st, pd, dl, g)
        assert _rel_err(gx, ref_dgrad(gy64, w64, x_shape, st, pd, dl, g)) < TOL[dtname], "dgrad"
        gw = cc.conv_wgrad(x, gy, w_shape, st, pd, dl, g)
        assert _rel_err(gw, ref_wgrad(x64, gy64, w_shape, st, pd, dl, g)) < TOL[dtname], "wgrad"
    # Autotuning decides once per built graph (3 ops), and never when it is off.
    assert sum(cc.autotune_stats.values()) - decided == (3 if bench else 0)


@pytest.mark.gpu
def test_non_contiguous_input_and_stream(conv):
    cp, cc = conv
    cc.allow_tf32 = False
    rng = np.random.default_rng(3)
    x, x64 = _to_gpu(cp, rng.standard_normal((2, 6, 8, 4)), np.float32)
    w, w64 = _to_gpu(cp, rng.standard_normal((5, 6, 3, 3)), np.float32)
    xt = cp.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # NCWH memory
    assert not xt.flags.c_contiguous
    with cp.cuda.Stream(non_blocking=True) as s:
        y = cc.conv_fprop(xt, w, (1, 1), (1, 1), (1, 1), 1)
        s.synchronize()
    assert _rel_err(y, ref_fprop(x64, w64, (1, 1), (1, 1), (1, 1), 1)) < 1e-5


@pytest.mark.gpu
def test_bad_shapes_raise_clear_errors(conv):
    cp, cc = conv
    x = cp.zeros((2, 6, 8, 8), dtype=cp.float32)
    with pytest.raises(ValueError, match="groups=4"):
        cc.conv_fprop(x, cp.zeros((4, 3, 3, 3), dtype=cp.float32), 1, 1, 1, 4)
    with pytest.raises(ValueError, match=r"expected \(2, 4, 8, 8\)"):
        cc.conv_dgrad(cp.zeros((2, 4, 7, 7), dtype=cp.float32),
                      cp.zeros((4, 6, 3, 3), dtype=cp.float32), (2, 6, 8, 8), 1, 1, 1, 1)
    with pytest.raises(TypeError, match="int32"):
        cc.conv_fprop(x.astype(cp.int32), cp.zeros((4, 6, 3, 3), dtype=cp.int32), 1, 1, 1, 1)
    with pytest.raises(TypeError, match="float64"):  # left to the caller's xp path
        cc.conv_fprop(x.astype(cp.float64), cp.zeros((4, 6, 3, 3), dtype=cp.float64), 1, 1, 1, 1)
    assert not cc.supports(np.dtype(np.float64)) and cc.supports(np.dtype(np.float32))


@pytest.mark.gpu
def test_wgrad_writes_into_given_buffer_and_autograd_skips_the_add(conv):
    """conv_wgrad(out=...) fills the zeroed flat gradient view; values equal the plain path."""
    cp, cc = conv
    cc.allow_tf32 = False
    from mpinet.autograd import Parameter, Variable
    from mpinet.flat import FlatParameters
    from mpinet.ops import conv as conv_ops, norm

    rng = np.random.default_rng(5)
    x = Variable(cp.asarray(rng.standard_normal((4, 3, 8, 8)), dtype=cp.float32))
    arrays = [rng.standard_normal((6, 3, 3, 3)), rng.standard_normal(6), rng.standard_normal(6)]

    def loss(w, g, b):
        y, _, _ = norm.batch_norm(conv_ops.conv2d(x, w, padding=1), g, b, None, None, True)
        return (y * y).sum()

    plain = [Parameter(cp.asarray(a, dtype=cp.float32)) for a in arrays]
    loss(*plain).backward()
    params = [Parameter(cp.asarray(a, dtype=cp.float32)) for a in arrays]
    flat = FlatParameters(params)
    views = [p.grad for p in params]
    for _ in range(2):
        flat.zero_grad()
        loss(*params).backward()
        for p, q, v in zip(params, plain, views, strict=True):
            assert p.grad is v and p._grad_zeroed is None
            np.testing.assert_allclose(p.grad.get(), q.grad.get(), rtol=1e-5, atol=1e-4)
    out = cp.full((6, 3, 3, 3), np.nan, cp.float32)
    got = cc.conv_wgrad(x.data, cp.ones((4, 6, 8, 8), cp.float32), (6, 3, 3, 3), padding=(1, 1),
                        out=out)
    assert got is out and not cp.isnan(out).any()


def test_call_geometry_is_validated_and_cached_without_a_gpu():
    """The per-call validation of the cuDNN wrapper is plain Python: it runs on the CPU too."""
    from mpinet.kernels import cudnn as cc

    assert cc._geometry("fprop", (2, 3, 8, 8), (4, 3, 3, 3), None, 2, 1, 1, 1) == \
        ((2, 2), (1, 1), (1, 1), (2, 4, 4, 4))
    key = ("fprop", (2, 3, 8, 8), (4, 3, 3, 3), None, 2, 1, 1, 1)
    assert key in cc._checked  # served from the cache next time
    assert cc._geometry("wgrad", (2, 3, 8, 8), (2, 4, 8, 8), (4, 3, 3, 3), (1, 1), (1, 1),
                        (1, 1), 1)[3] == (4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"conv_dgrad: gradient has shape \(2, 4, 7, 8\), "
                                         r"expected \(2, 4, 8, 8\)"):
        cc._geometry("dgrad", (2, 4, 7, 8), (4, 3, 3, 3), (2, 3, 8, 8), (1, 1), (1, 1), (1, 1), 1)
    with pytest.raises(ValueError, match="groups=2 does not fit"):
        cc._geometry("fprop", (2, 3, 8, 8), (4, 3, 3, 3), None, 1, 1, 1, 2)
    # unhashable (list) arguments are validated every time instead of cached
    assert cc._geometry("fprop", (2, 3, 8, 8), (4, 3, 3, 3), None, [1, 1], [0, 0], [1, 1], 1)[3] \
        == (2, 4, 6, 6)
