import numpy as np
import pytest

from mpinet.autograd import Variable
from mpinet.random import keyed_bits
from mpinet.ops import dropout as D
from mpinet.testing import check_gpu_matches_cpu


def test_eval_mode_and_p_zero_are_the_identity():
    x = Variable(np.ones((3, 4)))
    assert D.dropout(x, 0.5, training=False) is x
    assert D.dropout(x, 0.0, training=True) is x


def test_training_drops_about_p_and_scales_the_rest():
    x = np.ones((200, 500), np.float32)
    y = D.dropout(x, 0.3, training=True, rng=D.DropoutGenerator(1)).data
    kept = y != 0
    assert abs(1 - kept.mean() - 0.3) < 0.005  # 100k Bernoulli draws: sd 0.0014
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    assert y.dtype == np.float32


def test_mask_is_the_keyed_bits_of_seed_and_call_count():
    """The documented definition, checked from outside: element i of call n is kept iff the
    top 24 bits of keyed_bits((seed, n), i) reach round(p * 2**24)."""
    gen = D.DropoutGenerator(42)
    x = np.ones((7, 9))
    for call in range(3):
        y = D.dropout(x, 0.25, True, rng=gen).data
        bits = keyed_bits((42, call), np.arange(x.size)).reshape(x.shape)
        expected = np.where(bits >> np.uint64(40) >= np.uint64(round(0.25 * 2**24)), 1 / 0.75, 0)
        np.testing.assert_array_equal(y, expected)
    assert gen.get_state() == {"seed": 42, "calls": 3}


def test_backward_uses_the_forward_mask():
    x = Variable(np.random.default_rng(0).uniform(1, 2, (50, 40)), requires_grad=True)
    y = D.dropout(x, 0.5, training=True, rng=D.DropoutGenerator(2))
    gy = np.random.default_rng(3).standard_normal(x.shape)
    y.backward(gy)
    np.testing.assert_allclose(x.grad, gy * (y.data / x.data), rtol=1e-12)


def test_masks_are_reproducible_from_a_seed_and_state():
    x = np.ones((64, 64))
    a = D.dropout(x, 0.5, True, rng=D.DropoutGenerator(7)).data
    b = D.dropout(x, 0.5, True, rng=D.DropoutGenerator(7)).data
    c = D.dropout(x, 0.5, True, rng=D.DropoutGenerator(8)).data
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    D.manual_seed(11)
    d = D.dropout(x, 0.5, True).data
    saved = D.default_generator().get_state()
    e = D.dropout(x, 0.5, True).data
    assert (d != e).any()  # successive calls draw fresh masks
    D.manual_seed(11)
    np.testing.assert_array_equal(D.dropout(x, 0.5, True).data, d)
    D.default_generator().set_state(saved)  # a restored state continues the same sequence
    np.testing.assert_array_equal(D.dropout(x, 0.5, True).data, e)


def test_p_one_drops_everything_and_bad_arguments_are_refused():
    x = Variable(np.ones(5), requires_grad=True)
    y = D.dropout(x, 1.0, True)
    np.testing.assert_array_equal(y.data, 0.0)
    y.backward(np.ones(5))
    np.testing.assert_array_equal(x.grad, 0.0)
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\], got 1.5"):
        D.dropout(x, 1.5, True)
    with pytest.raises(TypeError, match="rng must be an mpinet.ops.dropout.DropoutGenerator or "
                                        "None, got Generator"):
        D.dropout(x, 0.5, True, rng=np.random.default_rng(0))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_gpu_masks_equal_cpu_masks_bit_for_bit(dtype):
    x = np.random.default_rng(0).standard_normal((33, 101)).astype(dtype)
    check_gpu_matches_cpu(lambda v: D.dropout(v, 0.4, True, rng=D.DropoutGenerator(5)), [x],
                          atol=0, rtol=0)


@pytest.mark.gpu
def test_gpu_bfloat16_dropout_equals_cpu_bit_for_bit():
    import cupy as cp
    import ml_dtypes

    x = np.random.default_rng(0).standard_normal((33, 101)).astype(ml_dtypes.bfloat16)
    cpu = D.dropout(x, 0.3, True, rng=D.DropoutGenerator(9)).data
    gpu = D.dropout(cp.asarray(x), 0.3, True, rng=D.DropoutGenerator(9)).data
    assert gpu.dtype == x.dtype
    np.testing.assert_array_equal(gpu.get().astype(np.float32), cpu.astype(np.float32))


@pytest.mark.gpu
def test_gpu_generator_advances_on_the_device_and_restores():
    import cupy as cp

    gen = D.DropoutGenerator(3)
    x = cp.ones((400, 500), cp.float32)
    y = D.dropout(x, 0.25, True, rng=gen).data
    assert abs(float((y == 0).mean()) - 0.25) < 0.005
    state = gen.state
    assert gen.get_state() == {"seed": 3, "calls": 1}
    z = D.dropout(x, 0.25, True, rng=gen).data
    assert gen.state is state and gen.get_state()["calls"] == 2  # advanced in place
    assert bool((y != z).any())
    gen.set_state({"seed": 3, "calls": 1})
    assert gen.state is state
    cp.testing.assert_array_equal(D.dropout(x, 0.25, True, rng=gen).data, z)
