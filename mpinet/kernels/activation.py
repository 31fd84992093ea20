"""Activation kernels: ReLU forward (16-byte vectors per thread), and the backward of ReLU,
sigmoid and tanh from their outputs; exact-erf GELU (PyTorch's formula) both ways."""
from __future__ import annotations

import numpy as np

from ._compile import (VEC_HEADER, check_float, cp, elementwise_kernel, io_view, launch_vec,
                       like, vectorizable)

_VEC_SOURCE = VEC_HEADER + r"""
// relu: y = x > 0 (or NaN) ? x : 0.
template <int K>
__global__ void v_relu(const typename io<K>::T* x, typename io<K>::T* y, unsigned int n) {
    typedef typename io<K>::A A;
    typedef typename vec<K>::U U;
    const unsigned int V = vec<K>::V, nvec = n / V, stride = gridDim.x * blockDim.x;
    const unsigned int first = blockIdx.x * blockDim.x + threadIdx.x;
    for (unsigned int v = first; v < nvec; v += stride) {
        U in, out;
        in.u = reinterpret_cast<const uint4*>(x)[v];
#pragma unroll
        for (unsigned int k = 0; k < V; ++k) {
            out.t[k] = io<K>::st(relu_if(io<K>::ld(in.t[k]), 1));
        }
        reinterpret_cast<uint4*>(y)[v] = out.u;
    }
    for (unsigned int i = nvec * V + first; i < n; i += stride)
        y[i] = io<K>::st(relu_if(io<K>::ld(x[i]), 1));
}

// relu backward from the output: gx = y > 0 ? gy : 0.
template <int K>
__global__ void v_relu_bwd(const typename io<K>::T* y, const typename io<K>::T* gy,
                           typename io<K>::T* gx, unsigned int n) {
    typedef typename io<K>::A A;
    typedef typename vec<K>::U U;
    const unsigned int V = vec<K>::V, nvec = n / V, stride = gridDim.x * blockDim.x;
    const unsigned int first = blockIdx.x * blockDim.x + threadIdx.x;
    const typename io<K>::T zero = io<K>::st(A(0));
    for (unsigned int v = first; v < nvec; v += stride) {
        U yv, gv, out;
        yv.u = reinterpret_cast<const uint4*>(y)[v];
        gv.u = reinterpret_cast<const uint4*>(gy)[v];
#pragma unroll
        for (unsigned int k = 0; k < V; ++k)
            out.t[k] = io<K>::ld(yv.t[k]) > A(0) ? gv.t[k] : zero;
        reinterpret_cast<uint4*>(gx)[v] = out.u;
    }
    for (unsigned int i = nvec * V + first; i < n; i += stride)
        gx[i] = io<K>::ld(y[i]) > A(0) ? gy[i] : zero;
}
"""
_VEC_MODULE = ("activation_vec", _VEC_SOURCE, ("v_relu", "v_relu_bwd"))


def relu(x):
    """max(x, 0) (NaN stays NaN), one 16-byte vector per thread where the layout allows."""
    kind = vectorizable(x)
    if kind is None:
        return cp().maximum(x, 0)
    y = cp().empty_like(x)
    launch_vec(_VEC_MODULE, "v_relu", kind, x, io_view(x), io_view(y), np.uint32(x.size))
    return y


def _unary_grad(name, where, y, gy, expr):
    if y.shape != gy.shape:
        raise ValueError(f"{where}: output {y.shape} and its gradient {gy.shape} differ in shape")
    check_float(where, y, gy)
    k = elementwise_kernel(name, "Y y, G gy", "G gx",
                           "typedef mpn_acc<G>::type A; A yv = mpn_ld<A>(y); A g = mpn_ld<A>(gy); "
                           f"mpn_put(gx, {expr});")
    return like(k(io_view(y), io_view(gy)), gy)


def relu_backward(y, gy):
    """gx = gy where y > 0 else 0 (y is ReLU's output)."""
    kind = vectorizable(y, gy)
    if kind is None:
        return _unary_grad("relu_bwd", "relu_backward", y, gy, "yv > A(0) ? g : A(0)")
    gx = cp().empty_like(gy)
    launch_vec(_VEC_MODULE, "v_relu_bwd", kind, y, io_view(y), io_view(gy), io_view(gx),
               np.uint32(y.size))
    return gx


def sigmoid_backward(y, gy):
    """gx = gy * y * (1 - y) (y is the sigmoid's output)."""
    return _unary_grad("sigmoid_bwd", "sigmoid_backward", y, gy, "g * yv * (A(1) - yv)")


def tanh_backward(y, gy):
    """gx = gy * (1 - y^2) (y is tanh's output)."""
    return _unary_grad("tanh_bwd", "tanh_backward", y, gy, "g * (A(1) - yv * yv)")


def gelu_forward(x):
    """Exact GELU: y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))."""
    check_float("gelu_forward", x)
    k = elementwise_kernel("gelu_fwd", "X x", "X y",
                           "typedef mpn_acc<X>::type A; A v = mpn_ld<A>(x); "
                           "mpn_put(y, A(0.5) * v * (A(1) + erf(v * A(0.70710678118654752))));")
    return like(k(io_view(x)), x)


def gelu_backward(x, gy):
    """gx = gy * (Phi(x) + x * phi(x)) for exact GELU (x is GELU's input)."""
    if x.shape != gy.shape:
        raise ValueError(f"gelu_backward: input {x.shape} and gradient {gy.shape} differ in shape")
    check_float("gelu_backward", x, gy)
    k = elementwise_kernel("gelu_bwd", "X x, G gy", "G gx",
                           "typedef mpn_acc<G>::type A; A v = mpn_ld<A>(x); "
                           "A cdf = A(0.5) * (A(1) + erf(v * A(0.70710678118654752))); "
                           "A pdf = exp(A(-0.5) * v * v) * A(0.39894228040143268); "
                           "mpn_put(gx, mpn_ld<A>(gy) * (cdf + v * pdf));")
    return like(k(io_view(x), io_view(gy)), gy)
