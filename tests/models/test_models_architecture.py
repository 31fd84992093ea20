"""The zoo's architectures are the real ones: torchvision's parameter counts, names and shapes.

Only constructors run here (no forward at 224: VGG/AlexNet at 224 are slow on a CPU).
Reference counts: ``sum(p.numel() for p in torchvision.models.<name>().parameters())``.
"""
import gc

import numpy as np
import pytest

from mpinet.models import build_model

TORCHVISION_PARAM_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "alexnet": 61_100_840,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    "vgg11": 132_863_336,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
}


@pytest.fixture(scope="module")
def vgg16():
    model = build_model("vgg16")  # 1000 classes, 224x224: torchvision's defaults
    yield model
    del model
    gc.collect()


@pytest.fixture(scope="module")
def alexnet():
    return build_model("alexnet")


@pytest.fixture(scope="module")
def resnet18():
    return build_model("resnet18")


@pytest.mark.parametrize("name", [n for n in TORCHVISION_PARAM_COUNTS
                                  if n not in ("vgg16", "alexnet")])
def test_parameter_count_equals_torchvision(name):
    model = build_model(name, num_classes=1000)
    assert model.num_parameters() == TORCHVISION_PARAM_COUNTS[name]
    assert model.input_shape == (3, 224, 224)
    del model
    gc.collect()  # the VGGs hold 0.5 GB each


def test_vgg16_parameter_count_equals_torchvision(vgg16):
    assert vgg16.num_parameters() == TORCHVISION_PARAM_COUNTS["vgg16"]


def test_alexnet_parameter_count_equals_torchvision(alexnet):
    assert alexnet.num_parameters() == TORCHVISION_PARAM_COUNTS["alexnet"]


def test_resnet18_names_and_shapes_match_torchvision(resnet18):
    state = resnet18.state_dict()
    expected_shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.weight": (64,),
        "bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.1.bn2.bias": (64,),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_mean": (128,),
        "layer3.1.conv2.weight": (256, 256, 3, 3),
        "layer4.0.downsample.1.weight": (512,),
        "layer4.1.bn2.running_var": (512,),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    }
    for name, shape in expected_shapes.items():
        assert name in state, f"{name} missing from resnet18's state_dict"
        assert tuple(state[name].shape) == shape, name
    for name in ("bn1.num_batches_tracked", "layer2.0.downsample.1.num_batches_tracked"):
        assert name in state
    # torchvision's resnet18 state dict: 62 parameters + 20 BNs x 3 buffers = 122 entries,
    # and no downsample in layer1 or in the second block of any layer.
    assert len(state) == 122
    assert len(resnet18.parameters()) == 62
    assert not any(k.startswith(("layer1.0.downsample", "layer2.1.downsample")) for k in state)


def test_resnet50_bottleneck_names():
    state = build_model("resnet50").state_dict()
    assert tuple(state["layer1.0.conv3.weight"].shape) == (256, 64, 1, 1)
    assert tuple(state["layer1.0.downsample.0.weight"].shape) == (256, 64, 1, 1)
    # v1.5: the stride-2 sits on the 3x3 conv (shape alone cannot show it; count blocks instead)
    assert tuple(state["layer2.0.conv2.weight"].shape) == (128, 128, 3, 3)
    assert "layer3.5.bn3.running_mean" in state and "layer3.6.conv1.weight" not in state
    assert tuple(state["fc.weight"].shape) == (1000, 2048)


