"""Caffe models in mpinet: a ``.prototxt`` (+ ``.caffemodel``) becomes a trainable ``CaffeNet``.

    net = mpinet.interop.import_caffe("deploy.prototxt", "weights.caffemodel")
    net.eval(); y = net(x)                      # x (N, C, H, W) float32

Both files are read with Caffe's own protobuf schema (the subset in caffe_subset.proto, field
numbers as Caffe's) through the ``protobuf`` package: Caffe itself is not needed. The prototxt is
protobuf text format; fields the subset leaves out (data sources, loss settings, ...) are skipped.

Layers (Caffe type -> mpinet):
  Convolution (2-D; groups, dilation, pad/stride/kernel in both the repeated and the _h/_w forms,
  bias_term) -> Conv2d; Deconvolution (the same parameters) -> ConvTranspose2d; InnerProduct
  (flattens from ``axis``, ``transpose``) -> a Linear over the flattened input; Pooling MAX/AVE
  (``round_mode`` CEIL, Caffe's default, or FLOOR; padding; global_pooling) -> MaxPool2d/AvgPool2d,
  whose ceil rounding and clipped last window are Caffe's;
  ReLU (negative_slope -> LeakyReLU); PReLU (channel_shared); BatchNorm (blobs mean*s, var*s, s:
  divided by the scale factor s as Caffe does, 0 when s = 0) followed by Scale on its output ->
  one BatchNorm2d whose weight/bias are the Scale's gamma/beta; a BatchNorm alone -> BatchNorm2d
  with weight 1, bias 0; ``use_global_stats: true`` -> always the stored statistics (otherwise
  batch statistics when training, with momentum 1 - moving_average_fraction: an exponential
  average, where Caffe keeps a bias-corrected running sum); Scale alone
  (per channel, bias_term); LRN (ACROSS_CHANNELS) -> LocalResponseNorm; Dropout; Concat;
  Eltwise (SUM with coeff, PROD, MAX); Softmax; Sigmoid; TanH; Flatten; Split.
  Input layers, the legacy ``input:``/``input_shape``/``input_dim`` fields, and data layers (with
  ``input_shape=`` given) name the input. Loss and accuracy layers and layers excluded from the
  TEST phase are skipped (listed in ``net.skipped``). Anything else is refused, naming the layer and
  its type. Nets in the legacy V1 format (``layers { type: CONVOLUTION ... }``, prototxt or
  caffemodel) are upgraded on reading as Caffe's UpgradeV1Net does.

Parameters are named ``<layer>.weight`` / ``.bias`` (and ``.running_mean`` / ``.running_var``),
layer names with '.' changed to '_'. A data layer's ``transform_param`` (scale, mean_value) is kept
in ``net.preprocessing`` but not applied: preprocess inputs as the model was trained.
"""
from __future__ import annotations

import math
import os
from functools import lru_cache

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from .. import backend, nn
from ..autograd import Parameter, Variable, no_grad
from ..ops import arith, linear, norm, shape
from ..ops import maximum as maximum_ops
from .proto_schema import message_classes

_SCHEMA = os.path.join(os.path.dirname(__file__), "caffe_subset.proto")
DATA_LAYERS = {"Data", "ImageData", "HDF5Data", "WindowData", "DummyData", "MemoryData"}
SKIPPED_LAYERS = {"Accuracy", "SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss",
                  "HingeLoss", "MultinomialLogisticLoss", "InfogainLoss", "ContrastiveLoss",
                  "Silence"}
_TEST = 1  # caffe.Phase.TEST


class CaffeImportError(ValueError):
    """A Caffe file mpinet cannot import; the message names the file and the layer."""


@lru_cache(maxsize=1)
def caffe_messages() -> dict:
    """{message name: class} of Caffe's schema subset (NetParameter, LayerParameter, ...)."""
    with open(_SCHEMA, encoding="utf-8") as f:
        return message_classes(f.read(), "caffe_subset.proto")


