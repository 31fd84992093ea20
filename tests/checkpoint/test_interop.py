"""mpinet.interop: torchvision-style state dicts (safetensors) load into zoo models by name, and
the outputs then match PyTorch's on the same input.

The PyTorch side is built from plain ``torch.nn`` modules with torchvision's names (torchvision
itself is not needed): an MLP with BatchNorm1d, LeNet-5, a conv/BN CNN, and ResNet-18 written as
torchvision writes it. The torch tests need the ``torch`` test extra (CPU wheel) and are skipped
without it; the mapping rules are tested with NumPy state dicts always.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from mpinet import interop
from mpinet.autograd import Variable, no_grad
from mpinet.models import build_model


def _forward(net, x: np.ndarray, train: bool) -> np.ndarray:
    net.train(train)
    with no_grad():
        return np.asarray(net(Variable(x)).data)


# ---- the mapping rules, no torch needed ---------------------------------------------------
def _mlp():
    return build_model("mlp", in_features=6, hidden=(5,), num_classes=3, batchnorm=True)


def _as_torchvision_dict(net, prefix: str = "") -> OrderedDict:
    """What a torch state dict of the same model would hold, as NumPy: float64 weights and
    torch's int64 0-d counters."""
    out = OrderedDict()
    for k, v in net.state_dict().items():
        v = np.asarray(v)
        out[prefix + k] = (v.astype(np.float64) + 0.5 if v.dtype.kind == "f"
                           else np.array(7, np.int64))
    return out


def test_identity_mapping_with_casts_and_ddp_prefix():
    source = _mlp()
    state = _as_torchvision_dict(source, prefix="module.")
    net = _mlp()
    result = interop.load_torchvision_weights(net, state)
    assert result.missing == [] and result.unexpected == [] and result.skipped == []
    assert result.loaded == list(net.state_dict())
    for k, v in net.state_dict().items():
        expected = state["module." + k]
        assert v.dtype == np.asarray(source.state_dict()[k]).dtype, f"{k} keeps the model's dtype"
        np.testing.assert_array_equal(v, expected.astype(v.dtype))
    assert int(net.state_dict()["2.num_batches_tracked"]) == 7


def test_counter_without_a_buffer_is_skipped_and_exclude_keeps_a_head():
    state = _as_torchvision_dict(_mlp())
    state["9.num_batches_tracked"] = np.array(1, np.int64)  # a BN the model does not have
    result = interop.load_torchvision_weights(_mlp(), state)
    assert result.skipped == ["9.num_batches_tracked"]
    state["4.weight"] = np.zeros((7, 5))  # a 7-class head
    state["4.bias"] = np.zeros(7)
    net = _mlp()
    before = np.asarray(net.state_dict()["4.weight"]).copy()
    result = interop.load_torchvision_weights(net, state, strict=False, exclude=("4.",))
    assert "4.weight" in result.missing and "4.weight" in result.skipped
    np.testing.assert_array_equal(net.state_dict()["4.weight"], before)


def test_mismatches_are_refused_by_name():
    state = _as_torchvision_dict(_mlp())
    state["4.weight"] = np.zeros((7, 5))
    with pytest.raises(ValueError, match=r"'4.weight' is \(7, 5\) in the state but \(3, 5\)"):
        interop.load_torchvision_weights(_mlp(), state)
    state = _as_torchvision_dict(_mlp())
    del state["1.bias"]
    state["extra.weight"] = np.zeros(2)
    with pytest.raises(KeyError, match=r"lacks \['1.bias'\].*has \['extra.weight'\]"):
        interop.load_torchvision_weights(_mlp(), state)
    result = interop.load_torchvision_weights(_mlp(), state, strict=False)
    assert result.missing == ["1.bias"] and result.unexpected == ["extra.weight"]
    state = _as_torchvision_dict(_mlp())
    state["1.weight"] = state["1.weight"].astype(np.int32)
    with pytest.raises(ValueError, match="integer and floating"):
        interop.load_torchvision_weights(_mlp(), state)


def test_reads_a_safetensors_file_with_bfloat16(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from safetensors import TensorSpec, serialize

    state = _as_torchvision_dict(_mlp())
    arrays = {k: (v.astype(ml_dtypes.bfloat16) if v.dtype.kind == "f" else v)
              for k, v in state.items()}
    specs = {k: TensorSpec(dtype=a.dtype.name, shape=a.shape, data_ptr=a.ctypes.data,
                           data_len=a.nbytes) for k, a in arrays.items()}
    (tmp_path / "bf16.safetensors").write_bytes(bytes(serialize(specs)))
    net = _mlp()
    interop.load_torchvision_weights(net, str(tmp_path / "bf16.safetensors"))
    np.testing.assert_array_equal(net.state_dict()["1.weight"],
                                  arrays["1.weight"].astype(np.float32))


# ---- against PyTorch ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="the torch test extra is not installed "
                                                "(pip install torch, CPU wheel)")
    torch.set_num_threads(1)
    return torch


