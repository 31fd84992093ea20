"""The added activations, losses and schedules against PyTorch's CPU wheel (float64), and their
backward passes against float64 numerical gradients (issue 18, item 3)."""
import numpy as np
import pytest

from mpinet.autograd import Parameter, Variable
from mpinet.nn import get_activation
from mpinet.ops import activation as act
from mpinet.ops import loss as L
from mpinet.optim import SGD, clip as clip_mod, lr_scheduler as S
from mpinet.testing import check_backward

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _away_from_kinks(shape, seed, kinks=(0.0,)):
    x = np.random.default_rng(seed).standard_normal(shape) * 3
    for k in kinks:  # numerical gradients straddling a kink would be wrong
        x[np.abs(x - k) < 1e-3] += 0.01
    return x


ACTIVATIONS = [
    # (name, our layer options, torch function, kinks)
    ("elu", {}, lambda t: F.elu(t), (0,)),
    ("elu", {"alpha": 0.3}, lambda t: F.elu(t, alpha=0.3), (0,)),
    ("silu", {}, F.silu, ()),
    ("softplus", {}, F.softplus, ()),
    ("softplus", {"beta": 2.0, "threshold": 3.0}, lambda t: F.softplus(t, 2.0, 3.0), (1.5,)),
    ("hardswish", {}, F.hardswish, (-3, 3)),
    ("relu6", {}, F.relu6, (0, 6)),
    ("mish", {}, F.mish, ()),
    ("gelu_tanh", {}, lambda t: F.gelu(t, approximate="tanh"), ()),
]


@pytest.mark.parametrize("name,opts,ref,kinks", ACTIVATIONS,
                         ids=[f"{a[0]}{a[1] or ''}" for a in ACTIVATIONS])
def test_activation_forward_backward_vs_torch(name, opts, ref, kinks):
    x = _away_from_kinks((4, 5, 3), 0, kinks)
    x[0, 0, :3] = [40.0, -40.0, 7.5]  # saturated regions and softplus' linear branch
    layer = get_activation(name, **opts)
    v = Variable(x.copy(), requires_grad=True)
    y = layer(v)
    gy = np.random.default_rng(1).standard_normal(x.shape)
    y.backward(gy)
    t = torch.tensor(x, requires_grad=True)
    ty = ref(t)
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(v.grad, t.grad.numpy(), rtol=1e-10, atol=1e-12)
    check_backward(lambda a: layer(a), [_away_from_kinks((3, 4), 2, kinks)], atol=1e-7)


def test_activation_float32_stays_float32_and_unknown_name_is_refused():
    x = Variable(np.linspace(-5, 5, 7, dtype=np.float32))
    for name in ("elu", "silu", "softplus", "hardswish", "relu6", "mish", "gelu_tanh"):
        assert get_activation(name)(x).dtype == np.float32
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        get_activation("swishy")


def _probs(shape, seed):
    return 1 / (1 + np.exp(-np.random.default_rng(seed).standard_normal(shape) * 2))


