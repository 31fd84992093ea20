"""GPU: the fused update kernels (mpinet.optim.kernels) against the CPU update, and the
optimizers, state dicts and loss scaler on CuPy arrays."""
import numpy as np
import pytest

from mpinet import backend
from mpinet.autograd import Parameter
from mpinet.flat import FlatParameters
from mpinet.optim import SGD, Adam, AdamW, LossScaler
from mpinet.optim.functional import (adam_update_, adam_update_xp_, sgd_update_,
                                     sgd_update_xp_)

pytestmark = pytest.mark.gpu

RTOL, ATOL = 1e-5, 1e-6  # fp32; a fused kernel may contract a*b+c into one FMA


def random_arrays(n, count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) for _ in range(count)]


SGD_KW = [
    dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=1e-2, nesterov=False),
    dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(lr=0.05, momentum=0.9, dampening=0.25, weight_decay=5e-4, nesterov=False),
    dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=5e-4, nesterov=True),
]


@pytest.mark.parametrize("first_step", [False, True])
@pytest.mark.parametrize("kw", SGD_KW, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
def test_fused_sgd_update_matches_cpu(kw, first_step):
    import cupy as cp

    p, g, buf = random_arrays(100_003, 3)  # odd size: no vector-width assumptions
    if kw["momentum"] == 0:
        buf = None
    g_before = g.copy()
    dev = [None if a is None else cp.asarray(a) for a in (p, g, buf)]
    sgd_update_xp_(p, g, buf, **kw, first_step=first_step)
    sgd_update_(*dev, **kw, first_step=first_step)  # GPU arrays: optim.kernels.sgd_update_
    np.testing.assert_allclose(dev[0].get(), p, rtol=RTOL, atol=ATOL)
    if buf is not None:
        np.testing.assert_allclose(dev[2].get(), buf, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(dev[1].get(), g_before)  # the gradient is left untouched


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("step", [1, 7])
def test_fused_adam_update_matches_cpu(decoupled, weight_decay, step):
    import cupy as cp

    p, g, m, v = random_arrays(100_003, 4, seed=step)
    v = np.abs(v)  # a second moment is never negative
    g_before = g.copy()
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay, step=step,
              decoupled=decoupled)
    dev = [cp.asarray(a) for a in (p, g, m, v)]
    adam_update_xp_(p, g, m, v, **kw)
    adam_update_(*dev, **kw)
    for name, gpu, cpu in zip("pgmv", dev, (p, g_before, m, v), strict=True):
        np.testing.assert_allclose(gpu.get(), cpu, rtol=RTOL, atol=ATOL, err_msg=name)


SHAPES = [(64, 3, 3, 3), (64,), (10, 64), (10,)]
OPTIMIZERS = {
    "sgd_nesterov": lambda ps: SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
    "sgd_dampening": lambda ps: SGD(ps, lr=0.05, momentum=0.9, dampening=0.1),
    "adam": lambda ps: Adam(ps, lr=1e-3, weight_decay=1e-4),
    "adamw": lambda ps: AdamW(ps, lr=1e-3, weight_decay=1e-2),
}


def train(make_opt, to_dev, flat_mode, steps=6):
    rng = np.random.default_rng(0)
    params = [Parameter(to_dev(rng.standard_normal(s).astype(np.float32))) for s in SHAPES]
    flat = FlatParameters(params) if flat_mode else None
    opt = make_opt(flat if flat_mode else params)
    grng = np.random.default_rng(1)
    for _ in range(steps):
        opt.zero_grad()
        for p in params:
            g = to_dev(grng.standard_normal(p.shape).astype(np.float32))
            if flat_mode:
                p.grad[...] = g
            else:
                p.grad = g
        opt.step()
    return params, opt


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_gpu_optimizer_matches_cpu_and_flat_matches_per_parameter(name):
    import cupy as cp

    cpu, _ = train(OPTIMIZERS[name], np.asarray, flat_mode=False)
    gpu_flat, opt = train(OPTIMIZERS[name], cp.asarray, flat_mode=True)
    gpu_per, _ = train(OPTIMIZERS[name], cp.asarray, flat_mode=False)
    for a, b, c in zip(cpu, gpu_flat, gpu_per, strict=True):
        assert backend.is_gpu_array(b.data)
        np.testing.assert_allclose(b.data.get(), a.data, rtol=RTOL, atol=ATOL)
        # The same elementwise kernel over one flat buffer or per parameter: identical numbers.
        np.testing.assert_array_equal(b.data.get(), c.data.get())
    state = opt.state_dict()
    assert all(backend.is_gpu_array(t) for t in state["tensors"].values())


def test_gpu_state_dict_loads_on_cpu_and_back():
    import cupy as cp

    params, opt = train(OPTIMIZERS["adamw"], cp.asarray, flat_mode=True)
    state = opt.state_dict()
    host = {"scalars": state["scalars"],
            "tensors": {k: backend.to_numpy(v) for k, v in state["tensors"].items()}}
    cpu_params = [Parameter(p.data.get()) for p in params]
    cpu_opt = OPTIMIZERS["adamw"](cpu_params)
    cpu_opt.load_state_dict(host)
    gpu_params = [Parameter(p.data.copy()) for p in params]
    gpu_opt = OPTIMIZERS["adamw"](FlatParameters(gpu_params))
    gpu_opt.load_state_dict(host)  # NumPy tensors into a GPU optimizer
    for k, v in gpu_opt.state_dict()["tensors"].items():
        np.testing.assert_array_equal(v.get(), host["tensors"][k])


def test_loss_scaler_on_gpu_flat_buffer():
    import cupy as cp

    params = [Parameter(cp.ones((3, 3), cp.float32)), Parameter(cp.ones(5, cp.float32))]
    flat = FlatParameters(params)
    flat.grad[...] = 256.0
    scaler = LossScaler(init_scale=256.0)
    assert scaler.unscale_(flat) is False
    np.testing.assert_array_equal(flat.grad.get(), 1.0)
    params[1].grad[4] = cp.inf
    assert scaler.unscale_(flat) is True
