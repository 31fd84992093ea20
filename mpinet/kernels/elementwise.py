"""Element-wise kernels over whole activations and parameter buffers, 16-byte vectors per
thread: a conv's bias added in place, a residual add (with the ReLU after it), and the float32
<-> bfloat16/float16 casts of mixed precision.

One launch where the plain ``xp`` version launches several or costs more host time: host launch
overhead (~9-25 us a launch) is what a ResNet step on a fast GPU runs out of.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ._compile import VEC_HEADER, cp, io_view, kind_of, launch_vec, vectorizable
from .activation import relu

_VEC_SOURCE = VEC_HEADER + r"""
// In place y[i] += b[c] for y (N, C, HW...) contiguous, c = (i / HW) % C (a conv's bias).
template <int K>
__global__ void v_bias_add(typename io<K>::T* y, const typename io<K>::T* b, unsigned int n,
                           unsigned int C, unsigned int HW) {
    typedef typename io<K>::A A;
    typedef typename vec<K>::U U;
    const unsigned int V = vec<K>::V, nvec = n / V, stride = gridDim.x * blockDim.x;
    const unsigned int first = blockIdx.x * blockDim.x + threadIdx.x;
    for (unsigned int v = first; v < nvec; v += stride) {
        U u;
        u.u = reinterpret_cast<const uint4*>(y)[v];
        unsigned int i0 = v * V, q = i0 / HW, r = i0 - q * HW, c = q % C;
#pragma unroll
        for (unsigned int k = 0; k < V; ++k) {
            u.t[k] = io<K>::st(io<K>::ld(u.t[k]) + io<K>::ld(b[c]));
            if (++r == HW) { r = 0; if (++c == C) c = 0; }
        }
        reinterpret_cast<uint4*>(y)[v] = u.u;
    }
    for (unsigned int i = nvec * V + first; i < n; i += stride)
        y[i] = io<K>::st(io<K>::ld(y[i]) + io<K>::ld(b[(i / HW) % C]));
}

// out = a + b (same shape and dtype); with relu set, relu(a + b): a residual connection and
// the ReLU after it in one pass.
template <int K>
__global__ void v_add(const typename io<K>::T* a, const typename io<K>::T* b,
                      typename io<K>::T* out, unsigned int n, int relu) {
    typedef typename vec<K>::U U;
    const unsigned int V = vec<K>::V, nvec = n / V, stride = gridDim.x * blockDim.x;
    const unsigned int first = blockIdx.x * blockDim.x + threadIdx.x;
    for (unsigned int v = first; v < nvec; v += stride) {
        U av, bv, out_v;
        av.u = reinterpret_cast<const uint4*>(a)[v];
        bv.u = reinterpret_cast<const uint4*>(b)[v];
#pragma unroll
        for (unsigned int k = 0; k < V; ++k)
            out_v.t[k] = io<K>::st(relu_if(io<K>::ld(av.t[k]) + io<K>::ld(bv.t[k]), relu));
        reinterpret_cast<uint4*>(out)[v] = out_v.u;
    }
    for (unsigned int i = nvec * V + first; i < n; i += stride)
        out[i] = io<K>::st(relu_if(io<K>::ld(a[i]) + io<K>::ld(b[i]), relu));
}

// Conversions between float32 and kind K (mixed precision's master weights and gradients):
// y[i] = x[i] rounded to K's type (nearest even), or widened to float32. 64-bit indices: a flat
// buffer of all parameters may exceed 2**31 elements.
template <int K>
__global__ void v_from_f32(const float* x, typename io<K>::T* y, unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        y[i] = io<K>::st((typename io<K>::A)x[i]);
}

template <int K>
__global__ void v_to_f32(const typename io<K>::T* x, float* y, unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        y[i] = (float)io<K>::ld(x[i]);
}
"""
_VEC_MODULE = ("elementwise_vec", _VEC_SOURCE, ("v_bias_add", "v_add", "v_from_f32", "v_to_f32"))


def add_channel_bias_(y, b):
    """y += b[c] over channel axis 1 of y (N, C, ...), in place; b (C,). Returns y. Vectorised
    for a contiguous, aligned y and a bias of its dtype; otherwise CuPy's broadcast add."""
    if y.ndim < 2 or b.shape != (y.shape[1],):
        raise ValueError(f"add_channel_bias_: expected y (N, C, ...) and bias (C,), got y "
                         f"{y.shape} and bias {b.shape}")
    kind = vectorizable(y)
    if kind is None or b.dtype != y.dtype or not b.flags.c_contiguous:
        y += b.reshape((1, -1) + (1,) * (y.ndim - 2))
        return y
    hw = int(np.prod(y.shape[2:])) if y.ndim > 2 else 1
    launch_vec(_VEC_MODULE, "v_bias_add", kind, y, io_view(y), io_view(b), np.uint32(y.size),
               np.uint32(y.shape[1]), np.uint32(hw))
    return y


def add(a, b, relu_after=False):
    """a + b for two arrays of one shape and dtype (a new array); ``relu_after``: max(a + b, 0),
    NaN kept, in the same pass."""
    kind = vectorizable(a, b)
    if kind is None:
        return relu(a + b) if relu_after else a + b
    out = cp().empty_like(a)
    launch_vec(_VEC_MODULE, "v_add", kind, a, io_view(a), io_view(b), io_view(out),
               np.uint32(a.size), np.int32(bool(relu_after)))
    return out


def cast_into(dst, src):
    """dst[...] = src converted to dst's dtype, on either device. On the GPU, for contiguous
    arrays of one shape, one float32 and the other float16, bfloat16 or float64: one launch
    (CuPy's copy costs more host time, and mixed precision does this for every weight and
    gradient); other combinations go through CuPy. On the CPU, NumPy's assignment."""
    if not backend.is_gpu_array(dst):
        dst[...] = src
        return dst
    if dst.shape != src.shape:
        raise ValueError(f"cast_into: shapes differ: {dst.shape} and {src.shape}")
    f32 = np.dtype(np.float32)
    if not (dst.flags.c_contiguous and src.flags.c_contiguous) or dst.size == 0:
        dst[...] = src
    elif src.dtype == f32 and dst.dtype != f32 and kind_of(dst) is not None:
        launch_vec(_VEC_MODULE, "v_from_f32", kind_of(dst), dst, src, io_view(dst),
                   np.uint64(dst.size))
    elif dst.dtype == f32 and src.dtype != f32 and kind_of(src) is not None:
        launch_vec(_VEC_MODULE, "v_to_f32", kind_of(src), dst, io_view(src), dst,
                   np.uint64(dst.size))
    else:
        dst[...] = src
    return dst