def import_caffe(prototxt, caffemodel=None, *, input_shape=None) -> "CaffeNet":
    """Build the CaffeNet of ``prototxt``, with the weights of ``caffemodel`` if given (else
    mpinet's default initialisation). ``input_shape`` (C, H, W) is needed only when the input
    comes from a data layer whose size the prototxt does not state."""
    prototxt = os.fspath(prototxt)
    net = read_prototxt(prototxt)
    weights = read_caffemodel(os.fspath(caffemodel)) if caffemodel is not None else None
    return CaffeNet(net, weights, prototxt, None if caffemodel is None else os.fspath(caffemodel),
                    input_shape)


def read_prototxt(path: str):
    msg = caffe_messages()["NetParameter"]()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CaffeImportError(f"{path}: cannot read the prototxt ({e.strerror})") from None
    try:
        text_format.Parse(text, msg, allow_unknown_field=True)
    except text_format.ParseError as e:
        raise CaffeImportError(f"{path}: not a valid Caffe prototxt: {e}") from None
    return _upgrade_v1(msg, path)


def read_caffemodel(path: str):
    msg = caffe_messages()["NetParameter"]()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CaffeImportError(f"{path}: cannot read the caffemodel ({e.strerror})") from None
    try:
        msg.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise CaffeImportError(f"{path}: not a readable .caffemodel ({e}); is the file complete "
                               f"(truncated downloads fail here)?") from None
    return _upgrade_v1(msg, path)


# V1 layer type (enum name) -> the V2 type string, as Caffe's UpgradeV1LayerType.
_V1_TYPES = {
    "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution",
    "INNER_PRODUCT": "InnerProduct", "POOLING": "Pooling", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "TANH": "TanH", "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "LRN": "LRN",
    "DROPOUT": "Dropout", "CONCAT": "Concat", "ELTWISE": "Eltwise", "SPLIT": "Split",
    "FLATTEN": "Flatten", "DATA": "Data", "IMAGE_DATA": "ImageData", "MEMORY_DATA": "MemoryData",
    "HDF5_DATA": "HDF5Data", "WINDOW_DATA": "WindowData", "DUMMY_DATA": "DummyData",
    "ACCURACY": "Accuracy", "EUCLIDEAN_LOSS": "EuclideanLoss", "SILENCE": "Silence",
    "ABSVAL": "AbsVal", "ARGMAX": "ArgMax", "BNLL": "BNLL", "EXP": "Exp", "MVN": "MVN",
    "POWER": "Power", "SLICE": "Slice", "THRESHOLD": "Threshold", "IM2COL": "Im2col",
    "HINGE_LOSS": "HingeLoss", "INFOGAIN_LOSS": "InfogainLoss",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "HDF5_OUTPUT": "HDF5Output",
}
_V1_PARAMS = ("concat_param", "convolution_param", "dropout_param", "eltwise_param",
              "inner_product_param", "lrn_param", "memory_data_param", "pooling_param",
              "relu_param", "softmax_param", "transform_param")


def _upgrade_v1(net, path: str):
    """A net in the legacy V1 format (``layers``) rewritten as V2 ``layer`` entries, the way
    Caffe's UpgradeV1Net does for the fields mpinet reads; a V2 net comes back unchanged."""
    if not len(net.layers):
        return net
    if len(net.layer):
        raise CaffeImportError(f"{path}: mixes V1 'layers' and V2 'layer' entries")
    enum = net.layers[0].DESCRIPTOR.fields_by_name["type"].enum_type
    for old in net.layers:
        kind = _V1_TYPES.get(enum.values_by_number[old.type].name, "NONE")
        new = net.layer.add(name=old.name, type=kind)
        new.bottom.extend(old.bottom)
        new.top.extend(old.top)
        new.blobs.extend(old.blobs)
        new.include.extend(old.include)
        new.exclude.extend(old.exclude)
        for field in _V1_PARAMS:
            if old.HasField(field):
                getattr(new, field).CopyFrom(getattr(old, field))
    del net.layers[:]
    return net


