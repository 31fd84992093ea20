"""SGD / Adam / AdamW against PyTorch's documented formulas; flat == per-parameter; state dicts."""
import json

import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from mpinet import backend
from mpinet.autograd import Parameter
from mpinet.flat import FlatParameters
from mpinet.optim import SGD, Adam, AdamW

SHAPES = [(4, 3), (3,), (2, 2, 2)]


def make_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype), name=f"p{i}")
            for i, s in enumerate(SHAPES)]


def grad_sequence(steps, dtype=np.float64, seed=1):
    """grads[t][i]: the gradient of parameter i at step t (fixed, so runs are comparable)."""
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]


def set_grads(params, grads, flat=None):
    for p, g in zip(params, grads, strict=True):
        if flat is not None:
            p.grad[...] = g  # write into the flat gradient buffer's view
        else:
            p.grad = g.copy()


def run(make_opt, params, grads, flat=None):
    opt = make_opt(flat if flat is not None else params)
    for gs in grads:
        opt.zero_grad()
        set_grads(params, gs, flat)
        opt.step()
    return opt


# ---- independent references: the "Algorithm" boxes of torch.optim.SGD / Adam / AdamW docs ----
def ref_sgd(p0, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    theta, b = p0.copy(), None
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * theta if weight_decay else g
        if momentum:
            b = g.copy() if t == 1 else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        theta = theta - lr * g
    return theta


def ref_adam(p0, grads, lr, beta1, beta2, eps, weight_decay, decoupled):
    theta, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            theta = theta - lr * weight_decay * theta
        elif weight_decay:
            g = g + weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g ** 2
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta


SGD_CASES = {
    "plain": dict(lr=0.1),
    "weight_decay": dict(lr=0.1, weight_decay=0.01),
    "momentum": dict(lr=0.05, momentum=0.9),
    "momentum_dampening_wd": dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-3),
    "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
    "nesterov_wd": dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.05),
}
ADAM_CASES = {
    "adam": (Adam, dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)),
    "adam_l2": (Adam, dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw": (AdamW, dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)),
    "adamw_no_wd": (AdamW, dict(lr=3e-3, betas=(0.5, 0.9), eps=1e-8, weight_decay=0.0)),
}
STEPS = 7


@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_matches_pytorch_formulas(case):
    kw = SGD_CASES[case]
    params, grads = make_params(), grad_sequence(STEPS)
    p0 = [p.data.copy() for p in params]
    run(lambda ps: SGD(ps, **kw), params, grads)
    for i, p in enumerate(params):
        expected = ref_sgd(p0[i], [gs[i] for gs in grads], **kw)
        np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=1e-12)
        assert not np.array_equal(p.data, p0[i])


@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_matches_pytorch_formulas(case):
    cls, kw = ADAM_CASES[case]
    params, grads = make_params(), grad_sequence(STEPS)
    p0 = [p.data.copy() for p in params]
    run(lambda ps: cls(ps, **kw), params, grads)
    for i, p in enumerate(params):
        expected = ref_adam(p0[i], [gs[i] for gs in grads], kw["lr"], *kw["betas"], kw["eps"],
                            kw["weight_decay"], decoupled=cls is AdamW)
        np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=1e-12)


def test_adam_and_adamw_differ_with_weight_decay():
    # Guards the reference test against treating both kinds of decay the same way.
    grads = grad_sequence(3)
    a, b = make_params(), make_params()
    run(lambda ps: Adam(ps, lr=1e-2, weight_decay=0.1), a, grads)
    run(lambda ps: AdamW(ps, lr=1e-2, weight_decay=0.1), b, grads)
    assert not np.allclose(a[0].data, b[0].data)


def test_float32_update_stays_float32_and_close_to_float64_reference():
    kw = SGD_CASES["nesterov_wd"]
    params, grads = make_params(np.float32), grad_sequence(STEPS, np.float32)
    p0 = [p.data.astype(np.float64) for p in params]
    run(lambda ps: SGD(ps, **kw), params, grads)
    for i, p in enumerate(params):
        assert p.dtype == np.float32
        expected = ref_sgd(p0[i], [gs[i].astype(np.float64) for gs in grads], **kw)
        np.testing.assert_allclose(p.data, expected, rtol=1e-5, atol=1e-6)


