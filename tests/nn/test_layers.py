"""Linear, activation, batch-norm, dropout, Flatten and Identity layers."""
import math

import numpy as np
import pytest

from mpinet import amp, backend, nn
from mpinet.autograd import Variable
from mpinet.nn import init
from mpinet.ops import activation as act


@pytest.fixture(autouse=True)
def _seed():
    init.manual_seed(0)


def _x(*shape, seed=0, dtype=np.float32):
    return Variable(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


# ---- Linear --------------------------------------------------------------------------------
def test_linear_parameters_follow_pytorch_layout_and_init():
    layer = nn.Linear(20, 7)
    assert layer.weight.shape == (7, 20) and layer.bias.shape == (7,)
    assert list(layer.state_dict()) == ["weight", "bias"]
    bound = 1 / math.sqrt(20)  # kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)); bias too
    for p in (layer.weight, layer.bias):
        assert p.dtype == np.float32 and np.abs(p.data).max() <= bound
    assert np.abs(layer.weight.data).max() > 0.8 * bound
    assert list(nn.Linear(3, 2, bias=False).state_dict()) == ["weight"]


def test_linear_forward_and_gradients_on_nd_input():
    layer = nn.Linear(4, 3)
    x = _x(2, 5, 4)
    y = layer(x)
    want = x.data.astype(np.float64) @ layer.weight.data.T.astype(np.float64) + layer.bias.data
    np.testing.assert_allclose(y.data, want, rtol=1e-5, atol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(layer.bias.grad, np.full(3, 10.0))
    np.testing.assert_allclose(layer.weight.grad, np.tile(x.data.sum(axis=(0, 1)), (3, 1)),
                               rtol=1e-5)


def test_linear_wrong_input_names_the_layer_path():
    model = nn.Sequential(head=nn.Sequential(nn.Linear(4, 3)))
    with pytest.raises(ValueError, match=r"^head\.0 \(Linear\): expected input \(N, 4\), "
                                         r"got \(2, 5\)$"):
        model(_x(2, 5))
    with pytest.raises(ValueError, match=r"^Linear: expected input \(N, 4\), got \(2, 5\)$"):
        nn.Linear(4, 3)(_x(2, 5))


def test_linear_under_bf16_autocast_keeps_fp32_master_grads():
    layer = nn.Linear(8, 4)
    with amp.autocast("bf16"):
        y = layer(_x(3, 8))
    assert y.dtype == backend.bfloat16()
    y.sum().backward()
    assert layer.weight.grad.dtype == np.float32 and layer.bias.grad.dtype == np.float32


# ---- activations ---------------------------------------------------------------------------
@pytest.mark.parametrize("layer, op", [
    (nn.ReLU(), act.relu), (nn.LeakyReLU(0.1), lambda x: act.leaky_relu(x, 0.1)),
    (nn.Sigmoid(), act.sigmoid), (nn.Tanh(), act.tanh), (nn.GELU(), act.gelu),
    (nn.Softmax(1), lambda x: act.softmax(x, 1)),
    (nn.LogSoftmax(1), lambda x: act.log_softmax(x, 1)),
])
def test_activation_layers_apply_their_op(layer, op):
    x = _x(3, 5)
    np.testing.assert_array_equal(layer(x).data, op(x).data)
    assert layer.parameters() == []


def test_prelu_layer_learns_per_channel_slopes_and_checks_channels():
    layer = nn.PReLU(3, init=0.2)
    assert layer.weight.shape == (3,) and np.allclose(layer.weight.data, 0.2)
    x = Variable(-np.ones((2, 3, 2, 2), np.float32))
    y = layer(x)
    np.testing.assert_allclose(y.data, -0.2)
    y.sum().backward()
    np.testing.assert_allclose(layer.weight.grad, np.full(3, -8.0))
    with pytest.raises(ValueError, match=r"^PReLU: expected input \(N, 3, \.\.\.\), got \(2, 4\)"):
        layer(_x(2, 4))
    assert nn.PReLU()(Variable(np.array([-2.0], np.float32))).data[0] == pytest.approx(-0.5)


# ---- batch norm ----------------------------------------------------------------------------
def test_batchnorm2d_names_and_initial_state_match_pytorch():
    bn = nn.BatchNorm2d(4)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var",
                                     "num_batches_tracked"]
    np.testing.assert_array_equal(bn.weight.data, 1.0)
    np.testing.assert_array_equal(bn.bias.data, 0.0)
    np.testing.assert_array_equal(bn.running_var, 1.0)
    assert bn.running_mean.dtype == np.float32
    assert bn.num_batches_tracked.shape == () and bn.num_batches_tracked.dtype == np.int64


def test_batchnorm2d_train_updates_buffers_and_eval_uses_them():
    bn = nn.BatchNorm2d(3, momentum=0.2)
    x = _x(4, 3, 5, 5)
    x.data[:] = x.data * 2 + 3
    y = bn(x)
    batch_mean = x.data.mean(axis=(0, 2, 3))
    batch_var = x.data.astype(np.float64).var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(bn.running_mean, 0.2 * batch_mean, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, 0.8 + 0.2 * batch_var, rtol=1e-5)
    assert int(bn.num_batches_tracked) == 1
    np.testing.assert_allclose(y.data.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)

    bn.eval()
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    y = bn(x)
    want = (x.data - rm.reshape(1, 3, 1, 1)) / np.sqrt(rv.reshape(1, 3, 1, 1) + 1e-5)
    np.testing.assert_allclose(y.data, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bn.running_mean, rm)  # eval leaves buffers alone
    assert int(bn.num_batches_tracked) == 1


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_fuse_relu_equals_batchnorm_then_relu(momentum):
    fused = nn.BatchNorm2d(3, momentum=momentum, fuse_relu=True)
    plain = nn.BatchNorm2d(3, momentum=momentum)
    assert list(fused.state_dict()) == list(plain.state_dict())
    assert "fuse_relu=True" in repr(fused) and "fuse_relu" not in repr(plain)
    for step in range(2):
        x = _x(4, 3, 5, 5, seed=step)
        y = fused(x)
        y.sum().backward()
        want = nn.ReLU()(plain(x))
        np.testing.assert_array_equal(y.data, want.data)
        assert (y.data == 0).mean() > 0.2
    for name, buf in plain.state_dict().items():
        np.testing.assert_array_equal(fused.state_dict()[name], buf, err_msg=name)
    assert int(fused.num_batches_tracked) == 2
    fused.eval(), plain.eval()
    np.testing.assert_array_equal(fused(x).data, nn.ReLU()(plain(x)).data)


def test_batchnorm_momentum_none_is_a_cumulative_average():
    bn = nn.BatchNorm1d(2, momentum=None)
    batches = [_x(8, 2, seed=s) for s in range(3)]
    for b in batches:
        bn(b)
    np.testing.assert_allclose(bn.running_mean, np.mean([b.data.mean(axis=0) for b in batches],
                                                        axis=0), rtol=1e-5, atol=1e-6)


def test_batchnorm1d_accepts_2d_and_3d_and_names_wrong_input():
    bn = nn.BatchNorm1d(3)
    assert bn(_x(4, 3)).shape == (4, 3) and bn(_x(4, 3, 6)).shape == (4, 3, 6)
    model = nn.Sequential(nn.Identity(), nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match=r"^1 \(BatchNorm2d\): expected input \(N, 3, H, W\), "
                                         r"got \(2, 4, 5, 5\)$"):
        model(_x(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"expected input \(N, 3\) or \(N, 3, L\), "
                                         r"got \(2, 3, 1, 1\)"):
        bn(_x(2, 3, 1, 1))


def test_batchnorm_half_input_keeps_fp32_statistics():
    bn = nn.BatchNorm2d(2)
    x = _x(4, 2, 3, 3, dtype=np.float16)
    y = bn(x)
    assert y.dtype == np.float16 and bn.running_mean.dtype == np.float32


# ---- dropout, flatten, identity -------------------------------------------------------------
def test_dropout_layer_follows_training_mode():
    from mpinet.ops.dropout import DropoutGenerator

    layer = nn.Dropout(0.5, rng=DropoutGenerator(0))
    x = Variable(np.ones((50, 50), np.float32))
    y = layer(x).data
    assert set(np.unique(y)) == {0.0, 2.0}
    layer.eval()
    assert layer(x) is x
    with pytest.raises(ValueError, match="got -0.1"):
        nn.Dropout(-0.1)
    with pytest.raises(TypeError, match="DropoutGenerator or None, got Generator"):
        nn.Dropout(0.5, rng=np.random.default_rng(0))


def test_flatten_and_identity():
    x = _x(2, 3, 4, 5)
    assert nn.Flatten()(x).shape == (2, 60)
    assert nn.Flatten(2)(x).shape == (2, 3, 20)
    assert nn.Identity()(x) is x
    with pytest.raises(ValueError, match=r"^Flatten: expected input with more than 1 "):
        nn.Flatten()(_x(5))