LOSSES = [
    # (our loss, torch loss, input maker, target maker)
    ("bce", lambda y, t, r: L.binary_cross_entropy(y, t, reduction=r),
     lambda y, t, r: F.binary_cross_entropy(y, t, reduction=r),
     lambda: _probs((6, 3), 0), lambda: _probs((6, 3), 1)),
    ("bce_hard_targets", lambda y, t, r: L.binary_cross_entropy(y, t, reduction=r),
     lambda y, t, r: F.binary_cross_entropy(y, t, reduction=r),
     lambda: _probs((8,), 0), lambda: (np.arange(8) % 2).astype(np.float64)),
    ("bce_logits", lambda y, t, r: L.binary_cross_entropy_with_logits(y, t, reduction=r),
     lambda y, t, r: F.binary_cross_entropy_with_logits(y, t, reduction=r),
     lambda: _away_from_kinks((5, 4), 0) * 5, lambda: _probs((5, 4), 1)),
    ("bce_logits_pos_weight",
     lambda y, t, r: L.binary_cross_entropy_with_logits(y, t, reduction=r,
                                                        pos_weight=np.array([1.0, 2.0, 0.5, 3.0])),
     lambda y, t, r: F.binary_cross_entropy_with_logits(
         y, t, reduction=r, pos_weight=torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)),
     lambda: _away_from_kinks((5, 4), 3), lambda: _probs((5, 4), 4)),
    ("l1", lambda y, t, r: L.l1(y, t, reduction=r), lambda y, t, r: F.l1_loss(y, t, reduction=r),
     lambda: _away_from_kinks((4, 3), 0), lambda: np.zeros((4, 3))),
    ("smooth_l1", lambda y, t, r: L.smooth_l1(y, t, reduction=r),
     lambda y, t, r: F.smooth_l1_loss(y, t, reduction=r),
     lambda: _away_from_kinks((4, 5), 0, (-1, 1)), lambda: np.zeros((4, 5))),
    ("smooth_l1_beta", lambda y, t, r: L.smooth_l1(y, t, reduction=r, beta=0.4),
     lambda y, t, r: F.smooth_l1_loss(y, t, reduction=r, beta=0.4),
     lambda: _away_from_kinks((4, 5), 1, (-0.4, 0.4)), lambda: np.ones((4, 5))),
    ("huber", lambda y, t, r: L.huber(y, t, reduction=r, delta=2.0),
     lambda y, t, r: F.huber_loss(y, t, reduction=r, delta=2.0),
     lambda: _away_from_kinks((4, 5), 2, (-2, 2)), lambda: np.zeros((4, 5))),
    ("kl_div", lambda y, t, r: L.kl_div(y, t, reduction=r),
     lambda y, t, r: F.kl_div(y, t, reduction=r),
     lambda: np.log(_probs((4, 5), 0)),
     lambda: np.where(np.arange(20).reshape(4, 5) % 7 == 0, 0.0, _probs((4, 5), 1))),
    ("kl_div_log_target", lambda y, t, r: L.kl_div(y, t, reduction=r, log_target=True),
     lambda y, t, r: F.kl_div(y, t, reduction=r, log_target=True),
     lambda: np.log(_probs((3, 4), 0)), lambda: np.log(_probs((3, 4), 1))),
]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,ours,ref,make_y,make_t", LOSSES, ids=[c[0] for c in LOSSES])
def test_loss_forward_backward_vs_torch(name, ours, ref, make_y, make_t, reduction):
    y, t = make_y(), make_t()
    v = Variable(y.copy(), requires_grad=True)
    out = ours(v, t, reduction)
    gy = np.random.default_rng(5).standard_normal(out.shape)
    out.backward(gy)
    ty = torch.tensor(y, requires_grad=True)
    tout = ref(ty, torch.tensor(t), reduction)
    tout.backward(torch.tensor(gy))
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(v.grad, ty.grad.numpy(), rtol=1e-9, atol=1e-12)
    if reduction == "mean":
        check_backward(lambda a: ours(a, t, reduction), [y], atol=1e-6)


def test_kl_div_batchmean_and_nll_vs_torch():
    logq, p = np.log(_probs((4, 5), 0)), _probs((4, 5), 1)
    v = Variable(logq.copy(), requires_grad=True)
    L.kl_div(v, p, reduction="batchmean").backward()
    tq = torch.tensor(logq, requires_grad=True)
    F.kl_div(tq, torch.tensor(p), reduction="batchmean").backward()
    np.testing.assert_allclose(v.grad, tq.grad.numpy(), rtol=1e-12)
    # nll over (N, C, T) with an ignored position, each reduction
    logp = act.log_softmax_array(np.random.default_rng(0).standard_normal((3, 4, 5)), 1)
    labels = np.random.default_rng(1).integers(0, 4, (3, 5))
    labels[1, 2] = -100
    for reduction in ("mean", "sum", "none"):
        v = Variable(logp.copy(), requires_grad=True)
        out = L.nll(v, labels, reduction=reduction)
        gy = np.random.default_rng(2).standard_normal(out.shape)
        out.backward(gy)
        tl = torch.tensor(logp, requires_grad=True)
        tout = F.nll_loss(tl, torch.tensor(labels), reduction=reduction)
        tout.backward(torch.tensor(gy))
        np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(v.grad, tl.grad.numpy(), rtol=1e-12)
    check_backward(lambda a: L.nll(a, labels), [logp])


def test_loss_bad_inputs():
    with pytest.raises(ValueError, match=r"binary_cross_entropy: input must be probabilities"):
        L.binary_cross_entropy(Variable(np.array([1.5])), np.array([1.0]))
    with pytest.raises(ValueError, match=r"l1: input shape \(3,\) and target shape \(2,\)"):
        L.l1(Variable(np.zeros(3)), np.zeros(2))
    with pytest.raises(TypeError, match="labels must be integer"):
        L.nll(Variable(np.zeros((2, 3))), np.zeros(2))