ALL_CASES = {**{f"sgd_{k}": (SGD, v) for k, v in SGD_CASES.items()}, **ADAM_CASES}


@pytest.mark.parametrize("case", list(ALL_CASES))
def test_flat_mode_is_bitwise_identical_to_per_parameter(case):
    cls, kw = ALL_CASES[case]
    grads = grad_sequence(STEPS, np.float32)
    per = make_params(np.float32)
    run(lambda ps: cls(ps, **kw), per, grads)
    fl = make_params(np.float32)
    flat = FlatParameters(fl)
    opt = run(lambda f: cls(f, **kw), fl, grads, flat=flat)
    flat.check_views()  # the update wrote into the flat buffer, never replaced a view
    for a, b in zip(per, fl, strict=True):
        assert np.array_equal(a.data, b.data)
    # flat mode's per-parameter state entries are views into one flat buffer per name
    for name, buf in opt._flat_state.items():
        assert buf.shape == (flat.size,)
        assert all(np.shares_memory(s[name], buf) for s in opt.state)


def test_flat_passed_as_keyword_equals_flat_as_params():
    grads = grad_sequence(3, np.float32)
    a = make_params(np.float32)
    fa = FlatParameters(a)
    run(lambda f: SGD(a, lr=0.1, momentum=0.9, flat=f), a, grads, flat=fa)
    b = make_params(np.float32)
    fb = FlatParameters(b)
    run(lambda f: SGD(f, lr=0.1, momentum=0.9), b, grads, flat=fb)
    assert np.array_equal(fa.data, fb.data)


def to_checkpoint_and_back(state):
    """What the checkpoint code does: safetensors for tensors, JSON for scalars."""
    blob = st_save({k: backend.to_numpy(v) for k, v in state["tensors"].items()})
    return {"scalars": json.loads(json.dumps(state["scalars"])), "tensors": st_load(blob)}


@pytest.mark.parametrize("case", ["sgd_momentum_dampening_wd", "sgd_nesterov_wd", "adam_l2",
                                  "adamw"])
@pytest.mark.parametrize("mode", ["per_param", "flat", "flat_to_per_param", "per_param_to_flat"])
def test_state_dict_round_trip_continues_bitwise(case, mode):
    cls, kw = ALL_CASES[case]
    n, k = 8, 3
    grads = grad_sequence(n, np.float32)
    save_flat = mode in ("flat", "flat_to_per_param")
    load_flat = mode in ("flat", "per_param_to_flat")

    straight = make_params(np.float32)
    run(lambda ps: cls(ps, **kw), straight, grads)

    first = make_params(np.float32)
    f1 = FlatParameters(first) if save_flat else None
    opt = run(lambda ps: cls(ps, **kw), first, grads[:k], flat=f1)
    state = to_checkpoint_and_back(opt.state_dict())
    assert set(state["tensors"]) == {f"{i}.{b}" for i in range(len(SHAPES))
                                     for b in opt._buffer_names()}
    assert state["scalars"]["step"] == {str(i): k for i in range(len(SHAPES))}

    # Resume in a fresh process's objects: new params (from the saved values), new optimizer
    # built with different hyper-parameters that the state must override.
    resumed = [Parameter(p.data.copy()) for p in first]
    f2 = FlatParameters(resumed) if load_flat else None
    wrong = {**kw, "lr": 123.0}
    opt2 = cls(f2 if load_flat else resumed, **wrong)
    opt2.load_state_dict(state)
    assert opt2.lr == kw["lr"]
    for gs in grads[k:]:
        opt2.zero_grad()
        set_grads(resumed, gs, f2)
        opt2.step()
    for a, b in zip(straight, resumed, strict=True):
        assert np.array_equal(a.data, b.data)


