"""ONNX export and import: every zoo configuration the model tests use runs in onnxruntime (the
oracle) within 1e-4 of mpinet, imports back into a trainable module that equals the original,
and exports again to the identical file; bad files and unsupported ops fail in one line."""
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from mpinet.models import build_model  # noqa: E402

from mpinet import nn, optim  # noqa: E402
from mpinet.autograd import Variable, no_grad  # noqa: E402
from mpinet.interop import export_onnx, import_onnx  # noqa: E402
from mpinet.interop import onnx as onnx_cli  # noqa: E402
from mpinet.interop.onnx_export import OnnxExportError, trace_to_onnx  # noqa: E402
from mpinet.interop.onnx_import import OnnxImportError  # noqa: E402
from mpinet.ops import dropout as dropout_ops  # noqa: E402
from mpinet.ops import loss  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "models"))
from zoo_cases import SMALL  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# The large classifiers (AlexNet/VGG: 4096-wide fully connected layers) and the deep ResNets
# take seconds each to build, trace and serialise; they still run in CI.
SLOW = {"alexnet", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "resnet34", "resnet50"}


def _case_id(case):
    name, opts, _ = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in opts.items())


def _zoo_params():
    return [pytest.param(c, id=_case_id(c), marks=[pytest.mark.slow] if c[0] in SLOW else [])
            for c in SMALL]


def _randomise_bn_statistics(net, seed=1):
    """Running statistics away from (0, 1), so the exported BatchNormalization is exercised."""
    rng = np.random.default_rng(seed)
    for name, buf in net.named_buffers():
        if name.endswith("running_mean"):
            buf[...] = rng.standard_normal(buf.shape) * 0.1
        elif name.endswith("running_var"):
            buf[...] = rng.uniform(0.5, 1.5, buf.shape)


def _forward(net, x):
    with no_grad():
        return net(Variable(x)).data


@pytest.mark.parametrize("case", _zoo_params())
def test_zoo_model_matches_onnxruntime_and_round_trips(case, tmp_path):
    name, opts, out_shape = case
    net = build_model(name, **opts)
    _randomise_bn_statistics(net)
    path = tmp_path / "model.onnx"
    first = export_onnx(net, path)
    assert first.ir_version == 8 and first.opset_import[0].version == 17
    assert first.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    # A batch of 3, not the traced 2: the batch dimension is dynamic.
    x = np.random.default_rng(0).standard_normal((3, *net.input_shape)).astype(np.float32)
    net.eval()
    want = _forward(net, x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    assert got.shape == (3, *out_shape[1:])
    diff = float(np.abs(got - want).max())
    print(f"{_case_id(case)}: max |mpinet - onnxruntime| = {diff:.3g}")
    assert diff <= 1e-4

    imported = import_onnx(path)
    # The original's names (in execution order), with the original's values.
    original = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert sorted(imported.state_dict()) == sorted(original)
    for key, value in imported.state_dict().items():
        np.testing.assert_array_equal(value, original[key], err_msg=key)
    imported.eval()
    np.testing.assert_array_equal(_forward(imported, x), want)
    second = trace_to_onnx(imported, net.input_shape)
    assert second.SerializeToString() == first.SerializeToString()


# Training after import: batch norm in training mode, dropout with the same masks (the default
# generator reseeded before each forward), every op family of the zoo.
TRAIN_CASES = [
    ("mlp", dict(in_features=20, num_classes=4, batchnorm=True, dropout=0.2)),
    ("small-cnn", dict(input_size=28, width=8, batchnorm=False, dropout=0.25)),
    ("squeezenet1_1", dict(num_classes=10, input_size=32)),
    ("lenet5", dict(input_size=28)),
    ("small-cnn", dict(input_size=8)),
    ("resnet18", dict(num_classes=10, input_size=8, stem="cifar")),  # 8x8: every block, fast
    ("unet", dict(num_classes=3, in_channels=1, input_size=32, base_width=8, depth=2)),
]


def _loss_and_grads(net, x, labels):
    dropout_ops.manual_seed(7)  # the same masks for the original and the imported model
    net.zero_grad()
    value = loss.cross_entropy(net(Variable(x)), labels)
    value.backward()
    return float(value.data), {n: p.grad.copy() for n, p in net.named_parameters()}


@pytest.mark.parametrize("name,opts", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_imported_model_trains_like_the_original(name, opts, tmp_path):
    net = build_model(name, **opts)
    _randomise_bn_statistics(net)
    export_onnx(net, tmp_path / "m.onnx")
    imported = import_onnx(tmp_path / "m.onnx")
    net.train()
    imported.train()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, *net.input_shape)).astype(np.float32)
    out_shape = _forward(net.eval(), x).shape
    net.train()
    labels = rng.integers(0, out_shape[1], (out_shape[0], *out_shape[2:]))

    loss_a, grads_a = _loss_and_grads(net, x, labels)
    loss_b, grads_b = _loss_and_grads(imported, x, labels)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert set(grads_b) == set(grads_a)
    for key, g in grads_a.items():
        np.testing.assert_allclose(grads_b[key], g, rtol=1e-5, atol=1e-6, err_msg=key)

    for model in (net, imported):
        optim.SGD(model.parameters(), lr=0.1).step()
    after_a, _ = _loss_and_grads(net, x, labels)
    after_b, _ = _loss_and_grads(imported, x, labels)
    assert after_a != pytest.approx(loss_a, rel=1e-4)  # the step changed the loss ...
    assert after_b == pytest.approx(after_a, rel=1e-5)  # ... and the same way for both
    # Batch-norm running statistics were updated in training mode, as the original's were.
    for key, buf in net.named_buffers():
        if key.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(imported.state_dict()[key], buf, rtol=1e-5, atol=1e-7)


