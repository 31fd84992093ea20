import numpy as np
import pytest

from mpinet.autograd import Variable
from mpinet.ops import dropout as D
from mpinet.testing import check_gpu_matches_cpu


def test_eval_mode_and_p_zero_are_the_identity():
    x = Variable(np.ones((3, 4)))
    assert D.dropout(x, 0.5, training=False) is x
    assert D.dropout(x, 0.0, training=True) is x


def test_training_drops_about_p_and_scales_the_rest():
    x = np.ones((200, 500), np.float32)
    y = D.dropout(x, 0.3, training=True, rng=np.random.default_rng(1)).data
    kept = y != 0
    assert abs(1 - kept.mean() - 0.3) < 0.005  # 100k Bernoulli draws: sd 0.0014
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    assert y.dtype == np.float32


def test_backward_uses_the_forward_mask():
    x = Variable(np.random.default_rng(0).uniform(1, 2, (50, 40)), requires_grad=True)
    y = D.dropout(x, 0.5, training=True, rng=np.random.default_rng(2))
    gy = np.random.default_rng(3).standard_normal(x.shape)
    y.backward(gy)
    np.testing.assert_allclose(x.grad, gy * (y.data / x.data), rtol=1e-12)


def test_masks_are_reproducible_from_a_seed():
    x = np.ones((64, 64))
    a = D.dropout(x, 0.5, True, rng=np.random.default_rng(7)).data
    b = D.dropout(x, 0.5, True, rng=np.random.default_rng(7)).data
    c = D.dropout(x, 0.5, True, rng=np.random.default_rng(8)).data
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    D.manual_seed(11)
    d = D.dropout(x, 0.5, True).data
    e = D.dropout(x, 0.5, True).data
    D.manual_seed(11)
    np.testing.assert_array_equal(D.dropout(x, 0.5, True).data, d)
    assert (d != e).any()  # successive calls draw fresh masks


def test_p_one_drops_everything_and_bad_p_is_refused():
    x = Variable(np.ones(5), requires_grad=True)
    y = D.dropout(x, 1.0, True)
    np.testing.assert_array_equal(y.data, 0.0)
    y.backward(np.ones(5))
    np.testing.assert_array_equal(x.grad, 0.0)
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\], got 1.5"):
        D.dropout(x, 1.5, True)


@pytest.mark.gpu
def test_host_generator_gives_the_same_mask_on_gpu():
    x = np.random.default_rng(0).standard_normal((32, 100)).astype(np.float32)
    check_gpu_matches_cpu(lambda v: D.dropout(v, 0.4, True, rng=np.random.default_rng(5)), [x],
                          atol=1e-6, rtol=1e-6)


@pytest.mark.gpu
def test_device_generator_drops_about_p():
    import cupy as cp

    D.manual_seed(3)
    y = D.dropout(cp.ones((400, 500), cp.float32), 0.25, True).data
    assert abs(float((y == 0).mean()) - 0.25) < 0.005
