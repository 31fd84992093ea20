"""Caffe import: nets written in Caffe's schema here (prototxt text + a caffemodel built from random
weights with the schema's protobuf classes) import and match the same nets computed independently
with torch.nn.functional to 1e-5; mismatched, truncated and unsupported files fail in one line."""
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("google.protobuf")
torch = pytest.importorskip("torch")
F = torch.nn.functional

from mpinet.autograd import Variable, no_grad  # noqa: E402
from mpinet.interop import caffe, import_caffe  # noqa: E402
from mpinet.interop.caffe import CaffeImportError  # noqa: E402

LENET = """
name: "LeNet"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 } data_param { source: "train_lmdb" batch_size: 64 } }
layer { name: "data" type: "Input" top: "data" include { phase: TEST }
        input_param { shape { dim: 2 dim: 1 dim: 28 dim: 28 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 20 kernel_size: 5 stride: 1
                            weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 50 kernel_size: 5 stride: 1 } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param { num_output: 100 } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss"
        include { phase: TRAIN } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"""

# BN (stored statistics) + Scale, PReLU, LRN, ceil-rounded max pooling with a partial last window,
# grouped and _h/_w convolutions, Concat, Eltwise SUM (coeffs) / PROD / MAX, padded ceil average
# pooling, a lone BatchNorm and a lone Scale, Dropout, InnerProduct, Softmax; legacy input fields.
FANCY = """
name: "Fancy"
input: "data"
input_shape { dim: 2 dim: 3 dim: 19 dim: 19 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_h: 3 kernel_w: 5 pad_h: 1 pad_w: 2 stride: 2 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"
        batch_norm_param { use_global_stats: true eps: 0.001 } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "prelu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2a" type: "Convolution" bottom: "pool1" top: "conv2a"
        convolution_param { num_output: 6 kernel_size: 1 group: 2 } }
layer { name: "conv2b" type: "Convolution" bottom: "pool1" top: "conv2b"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "relu2b" type: "ReLU" bottom: "conv2b" top: "conv2b"
        relu_param { negative_slope: 0.1 } }
layer { name: "cat" type: "Concat" bottom: "conv2a" bottom: "conv2b" top: "cat" }
layer { name: "conv3" type: "Convolution" bottom: "cat" top: "conv3"
        convolution_param { num_output: 12 kernel_size: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "cat" bottom: "conv3" top: "sum"
        eltwise_param { operation: SUM coeff: 0.5 coeff: -1.5 } }
layer { name: "prod" type: "Eltwise" bottom: "sum" bottom: "cat" top: "prod"
        eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "prod" bottom: "conv3" top: "max"
        eltwise_param { operation: MAX } }
layer { name: "pool2" type: "Pooling" bottom: "max" top: "pool2"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "bn2" type: "BatchNorm" bottom: "pool2" top: "bn2" }
layer { name: "drop" type: "Dropout" bottom: "bn2" top: "bn2" dropout_param { dropout_ratio: 0.3 } }
layer { name: "scale2" type: "Scale" bottom: "bn2" top: "scale2" }
layer { name: "ip" type: "InnerProduct" bottom: "scale2" top: "ip"
        inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def _blob(array):
    msg = caffe.caffe_messages()["BlobProto"]()
    msg.shape.dim.extend(array.shape)
    msg.data.extend(np.asarray(array, np.float32).reshape(-1).tolist())
    return msg


def _caffemodel(path, layers: dict):
    """Write a binary NetParameter with ``{layer name: (type, [arrays])}`` as Caffe does."""
    net = caffe.caffe_messages()["NetParameter"]()
    for name, (kind, arrays) in layers.items():
        layer = net.layer.add(name=name, type=kind)
        layer.blobs.extend(_blob(a) for a in arrays)
    path.write_bytes(net.SerializeToString())
    return path


def _lenet_weights(rng):
    return {
        "conv1": ("Convolution", [rng.normal(0, 0.2, (20, 1, 5, 5)), rng.normal(0, 0.1, 20)]),
        "conv2": ("Convolution", [rng.normal(0, 0.05, (50, 20, 5, 5)), rng.normal(0, 0.1, 50)]),
        "ip1": ("InnerProduct", [rng.normal(0, 0.05, (100, 800)), rng.normal(0, 0.1, 100)]),
        "ip2": ("InnerProduct", [rng.normal(0, 0.1, (10, 100)), rng.normal(0, 0.1, 10)]),
    }


def _lenet_reference(x, w):
    t = {k: [torch.from_numpy(np.asarray(a, np.float32).astype(np.float64)) for a in v[1]]
         for k, v in w.items()}
    y = F.max_pool2d(F.conv2d(x, *t["conv1"]), 2, 2)
    y = F.max_pool2d(F.conv2d(y, *t["conv2"]), 2, 2)
    y = F.relu(F.linear(y.flatten(1), *t["ip1"]))
    return F.softmax(F.linear(y, *t["ip2"]), dim=1)


def _fancy_weights(rng):
    s = 2.5  # Caffe's BatchNorm stores mean*s and var*s with the factor s in blob 2
    mean1, var1 = rng.normal(0, 0.2, 8), rng.uniform(0.5, 1.5, 8)
    mean2, var2 = rng.normal(0, 0.2, 12), rng.uniform(0.5, 1.5, 12)
    return {
        "conv1": ("Convolution", [rng.normal(0, 0.3, (8, 3, 3, 5)), rng.normal(0, 0.1, 8)]),
        "bn1": ("BatchNorm", [mean1 * s, var1 * s, np.array([s])]),
        "scale1": ("Scale", [rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.1, 8)]),
        "prelu1": ("PReLU", [rng.uniform(0.05, 0.3, 8)]),
        "conv2a": ("Convolution", [rng.normal(0, 0.3, (6, 4, 1, 1)), rng.normal(0, 0.1, 6)]),
        "conv2b": ("Convolution", [rng.normal(0, 0.2, (6, 8, 3, 3))]),
        "conv3": ("Convolution", [rng.normal(0, 0.3, (12, 12, 1, 1)), rng.normal(0, 0.1, 12)]),
        "bn2": ("BatchNorm", [mean2 * s, var2 * s, np.array([s])]),
        "scale2": ("Scale", [rng.uniform(0.5, 1.5, 12)]),
        "ip": ("InnerProduct", [rng.normal(0, 0.3, (5, 12 * 3 * 3)), rng.normal(0, 0.1, 5)]),
    }


def _fancy_reference(x, w):
    t = {k: [torch.from_numpy(np.asarray(a, np.float32).astype(np.float64)) for a in v[1]]
         for k, v in w.items()}
    s = t["bn1"][2][0]
    y = F.conv2d(x, *t["conv1"], stride=2, padding=(1, 2))
    y = F.batch_norm(y, t["bn1"][0] / s, t["bn1"][1] / s, t["scale1"][0], t["scale1"][1],
                     training=False, eps=1e-3)
    y = F.prelu(y, t["prelu1"][0])
    y = F.local_response_norm(y, 3, alpha=0.5, beta=0.75, k=2.0)
    p1 = F.max_pool2d(y, 3, 2, ceil_mode=True)
    assert p1.shape[2:] == (5, 5)  # 10x10 -> 5x5: the last window hangs over the edge
    a = F.conv2d(p1, *t["conv2a"], groups=2)
    b = F.leaky_relu(F.conv2d(p1, t["conv2b"][0], padding=1), 0.1)
    cat = torch.cat([a, b], 1)
    c3 = F.conv2d(cat, *t["conv3"])
    y = torch.maximum((0.5 * cat - 1.5 * c3) * cat, c3)
    y = F.avg_pool2d(y, 3, 2, padding=1, ceil_mode=True, count_include_pad=True)
    s2 = t["bn2"][2][0]
    y = F.batch_norm(y, t["bn2"][0] / s2, t["bn2"][1] / s2, training=False, eps=1e-5)
    y = y * t["scale2"][0].reshape(1, -1, 1, 1)
    return F.softmax(F.linear(y.flatten(1), *t["ip"]), dim=1)


def _write_net(tmp_path, name, text, weights):
    proto = tmp_path / f"{name}.prototxt"
    proto.write_text(text)
    return proto, _caffemodel(tmp_path / f"{name}.caffemodel", weights)


def _run(net, x):
    net.eval()
    with no_grad():
        return net(Variable(x.astype(np.float32))).data


@pytest.mark.parametrize("name,text,make_weights,reference,shape", [
    ("lenet", LENET, _lenet_weights, _lenet_reference, (2, 1, 28, 28)),
    ("fancy", FANCY, _fancy_weights, _fancy_reference, (2, 3, 19, 19)),
])
def test_caffe_net_matches_torch(tmp_path, name, text, make_weights, reference, shape):
    weights = make_weights(np.random.default_rng(0))
    proto, model = _write_net(tmp_path, name, text, weights)
    net = import_caffe(proto, model)
    assert net.input_shape == shape[1:]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want = reference(torch.from_numpy(x.astype(np.float64)), weights).numpy()
    got = _run(net, x)
    diff = float(np.abs(got - want).max())
    print(f"{name}: max |mpinet - torch| = {diff:.3g}")
    assert got.shape == want.shape and diff <= 1e-5
    if name == "lenet":
        assert net.skipped == ["accuracy (Accuracy)"]  # the TRAIN-only layers are not even listed
    else:  # BN + Scale folded into one BatchNorm2d; a lone BatchNorm/Scale kept as they are
        assert "scale1" not in dict(net.named_modules()) and "bn1.weight" in net.state_dict()
        assert type(net.bn1).__name__ == "GlobalStatsBatchNorm2d"


def test_imported_caffe_net_trains(tmp_path):
    weights = _lenet_weights(np.random.default_rng(0))
    net = import_caffe(*_write_net(tmp_path, "lenet", LENET, weights))
    from mpinet import optim
    from mpinet.ops import loss

    x = np.random.default_rng(2).standard_normal((4, 1, 28, 28)).astype(np.float32)
    labels = np.array([1, 2, 3, 4])
    opt = optim.SGD(net.parameters(), lr=0.5)
    before = []
    for _ in range(2):
        net.zero_grad()
        value = loss.mse(net(Variable(x)), np.eye(10, dtype=np.float32)[labels])
        value.backward()
        opt.step()
        before.append(float(value.data))
    assert before[1] < before[0]


def test_caffe_net_exports_to_onnx_and_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from mpinet.interop import export_onnx

    weights = _fancy_weights(np.random.default_rng(0))
    net = import_caffe(*_write_net(tmp_path, "fancy", FANCY, weights))
    export_onnx(net, tmp_path / "fancy.onnx")
    x = np.random.default_rng(1).standard_normal((3, 3, 19, 19)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "fancy.onnx"),
                               providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert float(np.abs(got - _run(net, x)).max()) <= 1e-5


def _one_line_error(fn, *patterns):
    with pytest.raises(CaffeImportError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for p in patterns:
        assert p in message, message
    return message


def test_mismatched_caffemodel_is_refused_naming_file_and_layer(tmp_path):
    rng = np.random.default_rng(0)
    proto = tmp_path / "lenet.prototxt"
    proto.write_text(LENET)

    missing_bias = _lenet_weights(rng)
    missing_bias["conv2"] = ("Convolution", missing_bias["conv2"][1][:1])
    path = _caffemodel(tmp_path / "a.caffemodel", missing_bias)
    _one_line_error(lambda: import_caffe(proto, path), "a.caffemodel", "'conv2'", "1 blob(s)")

    wrong_shape = _lenet_weights(rng)
    wrong_shape["conv1"] = ("Convolution", [rng.normal(size=(20, 1, 3, 3)), np.zeros(20)])
    path = _caffemodel(tmp_path / "b.caffemodel", wrong_shape)
    _one_line_error(lambda: import_caffe(proto, path), "b.caffemodel", "'conv1'",
                    "(20, 1, 3, 3)", "(20, 1, 5, 5)")

    extra_blob = _lenet_weights(rng)
    extra_blob["ip2"] = ("InnerProduct", extra_blob["ip2"][1] + [np.zeros(3)])
    path = _caffemodel(tmp_path / "d.caffemodel", extra_blob)
    _one_line_error(lambda: import_caffe(proto, path), "d.caffemodel", "'ip2'", "3 blob(s)")

    no_layer = _lenet_weights(rng)
    del no_layer["ip2"]
    path = _caffemodel(tmp_path / "c.caffemodel", no_layer)
    _one_line_error(lambda: import_caffe(proto, path), "c.caffemodel", "no layer 'ip2'")


def test_truncated_and_broken_files_are_refused(tmp_path):
    proto, model = _write_net(tmp_path, "lenet", LENET, _lenet_weights(np.random.default_rng(0)))
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(model.read_bytes()[:-1001])
    _one_line_error(lambda: import_caffe(proto, cut), "cut.caffemodel")
    broken = tmp_path / "broken.prototxt"
    broken.write_text(LENET[: len(LENET) // 2])
    _one_line_error(lambda: import_caffe(broken), "broken.prototxt", "not a valid Caffe prototxt")
    _one_line_error(lambda: import_caffe(tmp_path / "absent.prototxt"), "absent.prototxt")
    mixed = tmp_path / "mixed.prototxt"
    mixed.write_text(LENET + 'layers { name: "x" type: RELU bottom: "prob" top: "prob" }')
    _one_line_error(lambda: import_caffe(mixed), "mixed.prototxt", "mixes V1")


def test_unsupported_layer_is_named(tmp_path):
    text = LENET.replace('type: "Pooling" bottom: "conv1"', 'type: "SPP" bottom: "conv1"')
    proto = tmp_path / "spp.prototxt"
    proto.write_text(text)
    _one_line_error(lambda: import_caffe(proto), "spp.prototxt", "layer 'pool1' (SPP)",
                    "cannot import")
    within = tmp_path / "within.prototxt"
    within.write_text(FANCY.replace("local_size: 3", "local_size: 3 norm_region: WITHIN_CHANNEL"))
    _one_line_error(lambda: import_caffe(within), "layer 'norm1' (LRN)", "ACROSS_CHANNELS")


def test_caffe_pooling_rounding_edge_is_refused_not_silently_different(tmp_path):
    # Without padding Caffe keeps a last window that starts past the input (stride > kernel);
    # mpinet (like PyTorch) does not: refused rather than a differently sized output.
    text = ('input: "data" input_shape { dim: 1 dim: 1 dim: 5 dim: 5 }\n'
            'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
            'pooling_param { pool: MAX kernel_size: 1 stride: 3 } }')
    proto = tmp_path / "edge.prototxt"
    proto.write_text(text)
    _one_line_error(lambda: import_caffe(proto), "layer 'p' (Pooling)", "(3, 3)", "(2, 2)")


def test_cli_summarises_and_exits_2_on_errors(tmp_path, capsys):
    proto, model = _write_net(tmp_path, "lenet", LENET, _lenet_weights(np.random.default_rng(0)))
    done = subprocess.run([sys.executable, "-m", "mpinet.interop.caffe", str(proto), str(model)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "input 'data' (batch, 1, 28, 28)" in done.stdout and "output 'prob'" in done.stdout
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(model.read_bytes()[:100])
    assert caffe.main([str(proto), str(cut)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "cut.caffemodel" in err


def test_batchnorm_scale_factor_zero_means_zero_statistics(tmp_path):
    # Caffe: scale = 0 if blob2 == 0 else 1 / blob2, so a zero factor zeroes mean and variance.
    text = ('input: "data" input_shape { dim: 1 dim: 2 dim: 2 dim: 2 }\n'
            'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" '
            'batch_norm_param { eps: 0.25 } }')
    proto, model = _write_net(tmp_path, "bn0", text,
                              {"bn": ("BatchNorm", [np.array([3.0, 4.0]), np.array([5.0, 6.0]),
                                                    np.array([0.0])])})
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    np.testing.assert_allclose(_run(import_caffe(proto, model), x), x / np.sqrt(0.25), rtol=1e-6)


DECONV = """
name: "Deconv"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 4 dim: 5 dim: 5 } } }
layer { name: "up" type: "Deconvolution" bottom: "data" top: "up"
        convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2 } }