def _torch_lrs(make_sched, steps, lr=0.5):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make_sched(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def _our_lrs(make_sched, steps, lr=0.5):
    opt = SGD([Parameter(np.zeros(1))], lr=lr)
    sched = make_sched(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.lr)
        sched.step()
    return lrs


TS = torch.optim.lr_scheduler if torch is not None else None
SCHEDULES = [
    ("exponential", lambda o: S.Exponential(o, 0.9), lambda o: TS.ExponentialLR(o, 0.9)),
    ("multistep", lambda o: S.MultiStep(o, [3, 7, 8], 0.5),
     lambda o: TS.MultiStepLR(o, [3, 7, 8], 0.5)),
    ("polynomial", lambda o: S.Polynomial(o, 12, power=2.0),
     lambda o: TS.PolynomialLR(o, total_iters=12, power=2.0)),
    ("onecycle", lambda o: S.OneCycle(o, 20), lambda o: TS.OneCycleLR(
        o, max_lr=0.5, total_steps=20, cycle_momentum=False)),
    ("onecycle_linear_3phase", lambda o: S.OneCycle(o, 25, max_lr=1.0, pct_start=0.25,
                                                    anneal="linear", three_phase=True),
     lambda o: TS.OneCycleLR(o, max_lr=1.0, total_steps=25, pct_start=0.25,
                             anneal_strategy="linear", three_phase=True, cycle_momentum=False)),
]


@pytest.mark.parametrize("name,ours,theirs", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_schedule_vs_torch(name, ours, theirs):
    steps = 20 if name.startswith("onecycle") and "3phase" not in name else 25 if "3phase" in name \
        else 15
    np.testing.assert_allclose(_our_lrs(ours, steps), _torch_lrs(theirs, steps), rtol=1e-12)


@pytest.mark.parametrize("mode,threshold_mode,cooldown", [("min", "rel", 0), ("max", "abs", 2)])
def test_reduce_lr_on_plateau_vs_torch(mode, threshold_mode, cooldown):
    values = [5, 4, 4.2, 4.1, 4.3, 3.0, 3.0, 3.1, 3.05, 3.2, 3.3, 1.0, 1.5, 1.6, 1.7, 1.8]
    p = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([p], lr=1.0)
    tsched = TS.ReduceLROnPlateau(topt, mode=mode, factor=0.5, patience=1,
                                  threshold_mode=threshold_mode, threshold=0.05,
                                  cooldown=cooldown, min_lr=0.1)
    opt = SGD([Parameter(np.zeros(1))], lr=1.0)
    sched = S.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=1,
                                threshold_mode=threshold_mode, threshold=0.05,
                                cooldown=cooldown, min_lr=0.1)
    ours, theirs = [], []
    for v in values:
        tsched.step(v)
        sched.on_epoch_end({"val_loss": v})
        sched.step()  # per optimizer step: keeps the plateau's lr
        ours.append(opt.lr)
        theirs.append(topt.param_groups[0]["lr"])
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert min(ours) < 1.0  # the sequence does trigger reductions
    state = sched.state_dict()
    opt2 = SGD([Parameter(np.zeros(1))], lr=1.0)
    again = S.ReduceLROnPlateau(opt2, mode=mode)
    again.load_state_dict(state)
    assert opt2.lr == opt.lr and again.bad_epochs == sched.bad_epochs


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_and_value_vs_torch(max_norm):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    ps = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
    for p, g in zip(ps, grads, strict=True):
        p.grad = torch.tensor(g)
    ours = [g.copy() for g in grads]
    norm = clip_mod.clip_grad_norm_(ours, max_norm)
    tnorm = torch.nn.utils.clip_grad_norm_(ps, max_norm)
    assert float(norm) == pytest.approx(float(tnorm), rel=1e-12)
    for a, p in zip(ours, ps, strict=True):
        np.testing.assert_allclose(a, p.grad.numpy(), rtol=1e-12)
    clip_mod.clip_grad_value_(ours, 0.3)
    torch.nn.utils.clip_grad_value_(ps, 0.3)
    for a, p in zip(ours, ps, strict=True):
        np.testing.assert_allclose(a, p.grad.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="clip_norm must be > 0"):
        clip_mod.GradClipper(clip_norm=0)


def test_mlp_takes_any_registered_activation_by_name():
    from mpinet.models import build_model

    model = build_model("mlp", in_features=4, hidden=(5,), num_classes=2, activation="mish")
    assert [type(m).__name__ for m in model.children()] == ["Flatten", "Linear", "Mish", "Linear"]
    assert model(Variable(np.ones((3, 4), np.float32))).shape == (3, 2)
    with pytest.raises(ValueError, match="unknown activation 'swishy'; choose one of: relu"):
        build_model("mlp", in_features=4, activation="swishy")