class _Odd(nn.Module):
    """Every op the exporter maps beyond the zoo's: LeakyReLU, PReLU, Sigmoid, Tanh, Softmax,
    LogSoftmax, Sub/Mul/Div with constants, Maximum, LRN, grouped Conv, AvgPool with padding."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, groups=3)
        self.prelu = nn.PReLU(6, init=0.2)
        self.lrn = nn.LocalResponseNorm(3, alpha=0.1, beta=0.75, k=1.5)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        from mpinet.ops import activation as act
        from mpinet.ops import arith, maximum, pool, shape

        y = self.lrn(self.prelu(self.conv(x)))
        y = maximum.maximum(act.leaky_relu(y, 0.1), act.tanh(y))
        y = arith.div(arith.sub(arith.mul(self.pool(y), 2.0), 0.5), 3.0)
        y = shape.flatten(pool.adaptive_avg_pool2d(act.sigmoid(y), 1), 1)
        return act.log_softmax(act.softmax(self.fc(y), 1), 1)


def test_ops_beyond_the_zoo_match_onnxruntime_and_round_trip(tmp_path):
    net = _Odd()
    path = tmp_path / "odd.onnx"
    first = export_onnx(net, path, (3, 7, 7))
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 7)).astype(np.float32)
    want = _forward(net.eval(), x)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    assert float(np.abs(got - want).max()) <= 1e-5
    imported = import_onnx(path)
    np.testing.assert_allclose(_forward(imported.eval(), x), want, rtol=1e-6, atol=1e-7)
    assert trace_to_onnx(imported, (3, 7, 7)).SerializeToString() == first.SerializeToString()


def test_global_average_pool_matches_onnxruntime(tmp_path):
    # GlobalAvgPool2d exports as GlobalAveragePool + Flatten; it imports as an AveragePool over
    # the whole map, so its round trip is equal in values, not node for node.
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.GlobalAvgPool2d())
    path = tmp_path / "gap.onnx"
    export_onnx(net, path, (2, 6, 5))
    x = np.random.default_rng(2).standard_normal((4, 2, 6, 5)).astype(np.float32)
    want = _forward(net.eval(), x)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    assert float(np.abs(got - want).max()) <= 1e-6
    np.testing.assert_allclose(_forward(import_onnx(path).eval(), x), want, rtol=1e-6, atol=1e-7)


def test_export_names_an_op_without_mapping(tmp_path):
    net = nn.Sequential(nn.Linear(4, 3), nn.GELU())
    with pytest.raises(OnnxExportError, match=r"op GELU .* has no ONNX mapping"):
        export_onnx(net, tmp_path / "gelu.onnx", (4,))
    assert not (tmp_path / "gelu.onnx").exists()


def _graph_with(op_type, name):
    from onnx import TensorProto, helper

    node = helper.make_node(op_type, ["input"], ["output"], name=name)
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_import_names_an_unsupported_node_in_one_line(tmp_path):
    path = tmp_path / "erf.onnx"
    onnx.save(_graph_with("Erf", "my_erf"), str(path))
    with pytest.raises(OnnxImportError) as info:
        import_onnx(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "'my_erf'" in message and "op Erf" in message


def test_import_refuses_a_truncated_file(tmp_path):
    net = build_model("lenet5", input_size=28)
    full = tmp_path / "full.onnx"
    export_onnx(net, full)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(OnnxImportError, match=r"cut\.onnx: not a readable ONNX model"):
        import_onnx(cut)
    with pytest.raises(OnnxImportError, match="no such file"):
        import_onnx(tmp_path / "absent.onnx")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mpinet.interop.onnx", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_exports_inspects_and_fails_with_exit_2(tmp_path, capsys):
    out = tmp_path / "lenet.onnx"
    # One real process for the documented command line; the rest in-process (same main()).
    done = _cli("export", "lenet5", str(out), "--input-size", "28", "--num-classes", "7")
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and out.exists()
    assert onnx_cli.main(["inspect", str(out)]) == 0
    assert "input (batch, 1, 28, 28)" in capsys.readouterr().out

    bad = tmp_path / "erf.onnx"
    onnx.save(_graph_with("Erf", "e1"), str(bad))
    for args in (["inspect", str(bad)], ["inspect", str(tmp_path / "absent.onnx")],
                 ["export", "no-such-model", str(tmp_path / "x.onnx")],
                 ["export", "lenet5", str(tmp_path / "y.onnx"), "--opt", "depth=3"]):
        assert onnx_cli.main(args) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err


def test_interop_imports_without_onnx_installed():
    code = ("import sys; sys.modules['onnx'] = None\n"
            "import mpinet.interop as i\n"
            "assert callable(i.load_torchvision_weights)\n"
            "try:\n    i.import_onnx('x.onnx')\nexcept ImportError:\n    print('lazy')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "lazy"


def test_import_refuses_unsupported_attributes_at_import_naming_the_node(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((3, 2), np.float32), "fc.weight")
    node = helper.make_node("Gemm", ["input", "fc.weight"], ["output"], name="fc", alpha=2.0,
                            transB=1)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "gemm.onnx"))
    with pytest.raises(OnnxImportError, match=r"gemm\.onnx: node 'fc' \(Gemm\): .*alpha=1"):
        import_onnx(tmp_path / "gemm.onnx")


def test_a_file_from_pytorchs_exporter_imports(tmp_path):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)
            self.pool = torch.nn.AvgPool2d(2)
            self.fc = torch.nn.Linear(8 * 4 * 4, 5)

        def forward(self, x):
            y = self.pool(torch.nn.functional.leaky_relu(self.bn(self.conv(x)), 0.2))
            return torch.log_softmax(self.fc(torch.flatten(y, 1)), 1)

    net = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / "torch.onnx"
    try:
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    except Exception as e:
        pytest.skip(f"torch.onnx.export(dynamo=False) unavailable: {e}")
    imported = import_onnx(path).eval()
    want = net(x).detach().numpy()
    np.testing.assert_allclose(_forward(imported, x.numpy()), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", [
    nn.Upsample(scale_factor=2, mode="nearest"),
    nn.Upsample(scale_factor=(2, 3), mode="bilinear"),
    nn.Upsample(scale_factor=1.5, mode="bilinear", align_corners=True),
    nn.Upsample(size=(10, 12), mode="bilinear"),
], ids=["nearest-x2", "bilinear-2x3", "bilinear-align-1.5", "bilinear-size"])
def test_upsample_exports_as_resize_matching_onnxruntime(layer, tmp_path):
    net = nn.Sequential(nn.Conv2d(2, 3, 1), layer)
    path = tmp_path / "up.onnx"
    first = export_onnx(net, path, (2, 5, 4))
    x = np.random.default_rng(3).standard_normal((3, 2, 5, 4)).astype(np.float32)
    want = _forward(net.eval(), x)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    assert got.shape == want.shape and float(np.abs(got - want).max()) <= 1e-5
    imported = import_onnx(path)
    np.testing.assert_allclose(_forward(imported.eval(), x), want, rtol=1e-6, atol=1e-6)
    if layer.size is None:  # a scale factor round-trips node for node
        assert trace_to_onnx(imported, (2, 5, 4)).SerializeToString() == first.SerializeToString()


def test_constant_nodes_import(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    shape = helper.make_node("Constant", [], ["shape"], name="c",
                             value=numpy_helper.from_array(np.array([0, -1], np.int64)))
    two = helper.make_node("Constant", [], ["two"], name="k",
                           value=numpy_helper.from_array(np.array(2.0, np.float32)))
    flat = helper.make_node("Reshape", ["input", "shape"], ["flat"], name="r")
    out = helper.make_node("Mul", ["flat", "two"], ["output"], name="m")
    graph = helper.make_graph(
        [shape, two, flat, out], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "c.onnx"))
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    np.testing.assert_array_equal(_forward(import_onnx(tmp_path / "c.onnx"), x),
                                  x.reshape(2, 6) * 2)


def test_a_keras_style_model_exports_its_network(tmp_path):
    import mpinet

    model = mpinet.Model(build_model("mlp", in_features=6, hidden=(5,), num_classes=3))
    proto = export_onnx(model, tmp_path / "m.onnx")
    assert [n.op_type for n in proto.graph.node] == ["Flatten", "Gemm", "Relu", "Gemm"]
