"""Dynamic loss scaling: scale, unscale in place, overflow detection, skip, backoff, growth."""
import json

import numpy as np
import pytest

from mpinet.autograd import Parameter, Variable
from mpinet.flat import FlatParameters
from mpinet.optim import SGD, LossScaler


def test_scale_multiplies_the_loss_and_its_gradient():
    w = Parameter(np.array([2.0], np.float32))
    scaler = LossScaler(init_scale=8.0)
    loss = (w * w).sum()
    scaled = scaler.scale(loss)
    assert isinstance(scaled, Variable) and scaled.item() == 32.0
    scaled.backward()
    assert w.grad[0] == 32.0  # 8 * d(w^2)/dw
    assert scaler.unscale_([w]) is False
    assert w.grad[0] == 4.0


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_unscale_on_flat_buffer_detects_non_finite(bad):
    params = [Parameter(np.ones((2, 3), np.float32)), Parameter(np.ones(4, np.float32))]
    flat = FlatParameters(params)
    flat.grad[...] = 1024.0
    scaler = LossScaler(init_scale=1024.0)
    assert scaler.unscale_(flat) is False
    np.testing.assert_array_equal(params[0].grad, 1.0)  # in place, through the views
    params[1].grad[2] = bad
    assert scaler.unscale_(flat) is True


def test_unscale_a_single_flat_gradient_array():
    g = np.full(6, 64.0, np.float32)
    scaler = LossScaler(init_scale=64.0)
    assert scaler.unscale_(g) is False
    np.testing.assert_array_equal(g, 1.0)  # in place on the array itself
    g[5] = np.inf
    assert scaler.unscale_(g) is True


def test_unscale_list_of_arrays_and_params_with_none_grad():
    scaler = LossScaler(init_scale=4.0)
    a, b = np.full(3, 8.0), np.full(2, 8.0)
    assert scaler.unscale_([a, b]) is False
    np.testing.assert_array_equal(b, 2.0)
    b[0] = np.nan
    assert scaler.unscale_([a, b]) is True
    p, q = Parameter(np.zeros(2)), Parameter(np.zeros(2))
    p.grad = np.full(2, 4.0)
    assert scaler.unscale_and_check([p, q]) is False and q.grad is None


def test_overflow_skips_step_and_backs_off_clean_steps_grow():
    p = Parameter(np.zeros(2, np.float32))
    opt = SGD([p], lr=1.0)
    scaler = LossScaler(init_scale=16.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)

    def one_step(grad):
        p.grad = np.asarray(grad, np.float32) * scaler.get_scale()
        found = scaler.unscale_([p])
        stepped = scaler.step(opt, found)
        scaler.update(found)
        return stepped

    assert one_step([np.inf, 1.0]) is False
    np.testing.assert_array_equal(p.data, 0.0)  # skipped: no change
    assert scaler.get_scale() == 8.0 and scaler.growth_tracker == 0
    assert one_step([1.0, 1.0]) and one_step([1.0, 1.0])
    assert scaler.get_scale() == 8.0 and scaler.growth_tracker == 2
    assert one_step([1.0, 1.0])
    assert scaler.get_scale() == 16.0 and scaler.growth_tracker == 0  # grew after 3 clean steps
    np.testing.assert_array_equal(p.data, -3.0)  # unscaled grads of 1 each step
    assert one_step([1.0, 1.0]) and one_step([np.nan, 0.0]) is False
    assert scaler.get_scale() == 8.0 and scaler.growth_tracker == 0  # overflow resets the count


def test_state_dict_round_trip_and_disabled_is_pass_through():
    scaler = LossScaler(init_scale=32.0, growth_interval=5)
    scaler.update(False)
    scaler.update(True)
    scaler.update(False)
    state = json.loads(json.dumps(scaler.state_dict()))
    other = LossScaler()
    other.load_state_dict(state)
    assert other.state_dict() == scaler.state_dict()
    assert other.get_scale() == 16.0 and other.growth_tracker == 1

    off = LossScaler(enabled=False)
    loss = Variable(np.array(3.0, np.float32))
    assert off.scale(loss) is loss
    g = np.array([np.inf])
    assert off.unscale_([g]) is False and np.isinf(g[0])
    off.update(True)
    assert off.get_scale() == 1.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="backoff_factor"):
        LossScaler(backoff_factor=1.5)
    with pytest.raises(ValueError, match="growth_interval must be a positive"):
        LossScaler(growth_interval=0)
