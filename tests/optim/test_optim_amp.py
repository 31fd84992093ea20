"""Mixed precision on CPU: bf16 compute with fp32 master weights needs no loss scaler;
fp16 with dynamic loss scaling recovers gradients that fp16 alone would flush to zero."""
import numpy as np
import pytest

from mpinet import amp, backend
from mpinet.autograd import Parameter, Variable
from mpinet.flat import FlatParameters
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


def test_weights_cast_in_one_pass_train_exactly_as_per_layer_casts():
    """autocast(params=flat): the layers take their bf16 weights from one cast of the flat
    buffer, made again at every forward (so never stale after an update); the result equals
    casting each weight in its layer, bit for bit."""
    x, t = linear_regression_data()
    bf16 = backend.bfloat16()
    finals = {}
    for one_pass in (False, True):
        w, b = tiny_linear()
        flat = FlatParameters([w, b])
        opt = SGD(flat, lr=0.05, momentum=0.9)
        for _ in range(5):
            opt.zero_grad()
            with amp.autocast("bf16", params=flat if one_pass else None):
                if one_pass:
                    wc = amp.cast(w, bf16)
                    assert wc.data.base is not None  # a view of the one-pass buffer
                    np.testing.assert_array_equal(wc.data, w.data.astype(bf16))  # fresh
                loss = forward_loss(x, t, w, b)
            loss.backward()
            opt.step()
        finals[one_pass] = (w.data.copy(), b.data.copy())
    for got, want in zip(finals[True], finals[False], strict=True):
        np.testing.assert_array_equal(got, want)


def test_model_mixed_precision_uses_the_one_pass_cast_only_when_no_layer_updates_mid_forward():
    from mpinet import Model, nn
    from mpinet.nn import init

    seen = {}
    original = FlatParameters.cast_copies

    def spy(self, dtype):
        seen["calls"] = seen.get("calls", 0) + 1
        return original(self, dtype)

    x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    y = np.arange(8) % 3
    for mode, expect_calls in (("backward", 2), ("forward", 0)):
        seen.clear()
        init.manual_seed(0)
        model = Model(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)))
        model.compile("sgd", lr=0.1, precision="bf16", dp_mode=mode)
        FlatParameters.cast_copies = spy
        try:
            for _ in range(2):
                model.train_step(x, y, 8)
        finally:
            FlatParameters.cast_copies = original
        assert seen.get("calls", 0) == expect_calls, mode


@pytest.mark.gpu
def test_one_pass_cast_on_gpu_trains_exactly_as_per_layer_casts(monkeypatch):
    """ResNet-style bf16 training on the GPU: the one-pass cast (one kernel) gives the weights
    the per-layer casts (CuPy's astype) give, bit for bit (deterministic cuDNN engines)."""
    from mpinet import Model
    from mpinet.models import build_model
    from mpinet.nn import init
    from mpinet.kernels import cudnn

    backend.select_device(device="gpu")
    monkeypatch.setattr(cudnn, "deterministic", True)
    xp = backend.current().xp
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((8, 3, 16, 16)).astype(np.float32))
    y = xp.asarray(rng.integers(0, 10, 8))
    finals = []
    for one_pass in (True, False):
        if not one_pass:
            monkeypatch.setattr(FlatParameters, "cast_copies", lambda self, dtype: {})
        init.manual_seed(0)
        net = build_model("resnet18", num_classes=10, input_size=16)
        model = Model(net)
        model.compile("sgd", lr=0.1, momentum=0.9, precision="bf16")
        for _ in range(3):
            model.train_step(x, y, 8)
        finals.append({k: backend.to_numpy(v).copy() for k, v in net.state_dict().items()})
    for k in finals[0]:
        np.testing.assert_array_equal(finals[0][k], finals[1][k], err_msg=k)
