"""LR schedules: values at known steps, composition, exact resume from state_dict."""
import json
import math

import numpy as np
import pytest

from mpinet.autograd import Parameter
from mpinet.optim import (SGD, Constant, CosineAnnealing, LinearWarmup, StepLR, WarmupThen,
                          linear_scaling_rule)


def make_opt(lr=0.4):
    return SGD([Parameter(np.zeros(3))], lr=lr, momentum=0.9)


def lrs_seen(sched, n):
    """The lr each of n optimizer steps uses (read before the step, as the optimizer would)."""
    out = []
    for _ in range(n):
        out.append(sched.optimizer.lr)
        sched.step()
    return out


def test_step_lr_values():
    sched = StepLR(make_opt(0.4), step_size=3, gamma=0.5)
    assert lrs_seen(sched, 8) == [0.4, 0.4, 0.4, 0.2, 0.2, 0.2, 0.1, 0.1]


def test_cosine_values_at_known_steps_and_clamps_at_min():
    sched = CosineAnnealing(make_opt(1.0), total_steps=4, min_lr=0.1)
    got = lrs_seen(sched, 7)
    # min + (base - min) * (1 + cos(pi t / T)) / 2 at t = 0..4, then stays at min.
    expected = [1.0, 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2, 0.55,
                0.1 + 0.9 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.1, 0.1, 0.1]
    np.testing.assert_allclose(got, expected, rtol=1e-15, atol=1e-15)
    assert sched.get_lr() == 0.1


def test_warmup_then_cosine():
    opt = make_opt(0.8)
    sched = WarmupThen(CosineAnnealing(opt, total_steps=2, min_lr=0.0), warmup_steps=4)
    np.testing.assert_allclose(lrs_seen(sched, 8), [0.2, 0.4, 0.6, 0.8, 0.8, 0.4, 0.0, 0.0],
                               atol=1e-15)


def test_linear_warmup_then_constant_and_zero_warmup():
    sched = LinearWarmup(make_opt(0.3), warmup_steps=3)
    np.testing.assert_allclose(lrs_seen(sched, 5), [0.1, 0.2, 0.3, 0.3, 0.3], rtol=1e-15)
    sched = WarmupThen(StepLR(make_opt(1.0), step_size=1, gamma=0.5), warmup_steps=0)
    assert lrs_seen(sched, 3) == [1.0, 0.5, 0.25]


def test_schedule_drives_the_optimizer_update():
    p = Parameter(np.zeros(2))
    opt = SGD([p], lr=1.0)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        p.grad = np.ones(2)
        opt.step()
        sched.step()
    np.testing.assert_allclose(p.data, -(1.0 + 0.5 + 0.25))


@pytest.mark.parametrize("build", [
    lambda o: StepLR(o, step_size=4, gamma=0.3),
    lambda o: CosineAnnealing(o, total_steps=17, min_lr=0.01),
    lambda o: WarmupThen(CosineAnnealing(o, total_steps=11, min_lr=0.0), warmup_steps=5),
    lambda o: LinearWarmup(o, warmup_steps=6),
    lambda o: Constant(o),
], ids=["step", "cosine", "warmup_cosine", "warmup_constant", "constant"])
def test_resume_from_state_dict_is_exact(build):
    n, k = 25, 9
    straight = lrs_seen(build(make_opt(0.7)), n)
    first = build(make_opt(0.7))
    head = lrs_seen(first, k)
    state = json.loads(json.dumps(first.state_dict()))  # must be JSON-able
    # A fresh optimizer and schedule (as after a restart: the optimizer's lr is the base again).
    opt2 = make_opt(0.7)
    resumed = build(opt2)
    resumed.load_state_dict(state)
    assert opt2.lr == straight[k]
    assert head + lrs_seen(resumed, n - k) == straight


def test_load_state_dict_of_another_type_is_refused():
    state = StepLR(make_opt(), step_size=2).state_dict()
    with pytest.raises(ValueError, match="from a StepLR schedule, this is a CosineAnnealing"):
        CosineAnnealing(make_opt(), total_steps=3).load_state_dict(state)


def test_linear_scaling_rule():
    assert linear_scaling_rule(0.1, 1024) == pytest.approx(0.4)
    assert linear_scaling_rule(0.1, 512, base_batch=128) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="global_batch=0"):
        linear_scaling_rule(0.1, 0)
