"""build_model / available_models: names, option handling, input_shape, and clear errors."""
import numpy as np
import pytest

from mpinet import models
from mpinet.autograd import Variable, no_grad
from mpinet.models import available_models, build_model

REQUIRED = ["linear-regression", "mlp", "lenet5", "alexnet", "vgg11", "vgg11_bn", "vgg16",
            "vgg16_bn", "squeezenet1_0", "squeezenet1_1", "resnet18", "resnet34", "resnet50",
            "unet"]


def test_every_required_name_is_registered():
    names = available_models()
    assert set(REQUIRED) <= set(names)
    assert len(names) == len(set(names))


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet19'") as err:
        build_model("resnet19")
    for name in REQUIRED:
        assert name in str(err.value)


def test_unknown_option_names_what_the_model_accepts():
    with pytest.raises(ValueError, match=r"'lenet5' has no option\(s\) \['stem'\].*input_size"):
        build_model("lenet5", stem="cifar")


def test_image_options_and_input_shape():
    model = build_model("resnet18", num_classes=7, in_channels=1, input_size=28)
    assert model.input_shape == (1, 28, 28)
    assert tuple(model.fc.weight.shape) == (7, 512)
    assert build_model("lenet5").input_shape == (1, 28, 28)  # each model's own defaults
    assert build_model("squeezenet1_1", num_classes=10).input_shape == (3, 224, 224)
    assert build_model("unet", input_size=32, base_width=4, depth=2).input_shape == (1, 32, 32)


def test_vector_models_take_in_features_or_an_image_shape():
    assert build_model("mlp", in_features=64).input_shape == (64,)
    image = build_model("mlp", in_channels=1, input_size=8, num_classes=10, hidden=(32,))
    assert image.input_shape == (1, 8, 8)
    assert tuple(image[1].weight.shape) == (32, 64)
    assert tuple(image[3].weight.shape) == (10, 32)
    reg = build_model("linear-regression", in_features=3, num_classes=2)  # num_classes = outputs
    assert tuple(reg.linear.weight.shape) == (2, 3) and reg.input_shape == (3,)
    with pytest.raises(ValueError, match="needs its input width"):
        build_model("mlp")
    with pytest.raises(ValueError, match=r"input_shape \(1, 8, 8\) has 64 features but "
                                         r"in_features is 60"):
        build_model("mlp", in_features=60, input_shape=(1, 8, 8))


def test_mlp_layer_numbering_with_batchnorm_and_dropout():
    model = build_model("mlp", in_features=10, hidden=(8,), num_classes=3, batchnorm=True,
                        dropout=0.1)
    kinds = [type(layer).__name__ for layer in model.children()]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]


@pytest.mark.parametrize("name, opts, message", [
    ("alexnet", dict(input_size=62), "input_size 62 is too small.*>= 63"),
    ("vgg16", dict(input_size=31), "input_size 31 is too small.*at least 32"),
    ("vgg11", dict(input_size=256), r"8x8 feature map.*AdaptiveAvgPool2d\(7\)"),
    ("alexnet", dict(input_size=256), r"7x7 feature map.*AdaptiveAvgPool2d\(6\)"),
    ("lenet5", dict(input_size=8), "input_size 8 is too small.*small_cnn"),
    ("squeezenet1_1", dict(input_size=16), "input_size must be >= 32"),
    ("resnet18", dict(num_classes=0), "num_classes must be a positive integer, got 0"),
    ("mlp", dict(in_features=4, dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
])
def test_impossible_configurations_are_refused_with_the_value(name, opts, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, **opts)


def test_smallest_allowed_sizes_build_and_run():
    for name, size in (("alexnet", 63), ("vgg11", 32), ("lenet5", 12), ("squeezenet1_0", 32)):
        model = build_model(name, num_classes=3, input_size=size).eval()
        with no_grad():
            y = model(Variable(np.zeros((1,) + model.input_shape, np.float32)))
        assert tuple(y.shape) == (1, 3), name


def test_builders_are_exported():
    for fn in ("resnet18", "vgg16_bn", "squeezenet1_0", "unet", "mlp", "linear_regression",
               "lenet5", "small_cnn", "alexnet"):
        assert callable(getattr(models, fn))
