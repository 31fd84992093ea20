"""Mixed precision on CPU: bf16 compute with fp32 master weights needs no loss scaler;
fp16 with dynamic loss scaling recovers gradients that fp16 alone would flush to zero."""
import numpy as np

from mpinet import amp, backend
from mpinet.autograd import Parameter, Variable
from mpinet.nn.flat import FlatParameters
from mpinet.optim import SGD, LossScaler


def linear_regression_data(n=64, d_in=8, d_out=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    w_true = rng.standard_normal((d_in, d_out)).astype(np.float32)
    return x, x @ w_true + 0.5


def tiny_linear(d_in=8, d_out=3, seed=1):
    rng = np.random.default_rng(seed)
    w = Parameter((0.1 * rng.standard_normal((d_in, d_out))).astype(np.float32), name="weight")
    b = Parameter(np.zeros(d_out, np.float32), name="bias")
    return w, b


def forward_loss(x, t, w, b):
    xc, wc, bc = amp.autocast_inputs(Variable(x), w, b)
    y = amp.cast(xc @ wc + bc, np.dtype(np.float32))  # loss in fp32, as autocast intends
    return ((y - Variable(t)) ** 2).mean()


def test_bf16_autocast_trains_with_fp32_master_weights():
    x, t = linear_regression_data()
    w, b = tiny_linear()
    flat = FlatParameters([w, b])
    opt = SGD(flat, lr=0.05, momentum=0.9)
    bf16 = backend.bfloat16()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        with amp.autocast("bf16"):
            assert amp.autocast_inputs(Variable(x))[0].dtype == bf16  # compute really is bf16
            loss = forward_loss(x, t, w, b)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        for p in (w, b):
            assert p.dtype == np.float32 and p.grad.dtype == np.float32
    flat.check_views()
    assert flat.data.dtype == np.float32
    assert losses[-1] < 0.1 * losses[0], losses


def test_fp16_loss_scaling_keeps_small_gradients_that_fp16_flushes():
    # y = x @ w = 1 per row; loss = 1e-8 * mean(y^2), so dloss/dy = 5e-9 per row: below fp16's
    # smallest subnormal (~6e-8), it flushes to 0 when cast to fp16 -- unless the loss is scaled.
    x = np.ones((4, 2), np.float32)
    t = np.zeros((4, 1), np.float32)
    grads = {}
    for scale in (None, 2.0 ** 16):
        w = Parameter(np.full((2, 1), 0.5, np.float32))
        b = Parameter(np.zeros(1, np.float32))
        scaler = LossScaler(init_scale=scale or 1.0, enabled=scale is not None)
        with amp.autocast("fp16"):
            loss = forward_loss(x, t, w, b) * 1e-8
        scaler.scale(loss).backward()
        assert scaler.unscale_([w, b]) is False
        assert w.grad.dtype == np.float32
        grads[scale] = w.grad.copy()
    assert not grads[None].any()
    # dloss/dw_j = 1e-8 * 2/4 * sum_n y_n x_nj = 2e-8
    np.testing.assert_allclose(grads[2.0 ** 16], 2e-8, rtol=1e-2)
