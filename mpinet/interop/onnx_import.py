"""ONNX import: an ONNX file becomes an ``OnnxGraphModule``, a trainable mpinet Module.

The module runs the graph's nodes in order with mpinet ops (so autograd, optimizers, data
parallelism and export work on it like on any model). Initializers that an op learns (Conv/Gemm
weights and biases, BatchNormalization scale and bias, PRelu slopes) become Parameters;
BatchNormalization's mean and variance become buffers (updated when training, as BatchNorm2d);
everything else (Reshape shapes) stays a constant. Dotted initializer names are kept as module
paths, so a file exported by mpinet imports with its model's ``state_dict`` names
(``features.0.weight``) and exports again to the same graph.

Supported ops (opset 13-17 semantics): Conv, ConvTranspose, Gemm (alpha=beta=1, transA=0),
MatMul, BatchNormalization, Relu, LeakyRelu, PRelu, Sigmoid, Tanh, Softmax, LogSoftmax, Add, Sub,
Mul, Div, Max, MaxPool, AveragePool (count_include_pad=1, or no padding), GlobalAveragePool,
Flatten, Reshape, Transpose, Concat, LRN, Resize (the modes export writes), Dropout, Identity,
Constant.
Anything else is refused naming the node and its op.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from .. import backend, nn
from ..autograd import Parameter, Variable, no_grad
from ..ops import activation as act
from ..ops import arith, conv, linear, lrn, maximum, norm, pool, shape
from ..ops import dropout as dropout_ops
from ..ops import upsample as upsample_ops
from .marks import dropout_mark


class OnnxImportError(ValueError):
    """A file mpinet cannot import; the message names the file and the node."""


def import_onnx(path) -> "OnnxGraphModule":
    """Read an ONNX file into an OnnxGraphModule (in training mode, like any new Module)."""
    path = os.fspath(path)
    try:
        proto = onnx.load(path)
    except FileNotFoundError:
        raise OnnxImportError(f"{path}: no such file") from None
    except Exception as e:  # a truncated or non-ONNX file fails inside protobuf's parser
        raise OnnxImportError(f"{path}: not a readable ONNX model ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'parse error'}); is the "
                              f"file complete?") from None
    return OnnxGraphModule(proto, source=path)


class _Holder(nn.Module):
    """A container for imported parameters and buffers under one dotted prefix."""

    def forward(self, *args):
        raise TypeError(f"{self.path}: holds imported weights; call the OnnxGraphModule")


class OnnxGraphModule(nn.Module):
    """Executes an ONNX graph with mpinet ops; weights are Parameters/buffers by their names."""

    def __init__(self, proto: onnx.ModelProto, source: str = "<model>"):
        super().__init__()
        graph = proto.graph
        self.source = source
        inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in inits]
        if len(self.input_names) != 1:
            raise OnnxImportError(f"{source}: expected one graph input, got {self.input_names}")
        self.output_names = [o.name for o in graph.output]
        dims = graph.input[[i.name for i in graph.input].index(self.input_names[0])] \
            .type.tensor_type.shape.dim
        self.input_shape = tuple(d.dim_value for d in dims[1:]) if dims else None
        self.nodes = list(graph.node)
        self.constants = {}
        for index, node in enumerate(self.nodes):
            handler = _HANDLERS.get(node.op_type)
            label = node.name or f"#{index}"
            if handler is None:
                raise OnnxImportError(f"{source}: node {label!r} has op {node.op_type}, which "
                                      f"mpinet cannot import; supported: "
                                      f"{', '.join(sorted(_HANDLERS))}")
            roles = handler.roles
            for slot, name in enumerate(node.input):
                if name not in inits:
                    continue
                role = roles[slot] if slot < len(roles) else "const"
                self._register(name, inits[name], role, node, label)
        self._probe()

    def _probe(self) -> None:
        """Run the graph once on zeros (batch 1, eval mode) so that an attribute or shape mpinet
        cannot run fails at import, naming the node, rather than at the first real batch."""
        if not self.input_shape or min(self.input_shape) < 1:
            return  # symbolic sizes besides the batch: nothing to probe with
        self.eval()
        try:
            with no_grad():
                self(Variable(backend.to_device(np.zeros((1, *self.input_shape), np.float32))))
        finally:
            self.train()

    # ---- weights ------------------------------------------------------------------------
    def _register(self, name: str, array: np.ndarray, role: str, node, label: str) -> None:
        if role == "const":
            self.constants[name] = array
            return
        holder, attr = self._holder_for(name, label)
        if attr in holder._parameters or attr in holder._buffers:
            return  # shared by two nodes: one Parameter
        if array.dtype.kind == "f":  # a writable float32 copy (to_array may give a read-only view)
            array = np.array(array, dtype=np.float32)
        if role == "param":
            if node.op_type == "PRelu" and array.ndim > 1:  # (C, 1, 1) -> (C,): mpinet's layout
                array = array.reshape(-1)
            if node.op_type == "Gemm" and not _attr(node, "transB", 0) and array.ndim == 2 \
                    and name == node.input[1]:
                array = np.ascontiguousarray(array.T)  # store (out, in) as Linear does
            setattr(holder, attr, Parameter(backend.to_device(array)))
        else:
            holder.register_buffer(attr, backend.to_device(array))

    def _holder_for(self, name: str, label: str):
        *path, attr = name.split(".")
        module = self
        for part in path:
            child = module._modules.get(part)
            if child is None:
                if part in module._parameters or part in module._buffers:
                    raise OnnxImportError(f"{self.source}: initializer {name!r} (node "
                                          f"{label!r}) nests under a weight of the same name")
                child = _Holder()
                setattr(module, part, child)
            module = child
        return module, attr

    def tensor(self, name: str):
        """The Parameter, buffer or constant called ``name``."""
        if name in self.constants:
            return self.constants[name]
        *path, attr = name.split(".")
        module = self
        for part in path:
            module = module._modules[part]
        if attr in module._parameters:
            return module._parameters[attr]
        return module._buffers[attr]

    def holder_of(self, name: str):
        *path, attr = name.split(".")
        module = self
        for part in path:
            module = module._modules[part]
        return module, attr

    # ---- execution ----------------------------------------------------------------------
    def forward(self, x):
        env = {self.input_names[0]: x}
        for index, node in enumerate(self.nodes):
            args = [None if not n else env[n] if n in env else self.tensor(n)
                    for n in node.input]
            try:
                out = _HANDLERS[node.op_type](self, node, args)
            except (ValueError, TypeError) as e:
                raise OnnxImportError(f"{self.source}: node {node.name or index!r} "
                                      f"({node.op_type}): {e}") from None
            env[node.output[0]] = out
        return env[self.output_names[0]]

    def extra_repr(self) -> str:
        return f"{self.source!r}, {len(self.nodes)} nodes"


# ---- node handlers: (module, node, inputs) -> output ------------------------------------------
def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _handler(*roles):
    """Declare which input slots are learned ('param') or running statistics ('buffer')."""
    def wrap(fn):
        fn.roles = roles
        return fn
    return wrap


def _pads(node, op: str):
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ValueError(f"{op}: auto_pad is not supported; export with explicit pads")
    if pads[:2] != pads[2:]:
        raise ValueError(f"{op}: asymmetric pads {pads} are not supported")
    return tuple(pads[:2])


def _geometry(node, op: str) -> conv.ConvGeometry:
    return conv.ConvGeometry.of(op, tuple(_attr(node, "strides", [1, 1])), _pads(node, op),
                                tuple(_attr(node, "dilations", [1, 1])),
                                int(_attr(node, "group", 1)))


@_handler("const", "param", "param")
def _conv(m, node, args):
    x, w, b = (args + [None])[:3]
    geom = _geometry(node, "Conv")
    f = conv.Conv2d(geom)
    return f.apply(x, w) if b is None else f.apply(x, w, b)


@_handler("const", "param", "param")
def _conv_transpose(m, node, args):
    x, w, b = (args + [None])[:3]
    if _attr(node, "output_shape") is not None:
        raise ValueError("ConvTranspose: output_shape is not supported; use pads/output_padding")
    geom = _geometry(node, "ConvTranspose")
    f = conv.ConvTranspose2d(geom, tuple(_attr(node, "output_padding", [0, 0])))
    return f.apply(x, w) if b is None else f.apply(x, w, b)


@_handler("const", "param", "param")
def _gemm(m, node, args):
    x, w, b = (args + [None])[:3]
    if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or \
            _attr(node, "beta", 1.0) != 1.0:
        raise ValueError("Gemm: only alpha=1, beta=1, transA=0 are supported")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"Gemm: bias of shape {tuple(b.shape)} is not supported (needs "
                         f"({w.shape[0]},))")
    return linear.linear(x, w, b)


@_handler("const", "const")
def _matmul(m, node, args):
    return arith.matmul(*args)


@_handler("const", "param", "param", "buffer", "buffer")
def _batch_norm(m, node, args):
    x, gamma, beta, mean, var = args
    eps = float(_attr(node, "epsilon", 1e-5))
    if not m.training:
        y, _, _ = norm.batch_norm(x, gamma, beta, mean, var, False, eps=eps)
        return y
    momentum = 1.0 - float(_attr(node, "momentum", 0.9))  # ONNX keeps, mpinet/PyTorch replace
    y, new_mean, new_var = norm.batch_norm(x, gamma, beta, mean, var, True, momentum, eps)
    for name, value in ((node.input[3], new_mean), (node.input[4], new_var)):
        holder, attr = m.holder_of(name)
        holder.update_buffer_(attr, value)
    return y


@_handler("const", "param")
def _prelu(m, node, args):
    return act.prelu(args[0], args[1])


def _pool(kind: str):
    @_handler("const")
    def run(m, node, args):
        if _attr(node, "dilations") not in (None, [1, 1]):
            raise ValueError(f"{kind}: dilations are not supported")
        kernel = tuple(_attr(node, "kernel_shape"))
        stride = tuple(_attr(node, "strides", [1, 1]))
        pads, ceil_mode = _pads(node, kind), bool(_attr(node, "ceil_mode", 0))
        if kind == "MaxPool":
            return pool.max_pool2d(args[0], kernel, stride, pads, ceil_mode)
        if pads != (0, 0) and not _attr(node, "count_include_pad", 0):
            raise ValueError("AveragePool: count_include_pad=0 with padding is not supported")
        return pool.avg_pool2d(args[0], kernel, stride, pads, ceil_mode)
    return run


@_handler("const")
def _global_avg(m, node, args):
    x = args[0]
    return pool.avg_pool2d(x, tuple(x.shape[2:]))


@_handler("const")
def _flatten(m, node, args):
    x, axis = args[0], int(_attr(node, "axis", 1))
    axis = axis % x.ndim if axis < 0 else axis
    return shape.reshape(x, tuple(x.shape[:axis]) + (int(np.prod(x.shape[axis:])),))


@_handler("const", "const")
def _reshape(m, node, args):
    x, target = args[0], [int(d) for d in backend.to_numpy(args[1]).reshape(-1)]
    if _attr(node, "allowzero", 0):
        raise ValueError("Reshape: allowzero=1 is not supported")
    target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return shape.reshape(x, tuple(target))


@_handler("const", "const")
def _dropout(m, node, args):
    given = len(args) > 1 and args[1] is not None
    ratio = float(backend.to_numpy(args[1]).reshape(-1)[0]) if given \
        else float(_attr(node, "ratio", 0.5))
    if m.training:
        return dropout_ops.dropout(args[0], ratio, True)
    return dropout_mark(args[0], ratio)  # the identity, kept visible to a re-export


@_handler("const", "const", "const", "const")
def _resize(m, node, args):
    x = args[0]
    mode = _text(_attr(node, "mode", "nearest"))
    coords = _text(_attr(node, "coordinate_transformation_mode", "half_pixel"))
    if mode == "nearest" and (coords, _text(_attr(node, "nearest_mode", "round_prefer_floor"))) \
            == ("asymmetric", "floor"):
        kind, align = "nearest", False
    elif mode == "linear" and coords in ("pytorch_half_pixel", "align_corners"):
        kind, align = "bilinear", coords == "align_corners"
    else:
        raise ValueError(f"Resize: mode {mode!r} with coordinate_transformation_mode {coords!r} "
                         f"is not supported (nearest+asymmetric+floor, or linear with "
                         f"pytorch_half_pixel/align_corners)")
    scales = args[2] if len(args) > 2 and args[2] is not None else None
    if scales is not None and backend.to_numpy(scales).size:
        s = [float(v) for v in backend.to_numpy(scales).reshape(-1)]
        if s[:2] != [1.0, 1.0] or len(s) != 4:
            raise ValueError(f"Resize: only spatial scales of an (N, C, H, W) input, got {s}")
        return upsample_ops.upsample(x, (s[2], s[3]), kind, align)
    sizes = [int(v) for v in backend.to_numpy(args[3]).reshape(-1)]
    return upsample_ops.upsample(x, mode=kind, align_corners=align, size=tuple(sizes[2:]))


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


@_handler("const")
def _lrn(m, node, args):
    return lrn.local_response_norm(args[0], int(_attr(node, "size")),
                                   float(_attr(node, "alpha", 1e-4)),
                                   float(_attr(node, "beta", 0.75)),
                                   float(_attr(node, "bias", 1.0)))


@_handler()
def _constant(m, node, args):
    value = _attr(node, "value")
    if value is None:
        raise ValueError("Constant: only the 'value' attribute (a tensor) is supported")
    array = numpy_helper.to_array(value)
    return backend.to_device(array) if array.dtype.kind == "f" else array


@_handler()
def _max(m, node, args):
    y = args[0]
    for other in args[1:]:
        y = maximum.maximum(y, other)
    return y


def _unary(fn, **attr_defaults):
    @_handler("const")
    def run(m, node, args):
        kwargs = {k: type(v)(_attr(node, onnx_name, v)) for k, (onnx_name, v) in
                  attr_defaults.items()}
        return fn(args[0], **kwargs)
    return run


def _binary(fn):
    @_handler("const", "const")
    def run(m, node, args):
        return fn(*args)
    return run


@_handler("const")
def _transpose(m, node, args):
    perm = _attr(node, "perm")
    return shape.transpose(args[0], None if perm is None else tuple(int(i) for i in perm))


def _concat(m, node, args):
    return shape.concat(list(args), int(_attr(node, "axis")))


_concat.roles = ()

_HANDLERS = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batch_norm,
    "Relu": _unary(act.relu),
    "LeakyRelu": _unary(act.leaky_relu, negative_slope=("alpha", 0.01)),
    "PRelu": _prelu,
    "Sigmoid": _unary(act.sigmoid),
    "Tanh": _unary(act.tanh),
    "Softmax": _unary(act.softmax, axis=("axis", -1)),
    "LogSoftmax": _unary(act.log_softmax, axis=("axis", -1)),
    "Add": _binary(arith.add),
    "Sub": _binary(arith.sub),
    "Mul": _binary(arith.mul),
    "Div": _binary(arith.div),
    "Max": _max,
    "MaxPool": _pool("MaxPool"),
    "AveragePool": _pool("AveragePool"),
    "GlobalAveragePool": _global_avg,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Concat": _concat,
    "LRN": _lrn,
    "Resize": _resize,
    "Dropout": _dropout,
    "Identity": _unary(lambda x: x),
    "Constant": _constant,
}

SUPPORTED_OPS = tuple(sorted(_HANDLERS))
