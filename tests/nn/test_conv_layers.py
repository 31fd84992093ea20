"""Conv, pooling and upsample layers: parameters, init, forward through the ops, errors."""
import math

import numpy as np
import pytest

from mpinet import amp, nn
from mpinet.autograd import Variable
from mpinet.nn import init
from mpinet.ops import conv as conv_ops
from mpinet.ops import pool as pool_ops
from mpinet.ops import upsample as upsample_ops


@pytest.fixture(autouse=True)
def _seed():
    init.manual_seed(0)


def _x(*shape, seed=0):
    return Variable(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def test_conv2d_parameters_follow_pytorch_layout_and_init():
    layer = nn.Conv2d(4, 8, (3, 2), stride=2, padding=1, groups=2)
    assert layer.weight.shape == (8, 2, 3, 2) and layer.bias.shape == (8,)
    assert layer.weight.dtype == np.float32
    assert list(layer.state_dict()) == ["weight", "bias"]
    bound = 1 / math.sqrt(2 * 3 * 2)  # kaiming_uniform(a=sqrt(5)) and bias: 1/sqrt(fan_in)
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.bias.data).max() <= bound
    assert np.abs(layer.weight.data).max() > 0.8 * bound  # drawn from the whole range
    assert list(nn.Conv2d(3, 4, 3, bias=False).state_dict()) == ["weight"]


def test_conv_transpose2d_parameters_follow_pytorch_layout_and_init():
    layer = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2)
    assert layer.weight.shape == (6, 2, 3, 3) and layer.bias.shape == (4,)
    bound = 1 / math.sqrt(2 * 3 * 3)  # PyTorch's fan_in: weight.shape[1] * kh * kw
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.bias.data).max() <= bound


def test_conv_layers_compute_the_functional_ops_and_train():
    x = _x(2, 4, 7, 7)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    y = conv(x)
    want = conv_ops.conv2d(x, conv.weight.data, conv.bias.data, stride=2, padding=1, groups=2)
    np.testing.assert_array_equal(y.data, want.data)
    up = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1)
    z = up(y)
    assert z.shape == (2, 4, 8, 8)  # (4-1)*2 - 2 + 2 + 1 + 1
    z.sum().backward()
    for p in (conv.weight, conv.bias, up.weight, up.bias):
        assert p.grad is not None and p.grad.shape == p.shape and p.grad.dtype == np.float32


def test_conv_under_autocast_computes_in_half_and_keeps_fp32_gradients():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with amp.autocast("fp16"):
        y = conv(_x(2, 3, 5, 5))
    assert y.dtype == np.float16
    y.sum().backward()
    assert conv.weight.grad.dtype == np.float32 and conv.bias.grad.dtype == np.float32


def test_errors_name_the_layer_path_and_shapes():
    model = nn.Sequential(features=nn.Sequential(nn.Conv2d(3, 8, 5), nn.MaxPool2d(2)))
    with pytest.raises(ValueError, match=r"^features\.0 \(Conv2d\): expected input "
                                         r"\(N, 3, H, W\), got \(8, 1, 28, 28\)$"):
        model(_x(8, 1, 28, 28))
    with pytest.raises(ValueError, match=r"^features\.0 \(Conv2d\): conv2d: output size"):
        model(_x(1, 3, 3, 3))
    with pytest.raises(ValueError, match=r"^features\.0 \(Conv2d\): .*dtype float64"):
        model(Variable(np.zeros((1, 3, 8, 8))))
    with pytest.raises(ValueError, match=r"^features\.1 \(MaxPool2d\): expected input "
                                         r"\(N, C, H, W\), got \(8, 9\)$"):
        model.features[1](_x(8, 9))
    head = nn.Sequential(pool=nn.AdaptiveAvgPool2d(2))
    with pytest.raises(ValueError, match=r"^pool \(AdaptiveAvgPool2d\): .*not divisible"):
        head(_x(1, 2, 5, 5))


def test_bad_constructor_arguments_are_refused():
    with pytest.raises(ValueError, match="divisible by groups=3"):
        nn.Conv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        nn.ConvTranspose2d(0, 4, 3)
    with pytest.raises(ValueError, match="mode must be one of"):
        nn.Upsample(mode="area")


def test_pooling_layers_match_their_ops():
    x = _x(2, 3, 8, 8)
    np.testing.assert_array_equal(nn.MaxPool2d(2)(x).data, pool_ops.max_pool2d(x, 2, 2).data)
    np.testing.assert_array_equal(nn.MaxPool2d(3, 2, 1)(x).data,
                                  pool_ops.max_pool2d(x, 3, 2, 1).data)
    np.testing.assert_array_equal(nn.AvgPool2d(2)(x).data, pool_ops.avg_pool2d(x, 2).data)
    assert nn.AdaptiveAvgPool2d(1)(x).shape == (2, 3, 1, 1)
    assert nn.GlobalAvgPool2d()(x).shape == (2, 3)
    np.testing.assert_allclose(nn.GlobalAvgPool2d()(x).data, x.data.mean(axis=(2, 3)),
                               rtol=1e-6)
    up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
    np.testing.assert_array_equal(up(x).data, upsample_ops.upsample(x, 2, "bilinear", True).data)
    assert nn.Upsample(size=(5, 7))(x).shape == (2, 3, 5, 7)


def test_lenet_like_stack_trains_one_step_in_float32():
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.MaxPool2d(2),
                          nn.Conv2d(6, 16, 5), nn.MaxPool2d(2), nn.GlobalAvgPool2d())
    y = model(_x(4, 1, 28, 28))
    assert y.shape == (4, 16) and y.dtype == np.float32
    y.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == np.float32 for p in model.parameters())
    assert "Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))" in repr(model)
