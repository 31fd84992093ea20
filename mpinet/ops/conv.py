"""2-D convolution and transposed convolution (NCHW), forward and backward.

Three kernels do all the work, named after cuDNN's: ``fprop`` (y = conv(x, w)), ``dgrad`` (dx
from dy) and ``wgrad`` (dw from x and dy). A transposed convolution is the same three with roles
swapped: its forward is conv's dgrad, its input gradient is conv's fprop, and its weight gradient
is conv's wgrad with input and output exchanged. So im2col/col2im are written once.

On CuPy arrays the kernels call the cuDNN-frontend hooks in ``mpinet.kernels.cudnn`` (CuPy
im2col was measured 21x slower than cuDNN). Everywhere else (NumPy; CuPy would work too) they
run im2col + one batched BLAS matmul over all groups:

    col:  (N, G, K, L)    K = C/G * kh * kw,  L = OH * OW    (strided view of padded x, copied)
    w:    (G, O/G, K)
    y = w @ col  ->  (N, G, O/G, L)  ==  (N, O, OH, OW) with no transpose

col2im accumulates the column gradient by looping over the kh*kw kernel offsets and adding
one strided slice each: no scatter (np.add.at) and no Python loop over batch or pixels.
The weight gradient rebuilds the columns rather than keeping them from forward: that costs
no measurable time (LeNet, 1 core) and saves kh*kw times the input's memory per layer.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import backend, kernels
from ..autograd import Function
from ._util import check_ndim

Pair = tuple[int, int]


def pair(value, name: str, op: str, minimum: int = 0) -> Pair:
    """An int or a 2-sequence of ints -> (h, w), each at least ``minimum``."""
    if isinstance(value, int):
        result = (value, value)
    else:
        result = tuple(value)
        if len(result) != 2 or not all(isinstance(v, int) for v in result):
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(result) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return result


@dataclass(frozen=True)
class ConvGeometry:
    """Stride, padding, dilation and groups of a convolution (as conv2d sees them)."""

    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int

    @classmethod
    def of(cls, op: str, stride, padding, dilation, groups) -> "ConvGeometry":
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
        return cls(pair(stride, "stride", op, 1), pair(padding, "padding", op, 0),
                   pair(dilation, "dilation", op, 1), groups)

    def out_size(self, in_hw, kernel_hw) -> Pair:
        """conv2d's output (OH, OW) for input (H, W) and kernel (kh, kw); may be <= 0."""
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                     zip(in_hw, kernel_hw, self.stride, self.padding, self.dilation, strict=True))

    def transposed_out_size(self, in_hw, kernel_hw, output_padding: Pair) -> Pair:
        """conv_transpose2d's output (H, W): the conv input whose conv output is ``in_hw``."""
        return tuple((n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, k, s, p, d, op in
                     zip(in_hw, kernel_hw, self.stride, self.padding, self.dilation,
                         output_padding, strict=True))


# ---- im2col / col2im (the xp path) --------------------------------------------------------
def pad2d(x, padding: Pair, value=0):
    """x: (N, C, H, W) -> (N, C, H + 2ph, W + 2pw), border filled with ``value``."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = backend.xp_of(x)
    n, c, h, w = x.shape
    out = xp.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def tap(offset: int, stride: int, count: int) -> slice:
    """The padded-input rows (or columns) that kernel offset ``offset`` meets, one per output."""
    return slice(offset, offset + stride * (count - 1) + 1, stride)


def im2col(x, kernel_hw: Pair, geom: ConvGeometry, out_hw: Pair):
    """x: (N, C, H, W) -> columns (N, C, kh, kw, OH, OW), a contiguous copy."""
    xp = backend.xp_of(x)
    xpad = pad2d(x, geom.padding)
    (kh, kw), (oh, ow) = kernel_hw, out_hw
    (sh, sw), (dh, dw) = geom.stride, geom.dilation
    s_n, s_c, s_h, s_w = xpad.strides
    view = xp.lib.stride_tricks.as_strided(
        xpad, shape=(x.shape[0], x.shape[1], kh, kw, oh, ow),
        strides=(s_n, s_c, dh * s_h, dw * s_w, sh * s_h, sw * s_w))
    return xp.ascontiguousarray(view)


def col2im(col, x_shape, geom: ConvGeometry):
    """Adjoint of im2col: columns (N, C, kh, kw, OH, OW) summed back into (N, C, H, W)."""
    xp = backend.xp_of(col)
    n, c, kh, kw, oh, ow = col.shape
    (ph, pw), (sh, sw), (dh, dw) = geom.padding, geom.stride, geom.dilation
    h, w = x_shape[2], x_shape[3]
    gpad = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=col.dtype)
    for i in range(kh):  # kh*kw strided adds; slices for one offset never overlap
        for j in range(kw):
            gpad[:, :, tap(i * dh, sh, oh), tap(j * dw, sw, ow)] += col[:, :, i, j]
    if ph == 0 and pw == 0:
        return gpad
    return xp.ascontiguousarray(gpad[:, :, ph:ph + h, pw:pw + w])


def columns(x, w_shape, geom: ConvGeometry):
    """im2col of x for a weight of ``w_shape``, split by group: (N, G, C/G*kh*kw, OH*OW)."""
    _, cg, kh, kw = w_shape
    oh, ow = geom.out_size(x.shape[2:], (kh, kw))
    col = im2col(x, (kh, kw), geom, (oh, ow))
    return col.reshape(x.shape[0], geom.groups, cg * kh * kw, oh * ow)


def _fprop_columns(col, w, out_hw, dtype):
    n, g, k, _ = col.shape
    o = w.shape[0]
    y = backend.xp_of(col).matmul(w.reshape(g, o // g, k), col)  # (N, G, O/G, L)
    return y.reshape((n, o) + tuple(out_hw)).astype(dtype, copy=False)  # NumPy bf16 matmul: fp32


def _dgrad_col2im(gy, w, x_shape, geom: ConvGeometry):
    n, o, oh, ow = gy.shape
    _, cg, kh, kw = w.shape
    g = geom.groups
    wt = w.reshape(g, o // g, cg * kh * kw).transpose(0, 2, 1)  # (G, K, O/G)
    gcol = backend.xp_of(gy).matmul(wt, gy.reshape(n, g, o // g, oh * ow))  # (N, G, K, L)
    gcol = gcol.reshape(n, g * cg, kh, kw, oh, ow).astype(gy.dtype, copy=False)
    return col2im(gcol, x_shape, geom)


def _wgrad_columns(col, gy, w_shape):
    n, g, k, cols = col.shape
    gy_g = gy.reshape(n, g, w_shape[0] // g, cols)
    gw = backend.xp_of(col).matmul(gy_g, col.transpose(0, 1, 3, 2)).sum(axis=0)  # (G, O/G, K)
    return gw.reshape(w_shape).astype(col.dtype, copy=False)


# ---- dispatch: cuDNN on CuPy arrays, im2col otherwise -------------------------------------
# (the cuDNN hooks make their operands contiguous themselves)
def _use_cudnn(a) -> bool:
    """True for a CuPy array of a dtype cuDNN handles, else False (im2col path: NumPy arrays,
    and float64 on the GPU, for which cuDNN 9's graph engines gave wrong results)."""
    return backend.is_gpu_array(a) and kernels.cudnn.supports(a.dtype)


def fprop(x, w, geom: ConvGeometry):
    """conv2d forward: x (N, C, H, W), w (O, C/G, kh, kw) -> y (N, O, OH, OW)."""
    if _use_cudnn(x):
        return kernels.cudnn.conv_fprop(x, w, geom.stride, geom.padding, geom.dilation,
                                        geom.groups)
    return _fprop_columns(columns(x, w.shape, geom), w, geom.out_size(x.shape[2:], w.shape[2:]),
                          x.dtype)


def dgrad(gy, w, x_shape, geom: ConvGeometry):
    """conv2d input gradient: gy (N, O, OH, OW), w (O, C/G, kh, kw) -> gx of ``x_shape``."""
    x_shape = tuple(int(v) for v in x_shape)
    if _use_cudnn(gy):
        return kernels.cudnn.conv_dgrad(gy, w, x_shape, geom.stride, geom.padding, geom.dilation,
                                        geom.groups)
    return _dgrad_col2im(gy, w, x_shape, geom)


def wgrad(x, gy, w_shape, geom: ConvGeometry, out=None):
    """conv2d weight gradient: x (N, C, H, W), gy (N, O, OH, OW) -> gw of ``w_shape``.
    ``out``: where cuDNN may write gw (the weight's zeroed gradient buffer), or None."""
    w_shape = tuple(int(v) for v in w_shape)
    if _use_cudnn(gy):
        return kernels.cudnn.conv_wgrad(x, gy, w_shape, geom.stride, geom.padding, geom.dilation,
                                        geom.groups, out=out)
    return _wgrad_columns(columns(x, w_shape, geom), gy, w_shape)


# ---- validation ---------------------------------------------------------------------------
def _check_common(op: str, x, w, b, out_channels: int) -> None:
    check_ndim(op, "input", x, 4, "(N, C, H, W)")
    check_ndim(op, "weight", w, 4, "(out, in/groups, kh, kw)" if op == "conv2d"
               else "(in, out/groups, kh, kw)")
    if x.dtype != w.dtype:
        raise ValueError(f"{op}: input dtype {x.dtype} differs from weight dtype {w.dtype}; "
                         f"cast the input to the weight's dtype (or run under amp.autocast)")
    if b is not None:
        if tuple(b.shape) != (out_channels,):
            raise ValueError(f"{op}: bias must have shape ({out_channels},) (one per output "
                             f"channel), got {tuple(b.shape)}")
        if b.dtype != x.dtype:
            raise ValueError(f"{op}: bias dtype {b.dtype} differs from input dtype {x.dtype}")


def _check_out_size(op: str, out_hw, x, w, detail: str) -> None:
    if min(out_hw) <= 0:
        raise ValueError(f"{op}: output size {tuple(out_hw)} is not positive for input "
                         f"{tuple(x.shape)} and weight {tuple(w.shape)} ({detail}); use a larger "
                         f"input, more padding or a smaller kernel/dilation")


def _zero_extend(x, hw):
    """x: (N, C, H, W) -> (N, C, *hw), zeros added at the bottom/right (x itself if it fits)."""
    if tuple(x.shape[2:]) == tuple(hw):
        return x
    out = backend.xp_of(x).zeros(tuple(x.shape[:2]) + tuple(hw), dtype=x.dtype)
    out[:, :, :x.shape[2], :x.shape[3]] = x
    return out


def _crop_to(x, hw):
    """The adjoint of _zero_extend: keep the top-left hw of x."""
    if tuple(x.shape[2:]) == tuple(hw):
        return x
    return backend.xp_of(x).ascontiguousarray(x[:, :, :hw[0], :hw[1]])


def _bias_grad(gy):
    """Sum of gy (N, O, OH, OW) over all axes but 1: one fused launch on the GPU (CuPy's sum over
    axes (0, 2, 3) took 8 ms of a VGG-16 bf16 step)."""
    if backend.is_gpu_array(gy):
        return kernels.batch_norm.channel_sum(gy)
    return gy.sum(axis=(0, 2, 3))


def _with_bias_grad(need, gx, gw, gy):
    """Backward's result: (gx, gw) for an op called without a bias, else (gx, gw, gb)."""
    if len(need) == 2:
        return gx, gw
    return gx, gw, _bias_grad(gy) if need[2] else None


def _add_bias_(y, b):
    """y (N, O, OH, OW) += b (O,) per channel, in place (y is a fresh output)."""
    if backend.is_gpu_array(y):
        return kernels.elementwise.add_channel_bias_(y, b)
    y += b.reshape(1, -1, 1, 1)
    return y


# ---- the ops ------------------------------------------------------------------------------
class Conv2d(Function):
    def __init__(self, geom: ConvGeometry):
        self.geom = geom

    def forward(self, x, w, b=None):
        g = self.geom
        c, o = x.shape[1], w.shape[0]
        _check_common("conv2d", x, w, b, o)
        if c % g.groups or o % g.groups:
            raise ValueError(f"conv2d: input channels {c} and output channels {o} must both be "
                             f"divisible by groups={g.groups}")
        if w.shape[1] * g.groups != c:
            raise ValueError(f"conv2d: input has {c} channels but weight {tuple(w.shape)} with "
                             f"groups={g.groups} expects {w.shape[1] * g.groups}; weight must be "
                             f"(out, in/groups, kh, kw)")
        _check_out_size("conv2d", g.out_size(x.shape[2:], w.shape[2:]), x, w,
                        f"stride={g.stride}, padding={g.padding}, dilation={g.dilation}")
        self.save(x, w)
        y = fprop(x, w, g)
        if b is not None:
            y = _add_bias_(y, b)
        return y

    def backward(self, gy):
        x, w = self.saved
        need = self.needs_input_grad
        gx = dgrad(gy, w, x.shape, self.geom) if need[0] else None
        gw = wgrad(x, gy, w.shape, self.geom, out=self.grad_destination(1)) if need[1] else None
        return _with_bias_grad(need, gx, gw, gy)


class ConvTranspose2d(Function):
    """The adjoint of conv2d in x: y = conv2d's dgrad(x) with weight (in, out/groups, kh, kw)."""

    def __init__(self, geom: ConvGeometry, output_padding: Pair):
        self.geom, self.output_padding = geom, output_padding

    def forward(self, x, w, b=None):
        g = self.geom
        c_in, c_out = x.shape[1], w.shape[1] * g.groups
        _check_common("conv_transpose2d", x, w, b, c_out)
        if c_in % g.groups:
            raise ValueError(f"conv_transpose2d: input channels {c_in} must be divisible by "
                             f"groups={g.groups}")
        if w.shape[0] != c_in:
            raise ValueError(f"conv_transpose2d: input has {c_in} channels but weight "
                             f"{tuple(w.shape)} expects {w.shape[0]}; weight must be "
                             f"(in, out/groups, kh, kw)")
        for op_, s, d in zip(self.output_padding, g.stride, g.dilation, strict=True):
            if op_ >= max(s, d):
                raise ValueError(f"conv_transpose2d: output_padding {self.output_padding} must "
                                 f"be smaller than stride {g.stride} or dilation {g.dilation}")
        out_hw = g.transposed_out_size(x.shape[2:], w.shape[2:], self.output_padding)
        _check_out_size("conv_transpose2d", out_hw, x, w,
                        f"stride={g.stride}, padding={g.padding}, dilation={g.dilation}, "
                        f"output_padding={self.output_padding}")
        # With output_padding >= stride (allowed while < dilation) a conv2d over the output
        # would give a larger map than x: x stands for that map with zeros at the bottom/right.
        self.x_hw = tuple(x.shape[2:])
        x = _zero_extend(x, g.out_size(out_hw, w.shape[2:]))
        self.save(x, w)
        y = dgrad(x, w, (x.shape[0], c_out) + tuple(out_hw), g)
        if b is not None:
            y = _add_bias_(y, b)
        return y

    def backward(self, gy):
        x, w = self.saved
        need = self.needs_input_grad
        gx = _crop_to(fprop(gy, w, self.geom), self.x_hw) if need[0] else None
        # In conv2d terms gy is the input and x the output gradient.
        gw = wgrad(gy, x, w.shape, self.geom) if need[1] else None
        return _with_bias_grad(need, gx, gw, gy)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation, like PyTorch).

    x: (N, C, H, W); w: (O, C/groups, kh, kw); b: (O,) or None -> (N, O, OH, OW) with
    OH = (H + 2*padding - dilation*(kh-1) - 1) // stride + 1.
    stride/padding/dilation: int or (h, w).
    """
    geom = ConvGeometry.of("conv2d", stride, padding, dilation, groups)
    args = (x, w) if b is None else (x, w, b)
    return Conv2d(geom).apply(*args)


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed 2-D convolution (PyTorch's ConvTranspose2d).

    x: (N, Cin, H, W); w: (Cin, Cout/groups, kh, kw); b: (Cout,) or None -> (N, Cout, OH, OW) with
    OH = (H-1)*stride - 2*padding + dilation*(kh-1) + output_padding + 1.
    """
    geom = ConvGeometry.of("conv_transpose2d", stride, padding, dilation, groups)
    output_padding = pair(output_padding, "output_padding", "conv_transpose2d", 0)
    args = (x, w) if b is None else (x, w, b)
    return ConvTranspose2d(geom, output_padding).apply(*args)