def test_state_dict_tensors_are_copies():
    params = make_params()
    opt = run(lambda ps: SGD(ps, lr=0.1, momentum=0.9), params, grad_sequence(2))
    state = opt.state_dict()
    before = state["tensors"]["0.momentum_buffer"].copy()
    run_more = grad_sequence(1, seed=5)[0]
    set_grads(params, run_more)
    opt.step()
    assert np.array_equal(state["tensors"]["0.momentum_buffer"], before)


def test_load_state_dict_rejects_mismatches_with_clear_messages():
    params = make_params()
    opt = run(lambda ps: SGD(ps, lr=0.1, momentum=0.9), params, grad_sequence(1))
    state = opt.state_dict()
    with pytest.raises(ValueError, match="from a SGD optimizer, this is a Adam"):
        Adam(make_params(), lr=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="the state has 3 parameters, this optimizer 2"):
        SGD(make_params()[:2], lr=0.1, momentum=0.9).load_state_dict(state)
    bad = {"scalars": state["scalars"], "tensors": dict(state["tensors"])}
    bad["tensors"]["1.momentum_buffer"] = np.zeros((5,))
    with pytest.raises(ValueError, match=r"'1.momentum_buffer' has shape \(5,\), the parameter "
                                         r"has \(3,\)"):
        SGD(make_params(), lr=0.1, momentum=0.9).load_state_dict(bad)
    del bad["tensors"]["2.momentum_buffer"]
    with pytest.raises(KeyError, match="2.momentum_buffer"):
        SGD(make_params(), lr=0.1, momentum=0.9).load_state_dict(bad)


def test_per_parameter_mode_skips_params_without_grad_and_flat_refuses_uneven_steps():
    params = make_params()
    opt = SGD(params, lr=0.1, momentum=0.9)
    before = params[1].data.copy()
    params[0].grad = np.ones(SHAPES[0])
    params[2].grad = np.ones(SHAPES[2])
    opt.step()
    assert np.array_equal(params[1].data, before)
    state = opt.state_dict()
    assert state["scalars"]["step"] == {"0": 1, "1": 0, "2": 1}
    assert "1.momentum_buffer" not in state["tensors"]
    SGD(make_params(), lr=0.1, momentum=0.9).load_state_dict(state)  # per-parameter: fine
    fresh = make_params()
    with pytest.raises(ValueError, match="different step counts"):
        SGD(FlatParameters(fresh), lr=0.1, momentum=0.9).load_state_dict(state)


def test_zero_grad_per_parameter_drops_grads_flat_zeroes_in_place():
    params = make_params()
    for p in params:
        p.grad = np.ones(p.shape)
    SGD(params, lr=0.1).zero_grad()
    assert all(p.grad is None for p in params)

    fparams = make_params()
    flat = FlatParameters(fparams)
    flat.grad[...] = 1.0
    grad_buffer = flat.grad
    SGD(flat, lr=0.1).zero_grad()
    assert flat.grad is grad_buffer and not flat.grad.any()
    flat.check_views()

    # Flattened parameters handed over as a plain list: grads are views, zeroed in place.
    flat.grad[...] = 1.0
    SGD(fparams, lr=0.1).zero_grad()
    assert not any(p.grad.any() for p in fparams)  # (the alignment gaps are not parameters)
    flat.check_views()


def test_constructor_errors_name_the_problem():
    params = make_params()
    with pytest.raises(ValueError, match="Nesterov momentum needs momentum > 0"):
        SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas must be in"):
        Adam(params, betas=(0.9, 1.0))
    with pytest.raises(TypeError, match=r"params\[0\] is a ndarray, expected a Parameter"):
        SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError, match="params must be exactly flat.params"):
        SGD(params[:2], lr=0.1, flat=FlatParameters(make_params()))


def test_lr_attribute_is_used_at_each_step():
    params = make_params()
    opt = SGD(params, lr=0.1)
    p0 = params[0].data.copy()
    params[0].grad = np.ones(SHAPES[0])
    opt.lr = 0.5
    opt.step()
    np.testing.assert_allclose(params[0].data, p0 - 0.5)
