"""TrainStep, the one update sequence: fp16 loss scaling skips an overflowing step and backs off
the scale; the clip hook sees the reduced, unscaled gradient right before the optimizer; the
precision name becomes dtypes once."""
import numpy as np
import pytest

from mpinet import amp, nn
from mpinet.comm import create_communicator
from mpinet.nn import init
from mpinet.optim import SGD
from mpinet.parallel.data_parallel import DataParallel
from mpinet.training import Precision, TrainStep


def _step(precision="fp32", clip=None):
    init.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3))
    comm = create_communicator("mpi")
    dp = DataParallel(net, comm)
    opt = SGD(dp.flat, lr=0.1)
    return TrainStep(net, dp, opt, comm, precision=Precision.parse(precision),
                     loss="cross_entropy", clip=clip), dp


def _data():
    rng = np.random.default_rng(1)
    return rng.standard_normal((6, 4)).astype(np.float32), np.arange(6) % 3


def test_precision_is_parsed_once_into_dtypes():
    assert Precision.parse("fp32") == Precision("fp32")
    half = Precision.parse("float16")
    assert (half.name, half.compute_dtype, half.loss_scaling) == ("fp16", np.float16, True)
    assert Precision.parse(half) is half
    assert not Precision.parse("bf16").loss_scaling
    with pytest.raises(ValueError, match="precision must be one of"):
        Precision.parse("fp8")
    with amp.autocast(half):
        assert amp.compute_dtype() == np.float16


def test_fp16_overflow_skips_the_step_and_halves_the_scale():
    step, dp = _step("fp16")
    x, y = _data()
    before = dp.flat.data.copy()
    scale = step.scaler.scale_value
    x_bad = x.copy()
    x_bad[0, 0] = np.inf  # an inf input makes inf/nan gradients
    with np.errstate(invalid="ignore", over="ignore"):
        step(x_bad, y, len(x))
    assert step.found_inf and step.scaler.scale_value == scale * 0.5
    np.testing.assert_array_equal(dp.flat.data, before)  # skipped
    assert not dp.flat.grad.any()  # and the gradients were discarded
    step(x, y, len(x))
    assert not step.found_inf and not np.array_equal(dp.flat.data, before)


def test_clip_hook_sees_the_unscaled_gradient_before_the_optimizer():
    seen = []

    def clip(flat):
        seen.append((flat.grad.copy(), flat.data.copy()))
        flat.grad[...] = 0  # zero gradient: plain SGD then leaves the weights unchanged

    x, y = _data()
    ref, ref_dp = _step("fp32")
    ref.update = lambda: None  # keep the fp32 gradient for comparison
    ref(x, y, len(x))
    step, dp = _step("fp16", clip=clip)
    before = dp.flat.data.copy()
    step(x, y, len(x))
    (grad, data), = seen
    np.testing.assert_array_equal(data, before)
    np.testing.assert_allclose(grad, ref_dp.flat.grad, rtol=2e-2, atol=1e-3)
    np.testing.assert_array_equal(dp.flat.data, before)