def _torch_mlp(torch):
    nn = torch.nn
    return nn.Sequential(nn.Flatten(1), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(),
                         nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _torch_conv_classifier(torch, features, classifier):
    class ConvClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.classifier = features, classifier

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    return ConvClassifier()


def _torch_lenet5(torch):
    nn = torch.nn
    return _torch_conv_classifier(
        torch,
        nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                      nn.Linear(84, 10)))


def _torch_small_cnn(torch, width=8):
    nn = torch.nn

    def cbr(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return _torch_conv_classifier(
        torch,
        nn.Sequential(*cbr(1, width), *cbr(width, width), nn.MaxPool2d(2),
                      *cbr(width, 2 * width), *cbr(2 * width, 2 * width), nn.MaxPool2d(2)),
        nn.Sequential(nn.Linear(2 * width * 2 * 2, 128), nn.ReLU(), nn.Linear(128, 10)))


def _torch_resnet18(torch, num_classes=10):
    """torchvision.models.resnet18, as torchvision writes it (names included)."""
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(64, 1)
            self.layer2 = self._make_layer(128, 2)
            self.layer3 = self._make_layer(256, 2)
            self.layer4 = self._make_layer(512, 2)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)

        def _make_layer(self, planes, stride):
            downsample = None
            if stride != 1 or self.inplanes != planes:
                downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                           nn.BatchNorm2d(planes))
            layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes
            layers.append(BasicBlock(planes, planes))
            return nn.Sequential(*layers)

        def stem_and_first_block(self, x):
            return self.layer1[0](self.maxpool(self.relu(self.bn1(self.conv1(x)))))

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet()


def _randomize_and_export(torch, tmodel, in_shape, path):
    """Non-trivial BN parameters and running statistics (two training passes), then the state
    dict to a safetensors file, as a user converting torchvision weights would."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    with torch.no_grad():
        for m in tmodel.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
        tmodel.train()
        for _ in range(2):
            tmodel(torch.randn(4, *in_shape))
    save_file({k: v.contiguous() for k, v in tmodel.state_dict().items()}, str(path))


CASES = {
    # name: (torch builder, mpinet build_model args, input shape (C, H, W) or (F,))
    "mlp-bn": (_torch_mlp, ("mlp", dict(in_features=16, hidden=(12, 8), num_classes=3,
                                        batchnorm=True)), (1, 4, 4)),
    "lenet5": (_torch_lenet5, ("lenet5", dict(in_channels=1, num_classes=10, input_size=28)),
               (1, 28, 28)),
    "small-cnn-bn": (_torch_small_cnn, ("small-cnn", dict(in_channels=1, num_classes=10,
                                                          input_size=8, width=8)), (1, 8, 8)),
    "resnet18": (_torch_resnet18, ("resnet18", dict(num_classes=10, in_channels=3,
                                                    input_size=64, stem="imagenet")), (3, 64, 64)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_match_pytorch(torch, tmp_path, case):
    build_torch, (name, opts), in_shape = CASES[case]
    torch.manual_seed(1)
    tmodel = build_torch(torch)
    path = tmp_path / f"{case}.safetensors"
    _randomize_and_export(torch, tmodel, in_shape, path)

    net = build_model(name, **opts)
    result = interop.load_torchvision_weights(net, str(path))
    assert result.missing == [] and result.unexpected == []
    assert sorted(result.loaded) == sorted(tmodel.state_dict())

    x = np.random.default_rng(2).standard_normal((3, *in_shape)).astype(np.float32)
    with torch.no_grad():
        tmodel.eval()
        ref_eval = tmodel(torch.from_numpy(x)).numpy()
        tmodel.train()
        ref_train = tmodel(torch.from_numpy(x)).numpy()  # batch statistics; updates running ones
    got_eval = _forward(net, x, train=False)
    got_train = _forward(net, x, train=True)
    scale = float(np.abs(ref_eval).max())
    np.testing.assert_allclose(got_eval, ref_eval, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(got_train, ref_train, rtol=1e-4,
                               atol=1e-5 * float(np.abs(ref_train).max()))
    # The training pass moved the running statistics the same way in both.
    ours = net.state_dict()
    for k, v in tmodel.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(np.asarray(ours[k]), v.numpy(), rtol=1e-4, atol=1e-6,
                                       err_msg=k)
        elif k.endswith("num_batches_tracked"):
            assert int(ours[k]) == int(v), k


def test_resnet18_stem_and_first_block_match_pytorch(torch, tmp_path):
    torch.manual_seed(3)
    tmodel = _torch_resnet18(torch)
    path = tmp_path / "r18.safetensors"
    _randomize_and_export(torch, tmodel, (3, 64, 64), path)
    net = build_model("resnet18", num_classes=10, in_channels=3, input_size=64, stem="imagenet")
    interop.load_torchvision_weights(net, str(path))
    x = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)
    tmodel.eval()
    with torch.no_grad():
        ref = tmodel.stem_and_first_block(torch.from_numpy(x)).numpy()  # (2, 64, 16, 16)
    net.eval()
    with no_grad():
        h = net.maxpool(net.bn1(net.conv1(Variable(x))))  # bn1 applies the stem's ReLU
        got = np.asarray(net.layer1[0](h).data)
    assert got.shape == ref.shape == (2, 64, 16, 16)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * float(np.abs(ref).max()))