layer { name: "sig" type: "Sigmoid" bottom: "up" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "sig" top: "tanh" }
layer { name: "split" type: "Split" bottom: "tanh" top: "a" top: "b" }
layer { name: "join" type: "Eltwise" bottom: "a" bottom: "b" top: "join" }
layer { name: "flat" type: "Flatten" bottom: "join" top: "flat" }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip"
        inner_product_param { num_output: 3 transpose: true } }
"""


def test_deconvolution_split_flatten_and_transposed_inner_product_match_torch(tmp_path):
    rng = np.random.default_rng(0)
    w_up, b_up = rng.normal(0, 0.3, (4, 3, 4, 4)), rng.normal(0, 0.1, 6)
    w_ip, b_ip = rng.normal(0, 0.1, (6 * 10 * 10, 3)), rng.normal(0, 0.1, 3)  # (K, N): transposed
    proto, model = _write_net(tmp_path, "deconv", DECONV, {
        "up": ("Deconvolution", [w_up, b_up]), "ip": ("InnerProduct", [w_ip, b_ip])})
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)

    def t(a):
        return torch.from_numpy(np.asarray(a, np.float32).astype(np.float64))

    y = F.conv_transpose2d(t(x), t(w_up), t(b_up), stride=2, padding=1, groups=2)
    y = 2 * torch.tanh(torch.sigmoid(y))
    want = (y.flatten(1) @ t(w_ip) + t(b_ip)).numpy()
    got = _run(import_caffe(proto, model), x)
    assert float(np.abs(got - want).max()) <= 1e-5


LENET_V1 = """
name: "LeNet"
input: "data"
input_dim: 2 input_dim: 1 input_dim: 28 input_dim: 28
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 20 kernel_size: 5 stride: 1 } }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
         pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "conv2" type: CONVOLUTION bottom: "pool1" top: "conv2"
         convolution_param { num_output: 50 kernel_size: 5 stride: 1 } }