# ---- layers without an mpinet counterpart of their own -------------------------------------
class InnerProduct(nn.Module):
    """Caffe's InnerProduct: flatten axes [axis, ...) then y = x W^T + b; W (out, in)."""

    def __init__(self, axis: int, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.axis = axis
        layer = nn.Linear(in_features, out_features, bias)  # PyTorch's default initialisation
        self.weight, self.bias = layer.weight, layer.bias

    def forward(self, x):
        if x.ndim != self.axis + 1:
            x = shape.flatten(x, self.axis)
        return linear.linear(x, self.weight, self.bias)


class Scale(nn.Module):
    """Caffe's Scale over channels (axis 1): y = x * gamma[c] (+ beta[c])."""

    def __init__(self, channels: int, bias: bool):
        super().__init__()
        self.weight = Parameter(backend.to_device(np.ones(channels, np.float32)))
        self.bias = Parameter(backend.to_device(np.zeros(channels, np.float32))) if bias else None

    def forward(self, x):
        view = (1, -1) + (1,) * (x.ndim - 2)
        y = arith.mul(x, shape.reshape(self.weight, view))
        return y if self.bias is None else arith.add(y, shape.reshape(self.bias, view))


class GlobalStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm with Caffe's ``use_global_stats: true``: the stored statistics, also when
    training (the statistics stay fixed; weight and bias still learn)."""

    def forward(self, x):
        y, _, _ = norm.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                                  False, eps=self.eps)
        return y


class Concat(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *xs):
        return shape.concat(list(xs), self.axis)


class Eltwise(nn.Module):
    """SUM (with per-input coefficients), PROD or MAX over the inputs, elementwise."""

    def __init__(self, operation: str, coeffs: tuple):
        super().__init__()
        self.operation, self.coeffs = operation, coeffs

    def forward(self, *xs):
        if self.operation == "SUM":
            y = None
            for x, c in zip(xs, self.coeffs, strict=True):
                term = x if c == 1.0 else arith.mul(x, float(c))
                y = term if y is None else arith.add(y, term)
            return y
        y = xs[0]
        for x in xs[1:]:
            y = arith.mul(y, x) if self.operation == "PROD" else maximum_ops.maximum(y, x)
        return y


class Split(nn.Module):
    def forward(self, x):
        return x


class Flatten(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        return shape.flatten(x, self.axis)


# ---- the network ------------------------------------------------------------------------------
class CaffeNet(nn.Module):
    """A Caffe net as an mpinet Module: layers run in prototxt order on named blobs."""

    def __init__(self, net, weights, prototxt: str, caffemodel: str | None, input_shape=None):
        super().__init__()
        self.source, self.weights_file = prototxt, caffemodel
        self.skipped, self.preprocessing, self.steps = [], {}, []
        layers = [layer for layer in net.layer if _in_test_phase(layer)]
        self.input_blob, shape_ = self._find_input(net, layers, input_shape)
        self.input_shape = tuple(shape_)
        blob_by_layer = {layer.name: layer for layer in weights.layer} if weights is not None \
            else None

        shapes = {self.input_blob: (1, *self.input_shape)}  # traced with a batch of one
        probes = {self.input_blob: Variable(_zeros((1, *self.input_shape)))}
        produced = []
        skip_next = set()
        for i, layer in enumerate(layers):
            if layer.type in ("Input",) or layer.type in DATA_LAYERS or layer.name in skip_next:
                continue
            if layer.type in SKIPPED_LAYERS:
                self.skipped.append(f"{layer.name} ({layer.type})")
                continue
            missing = [b for b in layer.bottom if b not in probes]
            if missing:
                raise CaffeImportError(f"{prototxt}: layer {layer.name!r} ({layer.type}) reads "
                                       f"blob(s) {missing} that no earlier layer produces")
            following = layers[i + 1] if i + 1 < len(layers) else None
            module, folded = self._build(layer, following, [shapes[b] for b in layer.bottom])
            if folded is not None:
                skip_next.add(folded.name)
            name = layer.name.replace(".", "_")
            if name in self._modules:
                raise CaffeImportError(f"{prototxt}: two layers are named {layer.name!r}")
            setattr(self, name, module)
            if blob_by_layer is not None:
                self._load_blobs(layer, folded, module, blob_by_layer)
            tops = list(folded.top if folded is not None else layer.top)
            self.steps.append((name, list(layer.bottom), tops))
            module.eval()
            with no_grad():
                out = module(*[probes[b] for b in layer.bottom])
            for top in tops:
                probes[top], shapes[top] = out, tuple(out.shape)
                produced.append(top)
        if not self.steps:
            raise CaffeImportError(f"{prototxt}: no layers to import")
        self.output_blob = produced[-1]
        self.train()

    # ---- input ------------------------------------------------------------------------
    def _find_input(self, net, layers, input_shape):
        given = None if input_shape is None else tuple(int(d) for d in input_shape)
        if len(net.input):
            dims = list(net.input_shape[0].dim) if len(net.input_shape) else list(net.input_dim[:4])
            return net.input[0], given or tuple(dims[1:])
        for layer in layers:
            if layer.type == "Input":
                dims = list(layer.input_param.shape[0].dim) if len(layer.input_param.shape) else []
                if given is None and len(dims) < 2:
                    raise CaffeImportError(f"{self.source}: Input layer {layer.name!r} states no "
                                           f"shape; pass input_shape=(C, H, W)")
                return layer.top[0], given or tuple(dims[1:])
            if layer.type in DATA_LAYERS:
                if layer.HasField("transform_param"):
                    t = layer.transform_param
                    self.preprocessing = {"scale": t.scale, "mean_value": list(t.mean_value),
                                          "crop_size": t.crop_size}
                if layer.type == "MemoryData" and given is None:
                    m = layer.memory_data_param
                    given = (m.channels, m.height, m.width)
                if given is None:
                    raise CaffeImportError(f"{self.source}: the input comes from {layer.type} "
                                           f"layer {layer.name!r}, whose image size the prototxt "
                                           f"does not state; pass input_shape=(C, H, W)")
                return layer.top[0], given
        raise CaffeImportError(f"{self.source}: no input found (no Input or data layer and no "
                               f"'input:' field)")

    # ---- one layer --------------------------------------------------------------------
    def _error(self, layer, message: str) -> CaffeImportError:
        return CaffeImportError(f"{self.source}: layer {layer.name!r} ({layer.type}): {message}")

    def _build(self, layer, following, bottoms: list):
        """(module, the following layer when folded into this one, else None)."""
        kind = layer.type
        x = bottoms[0] if bottoms else None
        if kind in ("Convolution", "Deconvolution"):
            p = layer.convolution_param
            if p.axis != 1 or len(x) != 4:
                raise self._error(layer, "only 2-D convolution over axis 1 is supported")
            kernel = _hw(p.kernel_h, p.kernel_w, p.HasField("kernel_h"), p.kernel_size, None)
            if kernel is None:
                raise self._error(layer, "no kernel_size (or kernel_h/kernel_w)")
            pad = _hw(p.pad_h, p.pad_w, p.HasField("pad_h") or p.HasField("pad_w"), p.pad, 0)
            stride = _hw(p.stride_h, p.stride_w, p.HasField("stride_h"), p.stride, 1)
            dilation = _hw(0, 0, False, p.dilation, 1)
            if x[1] % p.group or p.num_output % p.group:
                raise self._error(layer, f"{x[1]} input and {p.num_output} output channels are "
                                         f"not divisible by group {p.group}")
            if kind == "Deconvolution":  # weights (in, out/group, kh, kw), as ConvTranspose2d
                return nn.ConvTranspose2d(x[1], p.num_output, kernel, stride, pad, 0, p.group,
                                          p.bias_term, dilation), None
            return nn.Conv2d(x[1], p.num_output, kernel, stride, pad, dilation, p.group,
                             p.bias_term), None
        if kind == "InnerProduct":
            p = layer.inner_product_param
            axis = p.axis % len(x)
            return InnerProduct(axis, int(np.prod(x[axis:])), p.num_output, p.bias_term), None
        if kind == "Pooling":
            return self._pooling(layer, x), None
        if kind == "ReLU":
            slope = layer.relu_param.negative_slope
            return (nn.LeakyReLU(slope) if slope else nn.ReLU()), None
        if kind == "PReLU":
            channels = 1 if layer.prelu_param.channel_shared else x[1]
            return nn.PReLU(channels), None
        if kind == "BatchNorm":
            p = layer.batch_norm_param
            cls = GlobalStatsBatchNorm2d if p.HasField("use_global_stats") and \
                p.use_global_stats else nn.BatchNorm2d
            if len(x) != 4:
                raise self._error(layer, f"only (N, C, H, W) inputs are supported, got {x}")
            module = cls(x[1], eps=p.eps, momentum=1.0 - p.moving_average_fraction)
            fold = following is not None and following.type == "Scale" and \
                list(following.bottom) == list(layer.top) and _per_channel_scale(following)
            return module, (following if fold else None)
        if kind == "Scale":
            if len(layer.bottom) != 1 or not _per_channel_scale(layer):
                raise self._error(layer, "only a learned per-channel scale (one bottom, axis 1, "
                                         "num_axes 1) is supported")
            return Scale(x[1], layer.scale_param.bias_term), None
        if kind == "LRN":
            p = layer.lrn_param
            if p.norm_region != 0:
                raise self._error(layer, "only norm_region ACROSS_CHANNELS is supported")
            if p.local_size % 2 == 0:
                raise self._error(layer, f"local_size must be odd (as Caffe requires), got "
                                         f"{p.local_size}")
            return nn.LocalResponseNorm(p.local_size, p.alpha, p.beta, p.k), None
        if kind == "Dropout":
            return nn.Dropout(layer.dropout_param.dropout_ratio), None
        if kind == "Concat":
            p = layer.concat_param
            return Concat(p.axis if p.HasField("axis") or not p.HasField("concat_dim")
                          else p.concat_dim), None
        if kind == "Eltwise":
            p = layer.eltwise_param
            op = {0: "PROD", 1: "SUM", 2: "MAX"}[p.operation]
            coeffs = tuple(p.coeff) or (1.0,) * len(layer.bottom)
            if len(coeffs) != len(layer.bottom) or (op != "SUM" and len(p.coeff)):
                raise self._error(layer, "coeff needs one value per bottom, and only for SUM")
            return Eltwise(op, coeffs), None
        if kind == "Softmax":
            return nn.Softmax(layer.softmax_param.axis), None
        if kind == "Sigmoid":
            return nn.Sigmoid(), None
        if kind == "TanH":
            return nn.Tanh(), None
        if kind == "Split":
            return Split(), None
        if kind == "Flatten":
            return Flatten(1), None
        raise self._error(layer, f"mpinet cannot import this layer type; supported: "
                                 f"{', '.join(SUPPORTED_LAYERS)}")

    def _pooling(self, layer, x):
        p = layer.pooling_param
        if p.pool not in (0, 1):
            raise self._error(layer, "only MAX and AVE pooling are supported (not STOCHASTIC)")
        if len(layer.top) != 1:
            raise self._error(layer, "a second top (the max mask) is not supported")
        if p.global_pooling:
            kernel, pad, stride = tuple(x[2:]), (0, 0), (1, 1)
        else:
            kernel = (p.kernel_h, p.kernel_w) if p.HasField("kernel_h") else \
                (p.kernel_size, p.kernel_size)
            pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") or p.HasField("pad_w") else \
                (p.pad, p.pad)
            stride = (p.stride_h, p.stride_w) if p.HasField("stride_h") else (p.stride, p.stride)
        ceil_mode = p.round_mode == 0
        want = _caffe_pooled(x[2:], kernel, stride, pad, ceil_mode)
        cls = nn.MaxPool2d if p.pool == 0 else nn.AvgPool2d
        module = cls(kernel, stride, pad, ceil_mode)
        try:
            with no_grad():
                got = tuple(module(Variable(_zeros((1, x[1], *x[2:])))).shape[2:])
        except ValueError as e:
            raise self._error(layer, str(e)) from None
        if got != want:
            raise self._error(layer, f"Caffe pools {tuple(x[2:])} to {want} but mpinet's rounding "
                                     f"gives {got} (a window starting beyond the input); not "
                                     f"supported")
        return module

    # ---- weights ----------------------------------------------------------------------
    def _load_blobs(self, layer, folded, module, blob_by_layer) -> None:
        targets = _blob_targets(layer, module)
        if folded is not None:
            targets = targets + _blob_targets(folded, module)
        for source, entries in _group_targets(layer, folded, targets):
            if not entries:
                continue
            stored = blob_by_layer.get(source.name)
            if stored is None:
                raise CaffeImportError(f"{self.weights_file}: has no layer {source.name!r} "
                                       f"({source.type}) that {self.source} needs weights for")
            if len(stored.blobs) != len(entries):  # Caffe refuses a different count too
                raise CaffeImportError(
                    f"{self.weights_file}: layer {source.name!r} ({source.type}) has "
                    f"{len(stored.blobs)} blob(s), the prototxt needs {len(entries)} "
                    f"({', '.join(e[1] for e in entries)})")
            for index, (target, what, convert) in enumerate(entries):
                array = _blob_array(stored.blobs[index])
                array = convert(array, stored.blobs) if convert else array
                expected = tuple(target.shape)
                if tuple(array.shape) != expected:
                    legacy = not stored.blobs[index].HasField("shape")
                    if not legacy or array.size != int(np.prod(expected)):
                        raise CaffeImportError(
                            f"{self.weights_file}: layer {source.name!r} ({source.type}) blob "
                            f"{index} ({what}) has shape {tuple(array.shape)}, the prototxt "
                            f"needs {expected}")
                    array = array.reshape(expected)  # legacy 4-D (num, channels, h, w) blobs
                target[...] = backend.to_device(array.astype(np.float32))

    # ---- execution --------------------------------------------------------------------
    def forward(self, x):
        blobs = {self.input_blob: x}
        for name, bottoms, tops in self.steps:
            out = self._modules[name](*[blobs[b] for b in bottoms])
            for top in tops:
                blobs[top] = out
        return blobs[self.output_blob]

    def extra_repr(self) -> str:
        return f"{self.source!r}, input {self.input_blob!r} {self.input_shape}"


SUPPORTED_LAYERS = ("Convolution", "Deconvolution", "InnerProduct", "Pooling", "ReLU", "PReLU",
                    "BatchNorm", "Scale", "LRN", "Dropout", "Concat", "Eltwise", "Softmax",
                    "Sigmoid", "TanH", "Split", "Flatten", "Input", *sorted(DATA_LAYERS))


def _zeros(shape):
    """float32 zeros on the current device (where the layers' weights live)."""
    return backend.to_device(np.zeros(shape, np.float32))


def _in_test_phase(layer) -> bool:
    """Caffe's NetStateRule for a TEST-phase net (levels and stages are not used)."""
    def matches(rule):
        return not rule.HasField("phase") or rule.phase == _TEST
    if len(layer.include):
        return any(matches(r) for r in layer.include)
    return not any(matches(r) for r in layer.exclude)


def _hw(h, w, use_hw: bool, repeated, default):
    """(h, w) from the _h/_w fields or the repeated field (one value for both, or two)."""
    if use_hw:
        return (int(h), int(w))
    values = list(repeated)
    if not values:
        return None if default is None else (default, default)
    return (int(values[0]), int(values[-1])) if len(values) <= 2 else None


def _per_channel_scale(layer) -> bool:
    p = layer.scale_param
    return len(layer.bottom) == 1 and p.axis == 1 and p.num_axes == 1


def _caffe_pooled(hw, kernel, stride, pad, ceil_mode: bool) -> tuple:
    """Caffe's PoolingLayer::Reshape output size (the clipping only with padding)."""
    out = []
    for n, k, s, p in zip(hw, kernel, stride, pad, strict=True):
        o = (math.ceil if ceil_mode else math.floor)((n + 2 * p - k) / s) + 1
        if (pad[0] or pad[1]) and (o - 1) * s >= n + p:
            o -= 1
        out.append(o)
    return tuple(out)


def _blob_array(blob) -> np.ndarray:
    data = np.asarray(blob.double_data if len(blob.double_data) else blob.data, np.float64)
    if blob.HasField("shape"):
        dims = tuple(int(d) for d in blob.shape.dim)
    else:
        dims = tuple(int(d) for d in (blob.num, blob.channels, blob.height, blob.width))
    if int(np.prod(dims)) != data.size:
        dims = (data.size,)  # let the shape check report it against the expected shape
    return data.reshape(dims)


def _blob_targets(layer, module) -> list:
    """[(array to fill, description, converter or None)] in the layer's blob order."""
    kind = layer.type
    if kind in ("Convolution", "Deconvolution"):
        out = [(module.weight.data, "weights", None)]
        return out + ([(module.bias.data, "bias", None)] if module.bias is not None else [])
    if kind == "InnerProduct":
        transpose = layer.inner_product_param.transpose
        out = [(module.weight.data, "weights",
                (lambda a, _: a.reshape(-1, module.weight.shape[0]).T) if transpose else None)]
        return out + ([(module.bias.data, "bias", None)] if module.bias is not None else [])
    if kind == "PReLU":
        return [(module.weight.data, "slopes", None)]
    if kind == "BatchNorm":
        return [(module.running_mean, "mean * s", _unscale),
                (module.running_var, "variance * s", _unscale),
                (_zeros((1,)), "scale factor s", None)]  # read by _unscale, kept nowhere
    if kind == "Scale":
        out = [(module.weight.data, "gamma", None)]
        bias = getattr(module, "bias", None)
        if layer.scale_param.bias_term:
            out.append((bias.data if bias is not None else None, "beta", None))
        return out
    return []


def _unscale(array, blobs):
    """Caffe's BatchNorm stores mean and variance times a scale factor s (blob 2)."""
    s = float(_blob_array(blobs[2]).reshape(-1)[0]) if len(blobs) > 2 else 1.0
    return array * (0.0 if s == 0 else 1.0 / s)


def _group_targets(layer, folded, targets):
    """Split the (layer + folded Scale) targets back into per-Caffe-layer blob lists."""
    own = _count_targets(layer)
    groups = [(layer, targets[:own])]
    if folded is not None:
        groups.append((folded, targets[own:]))
    return groups


def _count_targets(layer) -> int:
    kind = layer.type
    if kind in ("Convolution", "Deconvolution"):
        return 1 + int(layer.convolution_param.bias_term)
    if kind == "InnerProduct":
        return 1 + int(layer.inner_product_param.bias_term)
    if kind == "BatchNorm":
        return 3
    if kind == "Scale":
        return 1 + int(layer.scale_param.bias_term)
    return 1 if kind == "PReLU" else 0


# ---- command line ------------------------------------------------------------------------------
def main(argv=None) -> int:
    """python -m mpinet.interop.caffe NET.prototxt [WEIGHTS.caffemodel] [--input-shape C H W]
    [--onnx OUT.onnx]: import, print a summary, optionally write the model as ONNX; exit 2 on
    any error (one line on stderr)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m mpinet.interop.caffe",
                                     description="import a Caffe model into mpinet")
    parser.add_argument("prototxt")
    parser.add_argument("caffemodel", nargs="?")
    parser.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"))
    parser.add_argument("--onnx", help="also write the imported model as ONNX here")
    args = parser.parse_args(argv)
    try:
        net = import_caffe(args.prototxt, args.caffemodel, input_shape=args.input_shape)
        line = (f"{args.prototxt}: {len(net.steps)} layers, {net.num_parameters():,} parameters, "
                f"input {net.input_blob!r} (batch, {', '.join(map(str, net.input_shape))}), "
                f"output {net.output_blob!r}")
        if net.skipped:
            line += f"; skipped {', '.join(net.skipped)}"
        if args.onnx:
            from .onnx_export import export_onnx

            export_onnx(net, args.onnx)
            line += f"; wrote {args.onnx}"
        print(line)
    except (ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