def test_vgg16_names_match_torchvision(vgg16):
    names = [n for n, _ in vgg16.named_parameters()]
    conv_indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision's cfg 'D'
    expected = [f"features.{i}.{p}" for i in conv_indices for p in ("weight", "bias")]
    expected += [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    assert names == expected
    state = vgg16.state_dict()
    assert tuple(state["features.0.weight"].shape) == (64, 3, 3, 3)
    assert tuple(state["features.28.weight"].shape) == (512, 512, 3, 3)
    assert tuple(state["classifier.0.weight"].shape) == (4096, 512 * 7 * 7)
    assert tuple(state["classifier.6.bias"].shape) == (1000,)


def test_vgg11_bn_names_interleave_batch_norm():
    state = build_model("vgg11_bn", num_classes=10, input_size=32).state_dict()
    # cfg 'A' with BN: conv at 0, BN at 1, ReLU 2, pool 3, conv 4, ...; last conv 25, BN 26
    assert tuple(state["features.0.weight"].shape) == (64, 3, 3, 3)
    assert tuple(state["features.1.running_mean"].shape) == (64,)
    assert tuple(state["features.4.weight"].shape) == (128, 64, 3, 3)
    assert tuple(state["features.25.weight"].shape) == (512, 512, 3, 3)
    assert "features.26.num_batches_tracked" in state and "features.29.weight" not in state


def test_alexnet_names_match_torchvision(alexnet):
    state = alexnet.state_dict()
    assert [k for k in state if k.endswith("weight")] == [
        "features.0.weight", "features.3.weight", "features.6.weight", "features.8.weight",
        "features.10.weight", "classifier.1.weight", "classifier.4.weight", "classifier.6.weight"]
    assert tuple(state["features.0.weight"].shape) == (64, 3, 11, 11)
    assert tuple(state["classifier.1.weight"].shape) == (4096, 256 * 6 * 6)
    assert tuple(state["classifier.6.weight"].shape) == (1000, 4096)


@pytest.mark.parametrize("name, stem_shape", [("squeezenet1_0", (96, 3, 7, 7)),
                                              ("squeezenet1_1", (64, 3, 3, 3))])
def test_squeezenet_fire_names_match_torchvision(name, stem_shape):
    state = build_model(name).state_dict()
    assert tuple(state["features.0.weight"].shape) == stem_shape
    assert tuple(state["features.3.squeeze.weight"].shape) == (16, stem_shape[0], 1, 1)
    assert tuple(state["features.3.expand1x1.weight"].shape) == (64, 16, 1, 1)
    assert tuple(state["features.3.expand3x3.weight"].shape) == (64, 16, 3, 3)
    assert tuple(state["features.12.expand3x3.bias"].shape) == (256,)
    assert tuple(state["classifier.1.weight"].shape) == (1000, 512, 1, 1)
    assert len(state) == 52  # 26 convolutions, weight and bias each; no buffers


def test_small_inputs_shrink_only_the_first_classifier_layer():
    vgg = build_model("vgg11", num_classes=10, input_size=32)  # features end at 1x1
    assert tuple(vgg.state_dict()["classifier.0.weight"].shape) == (4096, 512)
    alex = build_model("alexnet", num_classes=10, input_size=64)  # features end at 1x1
    assert tuple(alex.state_dict()["classifier.1.weight"].shape) == (4096, 256)


def test_resnet_stems():
    cifar = build_model("resnet18", num_classes=10, input_size=32)  # stem=None picks cifar
    assert tuple(cifar.state_dict()["conv1.weight"].shape) == (64, 3, 3, 3)
    assert type(cifar.maxpool).__name__ == "Identity"
    forced = build_model("resnet18", num_classes=10, input_size=32, stem="imagenet")
    assert tuple(forced.state_dict()["conv1.weight"].shape) == (64, 3, 7, 7)
    with pytest.raises(ValueError, match="stem"):
        build_model("resnet18", stem="tiny")


def _weights(model, name):
    return np.asarray(dict(model.named_parameters())[name].data, dtype=np.float64)


def test_resnet_init_is_torchvisions(resnet18):
    # convolutions: He-normal with fan_out = out_channels * kh * kw
    w = _weights(resnet18, "layer3.0.conv2.weight")
    assert abs(w.std() / np.sqrt(2.0 / (256 * 9)) - 1) < 0.03
    assert abs(w.mean()) < 1e-3
    assert np.all(_weights(resnet18, "layer2.0.bn1.weight") == 1.0)
    assert np.all(_weights(resnet18, "layer2.0.downsample.1.bias") == 0.0)
    # fc keeps PyTorch's Linear default, U(+-1/sqrt(fan_in)) for the bias
    assert np.abs(_weights(resnet18, "fc.bias")).max() <= 1 / np.sqrt(512)
    zeroed = build_model("resnet18", num_classes=10, input_size=32, zero_init_residual=True)
    assert np.all(_weights(zeroed, "layer1.0.bn2.weight") == 0.0)
    assert np.all(_weights(zeroed, "layer1.0.bn1.weight") == 1.0)
    bottleneck = build_model("resnet50", num_classes=10, input_size=32, zero_init_residual=True)
    assert np.all(_weights(bottleneck, "layer4.2.bn3.weight") == 0.0)
    assert np.all(_weights(bottleneck, "layer4.2.bn2.weight") == 1.0)


def test_vgg_init_is_torchvisions(vgg16):
    w = _weights(vgg16, "classifier.3.weight")
    assert abs(w.std() / 0.01 - 1) < 0.01
    assert np.all(_weights(vgg16, "classifier.3.bias") == 0.0)
    conv = _weights(vgg16, "features.2.weight")
    assert abs(conv.std() / np.sqrt(2.0 / (64 * 9)) - 1) < 0.03
    assert np.all(_weights(vgg16, "features.2.bias") == 0.0)


def test_squeezenet_init_is_torchvisions():
    model = build_model("squeezenet1_0")
    final = _weights(model, "classifier.1.weight")
    assert abs(final.std() / 0.01 - 1) < 0.02
    stem = _weights(model, "features.0.weight")
    bound = np.sqrt(6.0 / (3 * 7 * 7))  # Kaiming-uniform, a=0
    assert np.abs(stem).max() <= bound and stem.std() > 0.9 * bound / np.sqrt(3)
    assert np.all(_weights(model, "features.3.expand3x3.bias") == 0.0)