layers { name: "pool2" type: POOLING bottom: "conv2" top: "pool2"
         pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "pool2" top: "ip1"
         inner_product_param { num_output: 100 } }
layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }
layers { name: "ip2" type: INNER_PRODUCT bottom: "ip1" top: "ip2"
         inner_product_param { num_output: 10 } }
layers { name: "prob" type: SOFTMAX bottom: "ip2" top: "prob" }
"""


def test_legacy_v1_net_and_caffemodel_are_upgraded(tmp_path):
    weights = _lenet_weights(np.random.default_rng(0))
    proto = tmp_path / "v1.prototxt"
    proto.write_text(LENET_V1)
    v1 = caffe.caffe_messages()["NetParameter"]()  # the caffemodel in V1 form too, legacy blobs
    codes = {"Convolution": 4, "InnerProduct": 14}
    for name, (kind, arrays) in weights.items():
        layer = v1.layers.add(name=name, type=codes[kind])
        for a in arrays:
            dims = (1,) * (4 - a.ndim) + a.shape  # (num, channels, height, width)
            blob = layer.blobs.add(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
            blob.data.extend(np.asarray(a, np.float32).reshape(-1).tolist())
    model = tmp_path / "v1.caffemodel"
    model.write_bytes(v1.SerializeToString())
    x = np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32)
    want = _lenet_reference(torch.from_numpy(x.astype(np.float64)), weights).numpy()
    assert float(np.abs(_run(import_caffe(proto, model), x) - want).max()) <= 1e-5
