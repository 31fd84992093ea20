"""The fused GPU recurrent cells (mpinet.kernels.recurrent) against the CPU reference cells,
and whole LSTM/GRU layers with padding on the GPU against the CPU (issue 18)."""
import numpy as np
import pytest

from mpinet import backend, nn
from mpinet.autograd import Variable
from mpinet.ops import recurrent as rec
from mpinet.testing import check_gpu_matches_cpu

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_cells_match_cpu(dtype, tol, masked):
    rng = np.random.default_rng(0)
    n, hidden = 5, 7
    mask = np.array([[1], [0], [1], [1], [0]], dtype) if masked else None

    def lstm(gx, gh, c, h):
        m = None if mask is None else backend.xp_of(gx.data).asarray(mask)
        h2, c2, out = rec.lstm_cell(gx, gh, c, h, m)
        return h2 * 1.5 + c2 * 0.5 + out

    def gru(gx, gh, h):
        m = None if mask is None else backend.xp_of(gx.data).asarray(mask)
        h2, out = rec.gru_cell(gx, gh, h, m)
        return h2 * 1.5 + out

    check_gpu_matches_cpu(lstm, [rng.standard_normal((n, 4 * hidden)).astype(dtype) * 3,
                                 rng.standard_normal((n, 4 * hidden)).astype(dtype),
                                 rng.standard_normal((n, hidden)).astype(dtype),
                                 rng.standard_normal((n, hidden)).astype(dtype)],
                          atol=tol, rtol=tol)
    check_gpu_matches_cpu(gru, [rng.standard_normal((n, 3 * hidden)).astype(dtype) * 3,
                                rng.standard_normal((n, 3 * hidden)).astype(dtype),
                                rng.standard_normal((n, hidden)).astype(dtype)],
                          atol=tol, rtol=tol)


def test_fused_lstm_cell_bf16_close_to_float32():
    import cupy as cp
    import ml_dtypes

    rng = np.random.default_rng(1)
    g = rng.standard_normal((8, 4 * 16)).astype(np.float32)
    c = rng.standard_normal((8, 16)).astype(np.float32)
    zero = np.zeros_like(g)
    want = rec.lstm_cell_reference(g, zero, c, c, None)[0]
    bf = np.dtype(ml_dtypes.bfloat16)
    h, *_ = rec.LSTMCell().forward(cp.asarray(g.astype(bf)), cp.asarray(zero.astype(bf)),
                                   cp.asarray(c.astype(bf)), cp.asarray(c.astype(bf)))
    np.testing.assert_allclose(cp.asnumpy(h).astype(np.float32), want, atol=3e-2)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_padded_layer_on_gpu_matches_cpu(kind):
    """Stacked bidirectional layer with lengths: outputs, final state and every gradient."""
    import cupy as cp

    from mpinet.nn import init

    init.manual_seed(0)
    layer = getattr(nn, kind)(4, 6, num_layers=2, bidirectional=True, batch_first=True)
    lengths = np.array([5, 2, 3])
    x = np.random.default_rng(2).standard_normal((3, 5, 4)).astype(np.float32)
    results = []
    for device in ("cpu", "gpu"):
        backend.select_device(0, device)
        layer.to()
        for p in layer.parameters():
            p.grad = None
        xv = Variable(backend.to_device(x), requires_grad=True)
        out, state = layer(xv, lengths=lengths)
        h = state[0] if kind == "LSTM" else state
        ((out * out).sum() + (h * h).sum()).backward()
        results.append([backend.to_numpy(a) for a in
                        [out.data, h.data, xv.grad] + [p.grad for p in layer.parameters()]])
    backend.use_cpu()
    layer.to()
    for got, want in zip(results[1], results[0], strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    assert cp is not None


def test_bf16_autocast_lstm_on_gpu_close_to_fp32_cpu():
    """The benchmark's configuration in small: bf16 LSTM forward and backward on the GPU."""
    from mpinet import amp
    from mpinet.nn import init

    init.manual_seed(3)
    layer = nn.LSTM(8, 16, batch_first=True)
    x = np.random.default_rng(4).standard_normal((4, 6, 8)).astype(np.float32)
    want = layer(Variable(x))[0].data
    backend.select_device(0, "gpu")
    try:
        layer.to()
        xv = Variable(backend.to_device(x), requires_grad=True)
        with amp.autocast("bf16"):
            out, _ = layer(xv)
        amp.cast(out, np.dtype(np.float32)).sum().backward()
        np.testing.assert_allclose(backend.to_numpy(out.data).astype(np.float32), want,
                                   atol=3e-2)
        assert xv.grad is not None and layer.weight_hh_l0.grad is not None
    finally:
        backend.use_cpu()
        layer.to()
