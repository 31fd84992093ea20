"""ONNX export by tracing: run one eval-mode forward pass and translate the recorded ops.

Why tracing (and not walking the Module tree): models compute in ``forward`` with plain op calls
between layers (ResNet's ``add_relu``, ``flatten``, SqueezeNet's and U-Net's ``concat``), which a
tree walk never sees. The define-by-run autograd graph of one forward pass holds every op that ran,
each Function with its attributes (stride, axis, eps, ...), so any model made of supported ops
exports, whatever its Python structure. The price is the usual tracing one: Python control flow is
frozen at the traced input's shape (the batch dimension is left dynamic; C, H, W are fixed).

Translation, one Function at a time (``_CONVERTERS``); fused mpinet ops are decomposed:
  Conv2d -> Conv, ConvTranspose2d -> ConvTranspose, Linear -> Gemm (2-D input, transB=1),
  BatchNormEval -> BatchNormalization (+ Relu when the ReLU was fused in), AddReLU -> Add + Relu,
  ReLU/LeakyReLU/PReLU/Sigmoid/Tanh -> Relu/LeakyRelu/PRelu/Sigmoid/Tanh,
  Softmax/LogSoftmax -> Softmax/LogSoftmax, Add/Sub/Mul/Div -> Add/Sub/Mul/Div,
  MaxPool2d/AvgPool2d -> MaxPool/AveragePool (count_include_pad=1, ceil_mode),
  GlobalAvgPool2d -> GlobalAveragePool + Flatten, Reshape -> Flatten (the flatten pattern) or
  Reshape (batch kept with 0), Transpose -> Transpose, Concat -> Concat, LRN -> LRN,
  Maximum -> Max, Upsample -> Resize (nearest: asymmetric/floor; bilinear: pytorch_half_pixel or
  align_corners; an upsampling to a fixed size is written as its scale ratio).
Dropout layers -> Dropout (ratio as an input; the identity in inference): they are the identity
in eval mode, so the trace records them with a marker op (marks.py).

Names: an initializer is named by its parameter/buffer (``features.0.weight``), so the file reads
like ``state_dict`` and an import gives back the same names; a node holding parameters is named by
their common prefix (``features.0``), others ``<OpType>_<index>``. Values are ``<node>:<k>``,
the graph's are ``input`` and ``output``.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import backend, nn
from ..autograd import Parameter, Variable, enable_grad
from .marks import dropout_mark

OPSET = 17
# onnx 1.23 writes IR version 11 by default, newer than some onnxruntime builds read; IR 8 is what
# opset 17 needs and every onnxruntime since 1.10 loads.
IR_VERSION = 8
_FLOAT_TYPES = (np.float16, np.float32, np.float64)


class OnnxExportError(ValueError):
    """A model (or an op in it) that cannot be written as ONNX; the message names the op."""


def export_onnx(model, path, input_shape=None, *, batch_size: int = 2,
                opset: int = OPSET) -> onnx.ModelProto:
    """Write ``model`` (an mpinet Module or a ``mpinet.Model``) to ``path`` as ONNX; return it.

    input_shape: one example's shape without the batch, e.g. (3, 32, 32); defaults to the
        model's ``input_shape`` attribute (every zoo model has one).
    batch_size: the batch of the traced example (the file's batch dimension is dynamic).
    The model is traced in eval mode (BN running statistics, no dropout) with float32 weights
    and restored to its mode afterwards. The file is written atomically (temp file + rename).
    """
    network = getattr(model, "network", model)
    if input_shape is None:
        input_shape = getattr(network, "input_shape", None)
        if input_shape is None:
            raise OnnxExportError(f"export_onnx: {type(network).__name__} has no input_shape "
                                  f"attribute; pass input_shape=(C, H, W) (without the batch)")
    input_shape = tuple(int(d) for d in input_shape)
    proto = trace_to_onnx(network, input_shape, batch_size, opset)
    onnx.checker.check_model(proto, full_check=True)  # shapes too; a mapping bug fails here
    _atomic_save(proto, os.fspath(path))
    return proto


def trace_to_onnx(network, input_shape: tuple, batch_size: int = 2,
                  opset: int = OPSET) -> onnx.ModelProto:
    """The ONNX ModelProto of ``network`` traced on a (batch_size, *input_shape) example
    (not yet run through onnx.checker, which export_onnx does)."""
    was_training = network.training
    network.eval()
    marked = _mark_dropout_layers(network)
    try:
        rng = np.random.default_rng(0)
        example = rng.standard_normal((batch_size, *input_shape)).astype(np.float32)
        x = Variable(backend.to_device(example), requires_grad=True)
        with enable_grad():
            y = network(x)
    finally:
        for module in marked:
            del module.__dict__["forward"]
        network.train(was_training)
    if not isinstance(y, Variable) or y.creator is None:
        raise OnnxExportError(f"export_onnx: {type(network).__name__} returned "
                              f"{type(y).__name__} without recorded ops; only models whose "
                              f"forward(x) returns one Variable computed from x export")
    builder = _GraphBuilder(network, x)
    for func in _functions_in_order(y):
        converter = _CONVERTERS.get(type(func).__name__)
        if converter is None:
            raise OnnxExportError(
                f"export_onnx: op {type(func).__name__} (the {builder.index + 1}th op of "
                f"{type(network).__name__}'s forward) has no ONNX mapping; supported ops: "
                f"{', '.join(sorted(_CONVERTERS))}")
        outputs = converter(builder, func, [builder.value(v) for v in func.inputs])
        names = outputs if isinstance(outputs, list) else [outputs]
        for ref, name in zip(func.outputs, names, strict=False):  # unused outputs have no name
            out = ref()
            if out is not None:
                builder.names[id(out)] = name
    return builder.finish(y, opset)


def _mark_dropout_layers(network) -> list:
    """Make each Dropout layer record a DropoutMark during the trace (see marks.py)."""
    marked = []
    for _, module in network.named_modules():
        if isinstance(module, nn.Dropout) and module.p > 0 and "forward" not in module.__dict__:
            object.__setattr__(module, "forward", lambda x, p=module.p: dropout_mark(x, p))
            marked.append(module)
    return marked


def _functions_in_order(root: Variable) -> list:
    """Every Function the root depends on, in creation (execution) order."""
    seen, stack, funcs = set(), [root.creator], []
    while stack:
        f = stack.pop()
        if f is None or id(f) in seen:
            continue
        seen.add(id(f))
        funcs.append(f)
        stack.extend(v.creator for v in f.inputs)
    return sorted(funcs, key=lambda f: f.sequence)


class _GraphBuilder:
    """Collects nodes and initializers; maps traced Variables/arrays to ONNX value names."""

    def __init__(self, network, x: Variable):
        self.x = x
        self.names = {id(x): "input"}
        self.param_names = {id(p): n for n, p in network.named_parameters()}
        self.buffer_names = {id(b): n for n, b in network.named_buffers()}
        self.nodes, self.initializers, self.index = [], {}, 0
        self.input_shape = tuple(x.shape)

    # ---- values -----------------------------------------------------------------------
    def value(self, v: Variable) -> str:
        name = self.names.get(id(v))
        if name is not None:
            return name
        if isinstance(v, Parameter) and id(v) in self.param_names:
            return self.tensor(self.param_names[id(v)], v.data)
        if v.creator is None:  # a constant operand (e.g. a scalar the model multiplies by)
            return self.tensor(f"const_{len(self.initializers)}", v.data)
        raise OnnxExportError("export_onnx: a value was used before the op producing it was "
                              "seen (a graph that is not a tree of one forward pass)")

    def tensor(self, name: str, array, shape=None) -> str:
        """Add an initializer (float arrays written as float32), once per name."""
        if name not in self.initializers:
            a = backend.to_numpy(array)
            if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
                a = a.astype(np.float32, copy=False)
            if shape is not None:
                a = a.reshape(shape)
            a = np.asarray(a, order="C")  # not ascontiguousarray: a 0-d ratio must stay 0-d
            self.initializers[name] = numpy_helper.from_array(a, name)
        return name

    def buffer(self, array, fallback: str) -> str:
        name = self.buffer_names.get(id(array), fallback)
        return self.tensor(name, array)

    def ints(self, name: str, values) -> str:
        return self.tensor(name, np.asarray(values, dtype=np.int64))

    # ---- nodes ------------------------------------------------------------------------
    def node(self, op_type: str, inputs: list, params: tuple = (), n_out: int = 1,
             **attrs) -> str:
        """Append a node; returns its (first) output name."""
        name = _common_prefix([i for i in inputs if i in params]) or f"{op_type}_{self.index}"
        if any(n.name == name for n in self.nodes):
            name = f"{name}/{op_type}_{self.index}"
        self.index += 1
        outputs = [f"{name}:{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))
        return outputs[0]

    def finish(self, y: Variable, opset: int) -> onnx.ModelProto:
        out_name = self.names[id(y)]
        for node in self.nodes:  # the graph's output gets the fixed name "output"
            node.output[:] = ["output" if o == out_name else o for o in node.output]
        batch_dims = ["batch"] + list(self.input_shape[1:])
        out_dims = ["batch"] + list(y.shape[1:])
        graph = helper.make_graph(
            self.nodes, "mpinet",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, batch_dims)],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_dims)],
            initializer=list(self.initializers.values()))
        model = helper.make_model(graph, producer_name="mpinet",
                                  opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = IR_VERSION
        return model


def _common_prefix(names: list) -> str:
    """'features.0' for ['features.0.weight', 'features.0.bias']; '' when there is none."""
    if not names:
        return ""
    parts = [n.split(".")[:-1] for n in names]
    prefix = []
    for group in zip(*parts, strict=False):  # up to the shortest name
        if any(g != group[0] for g in group):
            break
        prefix.append(group[0])
    return ".".join(prefix)


def _atomic_save(proto: onnx.ModelProto, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".onnx-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---- converters: (builder, function, input names) -> output name ------------------------------
def _params(b: _GraphBuilder, names: list) -> tuple:
    return tuple(n for n in names if n in b.initializers)


def _conv(b, f, ins):
    g = f.geom
    kernel = list(f.inputs[1].shape[2:])
    attrs = dict(kernel_shape=kernel, strides=list(g.stride), dilations=list(g.dilation),
                 pads=[g.padding[0], g.padding[1], g.padding[0], g.padding[1]], group=g.groups)
    if type(f).__name__ == "ConvTranspose2d":
        return b.node("ConvTranspose", ins, _params(b, ins), output_padding=list(f.output_padding),
                      **attrs)
    return b.node("Conv", ins, _params(b, ins), **attrs)


def _linear(b, f, ins):
    if f.inputs[0].ndim != 2:
        raise OnnxExportError(f"export_onnx: Linear on a {f.inputs[0].ndim}-D input "
                              f"{tuple(f.inputs[0].shape)} is not supported (Gemm is 2-D); "
                              f"flatten to (N, features) first")
    return b.node("Gemm", ins, _params(b, ins), transB=1)


def _batch_norm(b, f, ins):
    prefix = _common_prefix(list(ins[1:]))
    mean = b.buffer(f.running_mean, f"{prefix}.running_mean" if prefix else "bn_mean")
    var = b.buffer(f.running_var, f"{prefix}.running_var" if prefix else "bn_var")
    y = b.node("BatchNormalization", ins + [mean, var], _params(b, ins), epsilon=float(f.eps))
    return b.node("Relu", [y]) if f.relu else y


def _add_relu(b, f, ins):
    return b.node("Relu", [b.node("Add", ins)])


def _prelu(b, f, ins):
    x, w = f.inputs
    slope = ins[1]
    if w.size > 1 and x.ndim > 2:  # ONNX broadcasts from the right: (C,) -> (C, 1, 1)
        b.initializers.pop(slope, None)
        b.tensor(slope, w.data, shape=(w.size,) + (1,) * (x.ndim - 2))
    return b.node("PRelu", ins, (slope,))


def _pool(op_type):
    def convert(b, f, ins):
        g = f.geom
        ceil_mode = int(bool(f.options[3]))
        attrs = dict(kernel_shape=list(g.kernel), strides=list(g.stride),
                     pads=[g.pad_lo[0], g.pad_lo[1], g.pad_lo[0], g.pad_lo[1]],
                     ceil_mode=ceil_mode)
        if op_type == "AveragePool":
            attrs["count_include_pad"] = 1
        return b.node(op_type, ins, **attrs)
    return convert


def _reshape(b, f, ins):
    in_shape, target = tuple(f.inputs[0].shape), tuple(f.output_meta[0][0])
    if f.inputs[0].creator is None and f.inputs[0] is not b.x:  # a weight: no batch dimension
        return b.node("Reshape", [ins[0], b.ints(f"shape_{b.index}", target)])
    for axis in range(1, len(in_shape)):  # the flatten pattern keeps axes [0, axis)
        if target == in_shape[:axis] + (int(np.prod(in_shape[axis:])),):
            return b.node("Flatten", ins, axis=axis)
    if target[:1] != in_shape[:1]:
        raise OnnxExportError(f"export_onnx: reshape {in_shape} -> {target} changes the batch "
                              f"dimension, which the file keeps dynamic")
    shape = b.ints(f"shape_{b.index}", (0,) + target[1:])
    return b.node("Reshape", [ins[0], shape])


def _simple(op_type, **fixed):
    def convert(b, f, ins):
        attrs = {k: (v(f) if callable(v) else v) for k, v in fixed.items()}
        return b.node(op_type, ins, **attrs)
    return convert


def _global_avg(b, f, ins):
    return b.node("Flatten", [b.node("GlobalAveragePool", ins)], axis=1)


def _resize(b, f, ins):
    """mpinet's (PyTorch's) upsampling formulas as ONNX Resize coordinate modes."""
    in_hw, out_hw = f.inputs[0].shape[2:], f.out_hw
    factors = f.scale_factors if f.scale_factors[0] is not None else \
        tuple(o / i for o, i in zip(out_hw, in_hw, strict=True))  # a size: its ratio keeps N free
    if any(int(np.floor(i * np.float32(r))) != o
           for i, r, o in zip(in_hw, factors, out_hw, strict=True)):
        raise OnnxExportError(f"export_onnx: upsampling {tuple(in_hw)} -> {tuple(out_hw)} has no "
                              f"float32 scale that ONNX Resize rounds back to that size; use a "
                              f"scale_factor (e.g. 2) or sizes that are whole multiples")
    scales = b.tensor(f"scales_{b.index}", np.array([1.0, 1.0, *factors], np.float32))
    if f.mode == "nearest":
        attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor")
    else:
        attrs = dict(mode="linear", coordinate_transformation_mode="align_corners"
                     if f.align_corners else "pytorch_half_pixel")
    return b.node("Resize", [ins[0], "", scales], **attrs)


def _dropout(b, f, ins):
    ratio = b.tensor(f"ratio_{b.index}", np.array(f.p, np.float32))
    return b.node("Dropout", [ins[0], ratio])


def _lrn(b, f, ins):
    return b.node("LRN", ins, size=int(f.size), alpha=float(f.alpha), beta=float(f.beta),
                  bias=float(f.k))


_CONVERTERS = {
    "Conv2d": _conv,
    "ConvTranspose2d": _conv,
    "Linear": _linear,
    "BatchNormEval": _batch_norm,
    "AddReLU": _add_relu,
    "ReLU": _simple("Relu"),
    "LeakyReLU": _simple("LeakyRelu", alpha=lambda f: float(f.slope)),
    "PReLU": _prelu,
    "Sigmoid": _simple("Sigmoid"),
    "Tanh": _simple("Tanh"),
    "Softmax": _simple("Softmax", axis=lambda f: int(f.axis)),
    "LogSoftmax": _simple("LogSoftmax", axis=lambda f: int(f.axis)),
    "Add": _simple("Add"),
    "Sub": _simple("Sub"),
    "Mul": _simple("Mul"),
    "Div": _simple("Div"),
    "MaxPool2d": _pool("MaxPool"),
    "AvgPool2d": _pool("AveragePool"),
    "GlobalAvgPool2d": _global_avg,
    "Reshape": _reshape,
    "Transpose": _simple("Transpose", perm=lambda f: [int(i) for i in f.axes]
                          if f.axes is not None else list(reversed(range(f.inputs[0].ndim)))),
    "Concat": _simple("Concat", axis=lambda f: int(f.axis)),
    "LocalResponseNorm": _lrn,
    "DropoutMark": _dropout,
    "Upsample": _resize,
    "Maximum": _simple("Max"),
}

SUPPORTED_FUNCTIONS = tuple(sorted(_CONVERTERS))
