"""Fused CuPy kernels: activations and their gradients, GELU, batch norm, max pooling, per-channel
sums, residual and bias adds, and optimizer updates.

One kernel (or, for large batch-norm channels, two) where the plain ``xp`` version launches
several: host launch overhead (~9-25 us a launch) is what a ResNet step on a fast GPU runs out
of. The element-wise kernels that touch whole activations move 16-byte vectors per thread, since
one 2-byte value per thread left bfloat16 at a quarter of the memory bandwidth.
Every kernel computes in float32 (float64 when the arrays are float64) whatever the io dtype, and
is compiled once per dtype combination on first use (CuPy caches the binaries).

Dtypes: float32, float64, float16 and bfloat16 (``ml_dtypes.bfloat16``). bfloat16 arrays are
handed to the kernels as uint16 views and converted in-kernel, so nothing depends on how a CuPy
version spells bfloat16 in device code. Batch-norm statistics (mean, invstd) are float32, or
float64 for float64 input.

The formulas are PyTorch's (SGD with momentum/dampening/Nesterov/weight decay; Adam and AdamW
with bias correction; exact erf GELU; biased batch variance for normalisation).
"""
from __future__ import annotations

import math

import numpy as np

_kernels: dict = {}   # name -> compiled cupy kernel / module, built on first use

# Conversions shared by the elementwise kernels. In ElementwiseKernels `unsigned short` is
# always a bfloat16 bit pattern (see _io); float16 arrives as CuPy's own float16 type.
_PREAMBLE = r"""
template <typename T> struct mpn_acc { typedef float type; };
template <> struct mpn_acc<double> { typedef double type; };
template <typename A, typename T> __device__ __forceinline__ A mpn_ld(T v) {
    return static_cast<A>(static_cast<float>(v)); }
template <typename A> __device__ __forceinline__ A mpn_ld(double v) { return static_cast<A>(v); }
template <typename A> __device__ __forceinline__ A mpn_ld(unsigned short v) {
    return static_cast<A>(__uint_as_float(((unsigned int)v) << 16)); }
template <typename T, typename A> __device__ __forceinline__ void mpn_put(T& dst, A v) {
    dst = static_cast<T>(v); }
__device__ __forceinline__ void mpn_put(unsigned short& dst, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { dst = (unsigned short)((u >> 16) | 0x40u); return; }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even, as ml_dtypes does
    dst = (unsigned short)(u >> 16);
}
"""


def _cp():
    import cupy  # noqa: PLC0415 - GPU-only module

    return cupy


_BF16 = []  # [bfloat16 dtype or None], resolved on first use


def _is_bf16(a) -> bool:
    # A dtype comparison, not dtype.name: NumPy builds .name in Python (~2 us), and this runs
    # several times per kernel call.
    if not _BF16:
        try:
            import ml_dtypes  # noqa: PLC0415 - optional; without it no array is bfloat16

            _BF16.append(np.dtype(ml_dtypes.bfloat16))
        except ImportError:
            _BF16.append(None)
    return _BF16[0] is not None and a.dtype == _BF16[0]


def _io(a):
    """The array as the kernels see it: a uint16 view for bfloat16, else itself."""
    return a.view(_cp().uint16) if _is_bf16(a) else a


def _like(out, ref):
    """Undo _io on a kernel's output so it carries ``ref``'s dtype."""
    return out.view(ref.dtype) if _is_bf16(ref) else out


def _check_float(where, *arrays):
    for a in arrays:
        if a.dtype.kind != "f" and not _is_bf16(a):
            raise TypeError(f"{where}: expected floating-point arrays, got dtype {a.dtype.name}")


def _elementwise(name, in_params, out_params, body):
    k = _kernels.get(name)
    if k is None:
        k = _kernels[name] = _cp().ElementwiseKernel(
            in_params, out_params, body, name=f"mpinet_{name}", preamble=_PREAMBLE)
    return k


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------

def _unary_grad(name, where, y, gy, expr):
    if y.shape != gy.shape:
        raise ValueError(f"{where}: output {y.shape} and its gradient {gy.shape} differ in shape")
    _check_float(where, y, gy)
    k = _elementwise(name, "Y y, G gy", "G gx",
                     "typedef mpn_acc<G>::type A; A yv = mpn_ld<A>(y); A g = mpn_ld<A>(gy); "
                     f"mpn_put(gx, {expr});")
    return _like(k(_io(y), _io(gy)), gy)


def relu_backward(y, gy):
    """gx = gy where y > 0 else 0 (y is ReLU's output)."""
    kind = _vectorizable(y, gy)
    if kind is None:
        return _unary_grad("relu_bwd", "relu_backward", y, gy, "yv > A(0) ? g : A(0)")
    gx = _cp().empty_like(gy)
    _launch_vec("v_relu_bwd", kind, y, _io(y), _io(gy), _io(gx), np.uint32(y.size))
    return gx


def sigmoid_backward(y, gy):
    """gx = gy * y * (1 - y) (y is the sigmoid's output)."""
    return _unary_grad("sigmoid_bwd", "sigmoid_backward", y, gy, "g * yv * (A(1) - yv)")


def tanh_backward(y, gy):
    """gx = gy * (1 - y^2) (y is tanh's output)."""
    return _unary_grad("tanh_bwd", "tanh_backward", y, gy, "g * (A(1) - yv * yv)")


def gelu_forward(x):
    """Exact GELU: y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))."""
    _check_float("gelu_forward", x)
    k = _elementwise("gelu_fwd", "X x", "X y",
                     "typedef mpn_acc<X>::type A; A v = mpn_ld<A>(x); "
                     "mpn_put(y, A(0.5) * v * (A(1) + erf(v * A(0.70710678118654752))));")
    return _like(k(_io(x)), x)


def gelu_backward(x, gy):
    """gx = gy * (Phi(x) + x * phi(x)) for exact GELU (x is GELU's input)."""
    if x.shape != gy.shape:
        raise ValueError(f"gelu_backward: input {x.shape} and gradient {gy.shape} differ in shape")
    _check_float("gelu_backward", x, gy)
    k = _elementwise("gelu_bwd", "X x, G gy", "G gx",
                     "typedef mpn_acc<G>::type A; A v = mpn_ld<A>(x); "
                     "A cdf = A(0.5) * (A(1) + erf(v * A(0.70710678118654752))); "
                     "A pdf = exp(A(-0.5) * v * v) * A(0.39894228040143268); "
                     "mpn_put(gx, mpn_ld<A>(gy) * (cdf + v * pdf));")
    return _like(k(_io(x), _io(gy)), gy)


def bias_relu(x, b):
    """y = max(x + b, 0) with b (C,) broadcast over x (N, C, ...): a conv/linear bias and ReLU in
    one pass."""
    if x.ndim < 2 or b.shape != (x.shape[1],):
        raise ValueError(f"bias_relu: expected x (N, C, ...) and bias (C,), got x {x.shape} "
                         f"and bias {b.shape}")
    _check_float("bias_relu", x, b)
    k = _elementwise("bias_relu", "X x, B b", "X y",
                     "typedef mpn_acc<X>::type A; A v = mpn_ld<A>(x) + mpn_ld<A>(b); "
                     "mpn_put(y, v > A(0) ? v : A(0));")
    bb = _io(b).reshape((1, x.shape[1]) + (1,) * (x.ndim - 2))
    return _like(k(_io(x), bb), x)


# ---------------------------------------------------------------------------------------------
# Dropout: the mask bits of mpinet.keyed_random.keyed_bits((seed, calls), i), computed in-kernel
# from the generator's device state [seed, calls], which a second one-thread kernel advances.
# Nothing is read on the host, so the pair captures into a CUDA graph and each replay draws a
# fresh mask.
# ---------------------------------------------------------------------------------------------

_SPLITMIX = r"""
__device__ __forceinline__ unsigned long long mpn_splitmix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
"""


def dropout(x, state, threshold: int, scale: float):
    """(y, mask): mask = scale where the element's top 24 random bits are >= threshold, else 0,
    rounded to x's dtype; y = x * mask. ``state``: (2,) uint64 [seed, calls], advanced by one."""
    _check_float("dropout", x)
    if state.shape != (2,) or state.dtype != np.uint64:
        raise ValueError(f"dropout: state must be a (2,) uint64 array, got {state.shape} "
                         f"{state.dtype}")
    k = _kernels.get("dropout")
    if k is None:
        cp = _cp()
        k = _kernels["dropout"] = cp.ElementwiseKernel(
            "X x, raw uint64 state, uint64 threshold, float64 scale", "X y, X mask",
            "typedef mpn_acc<X>::type A; "
            "unsigned long long key = mpn_splitmix64(mpn_splitmix64(state[0]) ^ state[1]); "
            "unsigned long long bits = mpn_splitmix64(key ^ (unsigned long long)i); "
            "mpn_put(mask, (bits >> 40) >= threshold ? A(scale) : A(0)); "  # top 24 bits
            "mpn_put(y, mpn_ld<A>(x) * mpn_ld<A>(mask));",  # the rounded mask, as backward uses
            name="mpinet_dropout", preamble=_PREAMBLE + _SPLITMIX)
        _kernels["dropout_advance"] = cp.ElementwiseKernel(
            "", "raw uint64 state", "state[1] += 1ull;", name="mpinet_dropout_advance")
    y, mask = k(_io(x), state, np.uint64(threshold), np.float64(scale))
    _kernels["dropout_advance"](state, size=1)
    return _like(y, x), _like(mask, x)


# ---------------------------------------------------------------------------------------------
# Max pooling: one launch each way instead of ~6 elementwise launches per window offset.
# Forward keeps the winning input position (h * W + w within its (n, c) plane, int32) per output;
# backward gathers, for each input element, the gradients of the outputs it won, in a fixed
# order (deterministic, no atomics). Ties go to the first position in the window (row-major), a
# NaN wins over numbers, as in PyTorch.
# ---------------------------------------------------------------------------------------------

_POOL_GEOM = ("int32 H, int32 W, int32 OH, int32 OW, int32 kh, int32 kw, int32 sh, int32 sw, "
              "int32 ph, int32 pw")


def _pool_args(x_shape, geom):
    n, c, h, w = x_shape
    if n * c * h * w >= 2**31:
        raise ValueError(f"max_pool2d: input {tuple(x_shape)} has {n * c * h * w} elements; the "
                         f"fused kernels index with 32 bits (at most 2**31 - 1): split the batch")
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = geom
    return [np.int32(v) for v in (h, w, oh, ow, kh, kw, sh, sw, ph, pw)]


def max_pool2d_forward(x, kernel, stride, padding, out_hw):
    """y (N, C, OH, OW) and the argmax positions (int32, h * W + w) of max pooling x (N, C, H, W).
    kernel/stride/padding/out_hw: (h, w) pairs, already validated (mpinet.ops.pool)."""
    cp = _cp()
    _check_float("max_pool2d", x)
    x = _contiguous(cp, x)
    args = _pool_args(x.shape, (kernel, stride, padding, out_hw))
    k = _elementwise("maxpool_fwd", "raw X x, " + _POOL_GEOM, "X y, int32 arg",
                     "typedef mpn_acc<X>::type A; "
                     "int ow = i % OW; int t = i / OW; int oh = t % OH; int nc = t / OH; "
                     "int h0 = oh * sh - ph, w0 = ow * sw - pw; "
                     "A best = A(0); int at = -1; "
                     "for (int r = 0; r < kh; ++r) { int h = h0 + r; if (h < 0 || h >= H) continue; "
                     "  for (int c = 0; c < kw; ++c) { int w = w0 + c; if (w < 0 || w >= W) continue; "
                     "    A v = mpn_ld<A>(x[((long long)nc * H + h) * W + w]); "
                     "    if (at < 0 || v > best || (isnan(v) && !isnan(best))) { best = v; at = h * W + w; } "
                     "  } } "
                     "mpn_put(y, best); arg = at;")
    shape = tuple(x.shape[:2]) + tuple(out_hw)
    y = cp.empty(shape, dtype=x.dtype)
    arg = cp.empty(shape, dtype=cp.int32)
    k(_io(x), *args, _io(y), arg)
    return y, arg


def max_pool2d_backward(gy, arg, x_shape, kernel, stride, padding):
    """gx (N, C, H, W) of max pooling, from gy (N, C, OH, OW) and forward's argmax positions."""
    cp = _cp()
    _check_float("max_pool2d_backward", gy)
    gy = _contiguous(cp, gy)
    out_hw = tuple(gy.shape[2:])
    args = _pool_args(x_shape, (kernel, stride, padding, out_hw))
    k = _elementwise("maxpool_bwd", "raw G gy, raw int32 arg, " + _POOL_GEOM, "G gx",
                     "typedef mpn_acc<G>::type A; "
                     "int w = i % W; int t = i / W; int h = t % H; int nc = t / H; "
                     "int me = h * W + w; "
                     # outputs whose window [o*s - p, o*s - p + k) contains this row / column
                     "int lo_h = h + ph - kh + 1, lo_w = w + pw - kw + 1; "
                     "int oh0 = lo_h <= 0 ? 0 : (lo_h + sh - 1) / sh; "
                     "int ow0 = lo_w <= 0 ? 0 : (lo_w + sw - 1) / sw; "
                     "int oh1 = min(OH - 1, (h + ph) / sh), ow1 = min(OW - 1, (w + pw) / sw); "
                     "A acc = A(0); "
                     "for (int oh = oh0; oh <= oh1; ++oh) for (int ow = ow0; ow <= ow1; ++ow) { "
                     "  long long o = ((long long)nc * OH + oh) * OW + ow; "
                     "  if (arg[o] == me) acc += mpn_ld<A>(gy[o]); } "
                     "mpn_put(gx, acc);")
    gx = cp.empty(tuple(x_shape), dtype=gy.dtype)
    k(_io(gy), arg, *args, _io(gx))
    return gx


# ---------------------------------------------------------------------------------------------
# Batch norm: per-channel statistics over (N, H, W) of x (N, C, H, W), or over N of x (N, C).
# Channels of at most ONE_BLOCK_MAX elements: one launch a direction, a block per channel. Larger:
# two launches a direction: a reduction over S slices of each channel (grid S x C) whose last
# block per channel combines the slices in float64 and writes the statistics, then an
# elementwise apply. Forward sums are shifted by each channel's first element, so the one-pass
# variance does not cancel catastrophically when |mean| >> std. Host cost is kept down (it
# dominates at small spatial sizes): launch geometry cached per shape, compiled functions cached,
# partial sums and arrival counters in a per-(device, stream) scratch buffer.
# ---------------------------------------------------------------------------------------------

_IO_HEADER = r"""
// K: 0 float32, 1 float16, 2 bfloat16, 3 float64 (16-bit types travel as unsigned short).
template <int K> struct io { typedef float T; typedef float A;
    static __device__ __forceinline__ float ld(float v) { return v; }
    static __device__ __forceinline__ float st(float v) { return v; } };
template <> struct io<1> { typedef unsigned short T; typedef float A;
    static __device__ __forceinline__ float ld(unsigned short h) {
        float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
    static __device__ __forceinline__ unsigned short st(float f) {
        unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; } };
template <> struct io<2> { typedef unsigned short T; typedef float A;
    static __device__ __forceinline__ float ld(unsigned short v) {
        return __uint_as_float(((unsigned int)v) << 16); }
    static __device__ __forceinline__ unsigned short st(float v) {
        unsigned int u = __float_as_uint(v);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
        u += 0x7fffu + ((u >> 16) & 1u);
        return (unsigned short)(u >> 16); } };
template <> struct io<3> { typedef double T; typedef double A;
    static __device__ __forceinline__ double ld(double v) { return v; }
    static __device__ __forceinline__ double st(double v) { return v; } };

// With relu set, max(v, 0) with NaN kept (the relu kernel's rule); else v. Applying it before
// rounding to the storage type gives the same value as after: rounding keeps the sign.
template <typename A>
__device__ __forceinline__ A relu_if(A v, int relu) {
    return relu && !(v > A(0) || v != v) ? A(0) : v;
}

"""

_BN_SOURCE = _IO_HEADER + r"""
// Sum of two values over the block (blockDim.x a multiple of 32, at most 1024).
template <typename A>
__device__ __forceinline__ void block_sum2(A& a, A& b) {
    __shared__ A sa[32], sb[32];
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_down_sync(0xffffffffu, a, o);
        b += __shfl_down_sync(0xffffffffu, b, o);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (lane == 0) { sa[warp] = a; sb[warp] = b; }
    __syncthreads();
    if (warp == 0) {
        a = lane < nwarps ? sa[lane] : A(0);
        b = lane < nwarps ? sb[lane] : A(0);
        for (int o = 16; o > 0; o >>= 1) {
            a += __shfl_down_sync(0xffffffffu, a, o);
            b += __shfl_down_sync(0xffffffffu, b, o);
        }
    }
}

// Called by every thread of block (s, c) after block_sum2: thread 0 stores this block's two
// partial sums; the last block of channel c to arrive gets true (in all its threads) and may
// read all S partials of channel c. It must reset counter[c] to 0 for the next launch.
template <typename A>
__device__ __forceinline__ bool arrive_last(A a, A b, A* part, unsigned int* counter,
                                            unsigned int c, unsigned int C) {
    __shared__ bool last;
    unsigned int S = gridDim.x, s = blockIdx.x;
    if (threadIdx.x == 0) {
        part[c * S + s] = a;
        part[C * S + c * S + s] = b;
        __threadfence();
        last = atomicAdd(&counter[c], 1u) == S - 1;
    }
    __syncthreads();
    return last;
}

// For the last block of channel c (after arrive_last): the sums of the S partials of a and b,
// in float64.
template <typename A>
__device__ __forceinline__ void sum_partials(const A* part, unsigned int c, unsigned int C,
                                             double& sa, double& sb) {
    __threadfence();
    const volatile A* vp = part;
    unsigned int S = gridDim.x;
    sa = 0;
    sb = 0;
    for (unsigned int t = 0; t < S; ++t) { sa += vp[c * S + t]; sb += vp[C * S + c * S + t]; }
}

// From the shifted sums sa = sum(x - shift), sb = sum((x - shift)^2) over M values of channel
// c: writes stats[c] = mean, stats[C + c] = 1 / sqrt(biased var + eps) and, with
// update_running, the new running statistics (PyTorch's rule; running_var takes the unbiased
// variance). Returns mean and invstd as stored.
template <typename A>
__device__ __forceinline__ void finish_stats(double sa, double sb, A shift, unsigned int c,
                                             unsigned int C, unsigned int M, double eps,
                                             A* stats, int update_running, double momentum,
                                             const A* rmean, const A* rvar, A* rmean_out,
                                             A* rvar_out, A& mean, A& invstd) {
    double d = sa / M;                       // mean - shift
    double var = fmax(sb / M - d * d, 0.0);  // biased variance, as used to normalise
    mean = (A)((double)shift + d);
    invstd = (A)(1.0 / sqrt(var + eps));
    stats[c] = mean;
    stats[C + c] = invstd;
    if (update_running) {
        rmean_out[c] = (A)((1.0 - momentum) * (double)rmean[c] + momentum * ((double)shift + d));
        rvar_out[c] = (A)((1.0 - momentum) * (double)rvar[c]
                          + momentum * var * ((double)M / (double)(M - 1)));
    }
}

// The gradient that reaches batch norm's output: gy, or with a fused ReLU gy where the saved
// output y > 0, else 0 (exactly the separate relu backward's mask).
template <int K>
__device__ __forceinline__ typename io<K>::A masked_grad(const typename io<K>::T* gy,
                                                         const typename io<K>::T* y, int relu,
                                                         size_t off) {
    typedef typename io<K>::A A;
    A g = io<K>::ld(gy[off]);
    return relu && !(io<K>::ld(y[off]) > A(0)) ? A(0) : g;
}

// Sums of channel c over slice s of j in [0, M), M = N * HW, element j = (n, i) = (j / HW, j % HW).
// Forward: a = sum(x - shift), b = sum((x - shift)^2), shift = x[0, c, 0]; the last block writes
// stats[c] = mean, stats[C + c] = 1 / sqrt(biased var + eps), and with update_running the new
// running statistics (the outputs may be the inputs: one thread reads, then writes). Doing that
// here saves the ~10 small launches per layer that the running-statistics arithmetic costs in
// CuPy.
template <int K>
__global__ void bn_stats(const typename io<K>::T* x, unsigned int C, unsigned int HW,
                         unsigned int M, unsigned int per, typename io<K>::A* part,
                         unsigned int* counter, double eps, typename io<K>::A* stats,
                         int update_running, double momentum, const typename io<K>::A* rmean,
                         const typename io<K>::A* rvar, typename io<K>::A* rmean_out,
                         typename io<K>::A* rvar_out, long long* batches, int count_batch) {
    typedef typename io<K>::A A;
    unsigned int c = blockIdx.y, s = blockIdx.x;
    A shift = io<K>::ld(x[(size_t)c * HW]);
    A a = 0, b = 0;
    unsigned int j1 = min(M, (s + 1) * per);
    for (unsigned int j = s * per + threadIdx.x; j < j1; j += blockDim.x) {
        unsigned int n = j / HW, i = j - n * HW;
        A v = io<K>::ld(x[((size_t)n * C + c) * HW + i]) - shift;
        a += v; b += v * v;
    }
    block_sum2(a, b);
    if (arrive_last(a, b, part, counter, c, C) && threadIdx.x == 0) {
        double sa, sb;
        sum_partials(part, c, C, sa, sb);
        A mean, invstd;
        finish_stats(sa, sb, shift, c, C, M, eps, stats, update_running, momentum, rmean, rvar,
                     rmean_out, rvar_out, mean, invstd);
        if (count_batch && c == 0) batches[0] += 1;  // the layer's num_batches_tracked
        counter[c] = 0;
    }
}

// y = (x - mean[c]) * invstd[c] * gamma[c] + beta[c] over all elements.
template <int K>
__global__ void bn_apply(const typename io<K>::T* x, const typename io<K>::A* mean,
                         const typename io<K>::A* invstd, const typename io<K>::A* gamma,
                         const typename io<K>::A* beta, typename io<K>::T* y,
                         unsigned int total, unsigned int C, unsigned int HW, int relu) {
    typedef typename io<K>::A A;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += gridDim.x * blockDim.x) {
        unsigned int c = (i / HW) % C;
        y[i] = io<K>::st(relu_if((io<K>::ld(x[i]) - mean[c]) * (invstd[c] * gamma[c]) + beta[c],
                                 relu));
    }
}

// Small channels (M <= ONE_BLOCK_MAX elements each): one block per channel computes the
// statistics and applies them in a single launch, as cuDNN's bn_fw_tr_1C11 does: at these sizes
// the host's launch cost, not the GPU, is the limit. Same arithmetic as bn_stats + bn_apply
// (shifted one-pass sums; mean and invstd rounded to A before the apply).
template <int K>
__global__ void bn_fwd_block(const typename io<K>::T* x, unsigned int C, unsigned int HW,
                             unsigned int M, double eps, typename io<K>::A* stats,
                             const typename io<K>::A* gamma, const typename io<K>::A* beta,
                             typename io<K>::T* y, int update_running, double momentum,
                             const typename io<K>::A* rmean, const typename io<K>::A* rvar,
                             typename io<K>::A* rmean_out, typename io<K>::A* rvar_out,
                             long long* batches, int count_batch, int relu) {
    typedef typename io<K>::A A;
    __shared__ A s_mean, s_scale;
    unsigned int c = blockIdx.x;
    A shift = io<K>::ld(x[(size_t)c * HW]);
    A a = 0, b = 0;
    for (unsigned int j = threadIdx.x; j < M; j += blockDim.x) {
        unsigned int n = j / HW, i = j - n * HW;
        A v = io<K>::ld(x[((size_t)n * C + c) * HW + i]) - shift;
        a += v; b += v * v;
    }
    block_sum2(a, b);
    if (threadIdx.x == 0) {
        A mean, invstd;
        finish_stats((double)a, (double)b, shift, c, C, M, eps, stats, update_running, momentum,
                     rmean, rvar, rmean_out, rvar_out, mean, invstd);
        if (count_batch && c == 0) batches[0] += 1;  // the layer's num_batches_tracked
        s_mean = mean;
        s_scale = invstd * gamma[c];
    }
    __syncthreads();
    A mean = s_mean, scale = s_scale, bc = beta[c];
    for (unsigned int j = threadIdx.x; j < M; j += blockDim.x) {
        unsigned int n = j / HW, i = j - n * HW;
        size_t off = ((size_t)n * C + c) * HW + i;
        y[off] = io<K>::st(relu_if((io<K>::ld(x[off]) - mean) * scale + bc, relu));
    }
}

// Backward counterpart of bn_fwd_block (bnb_stats + bnb_apply in one launch).
template <int K>
__global__ void bnb_block(const typename io<K>::T* x, const typename io<K>::T* gy,
                          const typename io<K>::A* mean, const typename io<K>::A* invstd,
                          const typename io<K>::A* gamma, unsigned int C, unsigned int HW,
                          unsigned int M, typename io<K>::A* ggamma, typename io<K>::A* gbeta,
                          typename io<K>::T* gx, typename io<K>::A inv_m,
                          const typename io<K>::T* y, int relu) {
    typedef typename io<K>::A A;
    __shared__ A s_gg, s_gb;
    unsigned int c = blockIdx.x;
    A mu = mean[c];
    A a = 0, b = 0;
    for (unsigned int j = threadIdx.x; j < M; j += blockDim.x) {
        unsigned int n = j / HW, i = j - n * HW;
        size_t off = ((size_t)n * C + c) * HW + i;
        A g = masked_grad<K>(gy, y, relu, off);
        a += g; b += g * (io<K>::ld(x[off]) - mu);
    }
    block_sum2(a, b);
    if (threadIdx.x == 0) {
        A gg = (A)((double)b * (double)invstd[c]), gb = a;
        ggamma[c] = gg;
        gbeta[c] = gb;
        s_gg = gg;
        s_gb = gb;
    }
    __syncthreads();
    A is = invstd[c], gg = s_gg, gb = s_gb, gam = gamma[c];
    for (unsigned int j = threadIdx.x; j < M; j += blockDim.x) {
        unsigned int n = j / HW, i = j - n * HW;
        size_t off = ((size_t)n * C + c) * HW + i;
        A xhat = (io<K>::ld(x[off]) - mu) * is;
        A g = masked_grad<K>(gy, y, relu, off) - (gb + xhat * gg) * inv_m;
        gx[off] = io<K>::st(gam * is * g);
    }
}

// out[c] = sum of x over (N, H, W) for each channel c (a conv bias's gradient): one launch, a
// grid of S slices x C channels, the last block of each channel adding the slices in float64.
template <int K>
__global__ void ch_sum(const typename io<K>::T* x, unsigned int C, unsigned int HW,
                       unsigned int M, unsigned int per, typename io<K>::A* part,
                       unsigned int* counter, typename io<K>::T* out) {
    typedef typename io<K>::A A;
    unsigned int c = blockIdx.y, s = blockIdx.x;
    A a = 0, unused = 0;
    unsigned int j1 = min(M, (s + 1) * per);
    for (unsigned int j = s * per + threadIdx.x; j < j1; j += blockDim.x) {
        unsigned int n = j / HW, i = j - n * HW;
        a += io<K>::ld(x[((size_t)n * C + c) * HW + i]);
    }
    block_sum2(a, unused);
    if (arrive_last(a, unused, part, counter, c, C) && threadIdx.x == 0) {
        double sa, sb_unused;
        sum_partials(part, c, C, sa, sb_unused);
        out[c] = io<K>::st((A)sa);
        counter[c] = 0;
    }
}

// Inference: y = (x - rmean[c]) / sqrt(rvar[c] + eps) * gamma[c] + beta[c].
template <int K>
__global__ void bn_infer(const typename io<K>::T* x, const typename io<K>::A* rmean,
                         const typename io<K>::A* rvar, const typename io<K>::A* gamma,
                         const typename io<K>::A* beta, typename io<K>::A eps,
                         typename io<K>::T* y, unsigned int total, unsigned int C,
                         unsigned int HW, int relu) {
    typedef typename io<K>::A A;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += gridDim.x * blockDim.x) {
        unsigned int c = (i / HW) % C;
        A scale = gamma[c] / sqrt(rvar[c] + eps);
        y[i] = io<K>::st(relu_if((io<K>::ld(x[i]) - rmean[c]) * scale + beta[c], relu));
    }
}

// Backward sums: a = sum(gy), b = sum(gy * (x - mean[c])); the last block writes
// ggamma[c] = b * invstd[c], gbeta[c] = a (separate pointers: they may be the parameters'
// gradient buffers).
template <int K>
__global__ void bnb_stats(const typename io<K>::T* x, const typename io<K>::T* gy,
                          const typename io<K>::A* mean, const typename io<K>::A* invstd,
                          unsigned int C, unsigned int HW, unsigned int M, unsigned int per,
                          typename io<K>::A* part, unsigned int* counter,
                          typename io<K>::A* ggamma, typename io<K>::A* gbeta,
                          const typename io<K>::T* y, int relu) {
    typedef typename io<K>::A A;
    unsigned int c = blockIdx.y, s = blockIdx.x;
    A mu = mean[c];
    A a = 0, b = 0;
    unsigned int j1 = min(M, (s + 1) * per);
    for (unsigned int j = s * per + threadIdx.x; j < j1; j += blockDim.x) {
        unsigned int n = j / HW, i = j - n * HW;
        size_t off = ((size_t)n * C + c) * HW + i;
        A g = masked_grad<K>(gy, y, relu, off);
        a += g; b += g * (io<K>::ld(x[off]) - mu);
    }
    block_sum2(a, b);
    if (arrive_last(a, b, part, counter, c, C) && threadIdx.x == 0) {
        double sa, sb;
        sum_partials(part, c, C, sa, sb);
        ggamma[c] = (A)(sb * (double)invstd[c]);
        gbeta[c] = (A)sa;
        counter[c] = 0;
    }
}

// gx = gamma * invstd * (gy - gbeta / M - xhat * ggamma / M), xhat = (x - mean) * invstd.
template <int K>
__global__ void bnb_apply(const typename io<K>::T* x, const typename io<K>::T* gy,
                          const typename io<K>::A* mean, const typename io<K>::A* invstd,
                          const typename io<K>::A* gamma, const typename io<K>::A* ggamma,
                          const typename io<K>::A* gbeta, typename io<K>::T* gx,
                          unsigned int total, unsigned int C, unsigned int HW,
                          typename io<K>::A inv_m, const typename io<K>::T* y, int relu) {
    typedef typename io<K>::A A;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += gridDim.x * blockDim.x) {
        unsigned int c = (i / HW) % C;
        A is = invstd[c];
        A xhat = (io<K>::ld(x[i]) - mean[c]) * is;
        A g = masked_grad<K>(gy, y, relu, i) - (gbeta[c] + xhat * ggamma[c]) * inv_m;
        gx[i] = io<K>::st(gamma[c] * is * g);
    }
}
"""

# ---------------------------------------------------------------------------------------------
# Element-wise kernels over 16-byte vectors (8 bfloat16/float16, 4 float32 or 2 float64 values per
# load and store). One value per thread, as CuPy's kernels and ElementwiseKernel do, reached about
# a quarter of PyTorch's bandwidth on VGG-16's bfloat16 activations (profile_step.py: ReLU 4.1 ms
# a step vs 0.8). Operands must be C-contiguous and 16-byte aligned, with fewer than 2**31
# elements; the wrappers check and otherwise take the one-value-per-thread path.
# ---------------------------------------------------------------------------------------------

_VEC_SOURCE = _IO_HEADER + r"""
template <int K> struct vec {
    typedef typename io<K>::T T;
    static const int V = 16 / sizeof(T);
    union U { uint4 u; T t[16 / sizeof(T)]; };
};

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

_VEC_KERNELS = ("v_relu", "v_relu_bwd", "v_bias_add", "v_add", "v_from_f32", "v_to_f32")
_VEC_THREADS = 256


def _kind_of(a):
    """The kernels' dtype index K of an array (see _IO_HEADER), or None for other dtypes."""
    if _is_bf16(a):
        return 2
    return _FLOAT_KIND.get(a.dtype.char)


_FLOAT_KIND = {"f": 0, "e": 1, "d": 3}  # dtype.char (fast) -> K; bfloat16 is 2
KERNEL_DTYPES = ("float32", "float16", "bfloat16", "float64")  # by K


_sm_counts: dict = {}  # device id -> multiprocessor count


def _sm_count(device_id):
    n = _sm_counts.get(device_id)
    if n is None:
        n = _sm_counts[device_id] = _cp().cuda.Device(device_id).attributes["MultiProcessorCount"]
    return n


def _vectorizable(*arrays):
    """K if the arrays are non-empty, share a float dtype and shape, are C-contiguous, 16-byte
    aligned and small enough for 32-bit indices; else None."""
    first = arrays[0]
    kind = _kind_of(first)
    if kind is None or first.size == 0 or first.size >= 2**31:
        return None
    for a in arrays:
        if a.dtype != first.dtype or a.shape != first.shape or not a.flags.c_contiguous \
                or a.data.ptr % 16:
            return None
    return kind


def _launch_vec(name, kind, like, *args):
    """Launch vector kernel ``name`` over ``like``'s elements: at most 16 blocks per SM (grid-
    stride beyond that), at least ~8 values or vectors per thread."""
    blocks = max(1, min(16 * _sm_count(like.device.id), -(-like.size // (_VEC_THREADS * 8))))
    _vec_fn(name, kind)((blocks,), (_VEC_THREADS,), args)


def relu(x):
    """max(x, 0) (NaN stays NaN), one 16-byte vector per thread where the layout allows."""
    cp = _cp()
    kind = _vectorizable(x)
    if kind is None:
        return cp.maximum(x, 0)
    y = cp.empty_like(x)
    _launch_vec("v_relu", kind, x, _io(x), _io(y), np.uint32(x.size))
    return y


def add_channel_bias_(y, b):
    """y += b[c] over channel axis 1 of y (N, C, ...), in place; b (C,). Returns y. Vectorised
    for a contiguous, aligned y and a bias of its dtype; otherwise CuPy's broadcast add."""
    if y.ndim < 2 or b.shape != (y.shape[1],):
        raise ValueError(f"add_channel_bias_: expected y (N, C, ...) and bias (C,), got y "
                         f"{y.shape} and bias {b.shape}")
    kind = _vectorizable(y)
    if kind is None or b.dtype != y.dtype or not b.flags.c_contiguous:
        y += b.reshape((1, -1) + (1,) * (y.ndim - 2))
        return y
    hw = int(np.prod(y.shape[2:])) if y.ndim > 2 else 1
    _launch_vec("v_bias_add", kind, y, _io(y), _io(b), np.uint32(y.size),
                np.uint32(y.shape[1]), np.uint32(hw))
    return y


def add(a, b, relu_after=False):
    """a + b for two arrays of one shape and dtype (a new array); ``relu_after``: max(a + b, 0),
    NaN kept, in the same pass."""
    cp = _cp()
    kind = _vectorizable(a, b)
    if kind is None:
        return relu(a + b) if relu_after else a + b
    out = cp.empty_like(a)
    _launch_vec("v_add", kind, a, _io(a), _io(b), _io(out), np.uint32(a.size),
                np.int32(bool(relu_after)))
    return out


def cast_into(dst, src):
    """dst[...] = src for contiguous arrays of one shape, one float32 and the other float16,
    bfloat16 or float64: one launch (CuPy's copy costs more host time, and mixed precision does
    this for every weight and gradient). Other combinations go through CuPy."""
    if dst.shape != src.shape:
        raise ValueError(f"cast_into: shapes differ: {dst.shape} and {src.shape}")
    f32 = np.dtype(np.float32)
    if not (dst.flags.c_contiguous and src.flags.c_contiguous) or dst.size == 0:
        dst[...] = src
    elif src.dtype == f32 and dst.dtype != f32 and _kind_of(dst) is not None:
        _launch_vec("v_from_f32", _kind_of(dst), dst, src, _io(dst), np.uint64(dst.size))
    elif dst.dtype == f32 and src.dtype != f32 and _kind_of(src) is not None:
        _launch_vec("v_to_f32", _kind_of(src), dst, _io(src), dst, np.uint64(dst.size))
    else:
        dst[...] = src
    return dst


def channel_sum(x):
    """Sum over every axis but 1 of x (N, C, ...) -> (C,) in x's dtype (accumulated in float32,
    float64 for float64): a conv bias's gradient, in one launch."""
    cp = _cp()
    if x.ndim == 3:  # (N, C, L): the geometry below takes (N, C) or (N, C, H, W)
        x = x.reshape(x.shape + (1,))
    geom = _geom("channel_sum", x)
    x = _contiguous(cp, x)
    counters, part = _scratch_for(cp, geom)
    out = cp.empty(geom.c, dtype=x.dtype)
    _bn_fn("ch_sum", geom.kind)(geom.reduce_grid, (_THREADS,),
                                (_io(x), *geom.c_hw_m_per, part, counters, _io(out)))
    return out


_BN_KERNELS = ("bn_stats", "bn_apply", "bn_infer", "bnb_stats", "bnb_apply", "bn_fwd_block",
               "bnb_block", "ch_sum")
# Channels of at most this many elements take the one-launch kernels (one block per channel).
ONE_BLOCK_MAX = 32768
_ONE_BLOCK_THREADS = 512
_THREADS = 256
_functions: dict = {}   # (module, kernel name, kind) -> cupy Function
_geometry: dict = {}    # (shape, dtype, device) -> _BNGeometry
_scratch: dict = {}     # (device, stream) -> (uint32 arrival counters, partial-sum bytes)


# The raw-kernel modules: name -> (source, kernel templates), each compiled on first use for
# all four dtype kinds K.
_RAW_MODULES = {"bn": (_BN_SOURCE, _BN_KERNELS), "vec": (_VEC_SOURCE, _VEC_KERNELS)}


def _raw_fn(module, name, kind):
    """Kernel template ``name`` of raw module ``module`` (see _RAW_MODULES) for dtype kind K."""
    f = _functions.get((module, name, kind))
    if f is None:
        mod = _kernels.get(module)
        if mod is None:
            source, kernels = _RAW_MODULES[module]
            names = [f"{k}<{i}>" for k in kernels for i in range(4)]
            mod = _kernels[module] = _cp().RawModule(code=source, name_expressions=names)
        f = _functions[(module, name, kind)] = mod.get_function(f"{name}<{kind}>")
    return f


def _bn_fn(name, kind):
    return _raw_fn("bn", name, kind)


def _vec_fn(name, kind):
    return _raw_fn("vec", name, kind)


class _BNGeometry:
    """x (N, C, H, W) or (N, C) seen as (N, C, HW), with its launch geometry and the kernels'
    scalar arguments, computed once per (shape, dtype, device)."""

    def __init__(self, where, x, device_id):
        if x.ndim not in (2, 4):
            raise ValueError(f"{where}: expected input (N, C, H, W) or (N, C), got {x.shape}")
        self.kind = _kind_of(x)
        if self.kind is None:
            raise TypeError(f"{where}: dtype {x.dtype.name} not supported; expected one of "
                            f"{sorted(KERNEL_DTYPES)}")
        n, self.c = x.shape[0], x.shape[1]
        hw = int(x.shape[2] * x.shape[3]) if x.ndim == 4 else 1
        m = n * hw  # elements per channel
        if m < 1 or self.c < 1:
            raise ValueError(f"{where}: empty input {x.shape}")
        if x.size >= 2**31:
            raise ValueError(f"{where}: input {x.shape} has {x.size} elements; the fused "
                             f"kernels index with 32 bits (at most 2**31 - 1): split the batch")
        self.acc = np.dtype(np.float64 if self.kind == 3 else np.float32)
        sms = _sm_count(device_id)
        # Slices per channel: enough blocks to fill the GPU (~8 per SM), none under ~2K elements.
        self.slices = max(1, min(max(1, 8 * sms // self.c), -(-m // 2048)))
        per = -(-m // self.slices)
        self.reduce_grid = (self.slices, self.c)
        self.apply_grid = (max(1, min(-(-x.size // _THREADS), 32 * sms)),)
        u32 = np.uint32
        self.c_hw_m_per = (u32(self.c), u32(hw), u32(m), u32(per))
        self.total_c_hw = (u32(x.size), u32(self.c), u32(hw))
        self.inv_m = self.acc.type(1.0 / m)
        self.part_bytes = 2 * self.c * self.slices * self.acc.itemsize
        self.one_block = m <= ONE_BLOCK_MAX  # one launch per direction (see bn_fwd_block)
        self.c_hw_m = (u32(self.c), u32(hw), u32(m))


def _geom(where, x):
    device_id = x.device.id
    key = (x.shape, x.dtype, device_id)
    g = _geometry.get(key)
    if g is None:
        g = _geometry[key] = _BNGeometry(where, x, device_id)
    return g


def _scratch_for(cp, geom):
    """Arrival counters (all zero between launches) and partial-sum space for this stream.
    Reused by every batch-norm call on the stream: stream order keeps the uses apart."""
    key = (cp.cuda.runtime.getDevice(), cp.cuda.get_current_stream().ptr)
    counters, part = _scratch.get(key, (None, None))
    if counters is None or counters.size < geom.c or part.nbytes < geom.part_bytes:
        counters = cp.zeros(max(geom.c, 0 if counters is None else counters.size), cp.uint32)
        part = cp.empty(max(geom.part_bytes, 0 if part is None else part.nbytes), cp.uint8)
        _scratch[key] = (counters, part)
    return counters, part


def _per_channel(a, geom, name, where):
    """A (C,) parameter as a contiguous array of the accumulation dtype (no copy if it is)."""
    if a.shape != (geom.c,):
        raise ValueError(f"{where}: {name} has shape {a.shape}, expected ({geom.c},)")
    if a.dtype == geom.acc and a.flags.c_contiguous:
        return a
    return _cp().ascontiguousarray(a, dtype=geom.acc)


def _contiguous(cp, a):
    return a if a.flags.c_contiguous else cp.ascontiguousarray(a)


def batch_norm_train(x, gamma, beta, eps, running_mean=None, running_var=None, momentum=0.1,
                     relu=False, num_batches_tracked=None):
    """Normalise with batch statistics: returns (y, mean, invstd, new_running_mean,
    new_running_var); mean/invstd of shape (C,), invstd = 1/sqrt(biased var + eps); y has x's
    dtype. With running statistics given, the new ones (PyTorch's momentum rule, unbiased
    variance) come from the same launch, written in place into the given arrays when they are
    contiguous arrays of the statistics' dtype (then those very arrays are returned), else into
    fresh arrays of the given ones' dtype; without them, None.

    ``relu``: y = max(normalised, 0), the following ReLU in the same pass (its backward is
    ``batch_norm_backward(..., relu_y=y)``). ``num_batches_tracked``: the layer's int64 batch
    counter, incremented by the same launch (one launch less per layer and step)."""
    cp = _cp()
    geom = _geom("batch_norm_train", x)
    x = _contiguous(cp, x)
    gamma = _per_channel(gamma, geom, "gamma", "batch_norm_train")
    beta = _per_channel(beta, geom, "beta", "batch_norm_train")
    stats = cp.empty(2 * geom.c, dtype=geom.acc)  # mean, invstd
    y = cp.empty_like(x)
    xi = _io(x)
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm_train: give both running_mean and running_var, or neither")
    if running_mean is not None:
        rm = _per_channel(running_mean, geom, "running_mean", "batch_norm_train")
        rv = _per_channel(running_var, geom, "running_var", "batch_norm_train")
        # In place when the buffers are already contiguous statistics arrays (one thread reads
        # and then writes each channel's value); else into copies returned to the caller.
        rm_out = rm if rm is running_mean else cp.empty_like(rm)
        rv_out = rv if rv is running_var else cp.empty_like(rv)
        running = (np.int32(1), np.float64(momentum), rm, rv, rm_out, rv_out)
    else:  # never read or written by the kernel (update flag 0)
        running = (np.int32(0), np.float64(0), stats, stats, stats, stats)
    batches = _batch_counter(num_batches_tracked, stats)
    relu = np.int32(bool(relu))
    if geom.one_block:
        _bn_fn("bn_fwd_block", geom.kind)((geom.c,), (_ONE_BLOCK_THREADS,),
                                          (xi, *geom.c_hw_m, np.float64(eps), stats, gamma, beta,
                                           _io(y), *running, *batches, relu))
    else:
        counters, part = _scratch_for(cp, geom)
        _bn_fn("bn_stats", geom.kind)(geom.reduce_grid, (_THREADS,),
                                      (xi, *geom.c_hw_m_per, part, counters, np.float64(eps),
                                       stats, *running, *batches))
        _bn_fn("bn_apply", geom.kind)(geom.apply_grid, (_THREADS,),
                                      (xi, stats[:geom.c], stats[geom.c:], gamma, beta, _io(y),
                                       *geom.total_c_hw, relu))
    mean, invstd = stats[:geom.c], stats[geom.c:]
    if running_mean is None:
        return y, mean, invstd, None, None
    return (y, mean, invstd, rm_out.astype(running_mean.dtype, copy=False),
            rv_out.astype(running_var.dtype, copy=False))


def batch_norm_backward(x, gy, gamma, mean, invstd, ggamma_out=None, gbeta_out=None,
                        relu_y=None):
    """Gradients of batch_norm_train given its saved mean and invstd: returns (gx, ggamma,
    gbeta). x and gy share shape and dtype; gx has that dtype, ggamma/gbeta have gamma's.
    ``ggamma_out``/``gbeta_out``: arrays to write those into (the parameters' zeroed gradient
    buffers), used when contiguous (C,) of the statistics' dtype; else fresh arrays.
    ``relu_y``: the output of a forward with ``relu=True``; gy is then the gradient after the
    fused ReLU and is masked by relu_y > 0 inside the kernels."""
    cp = _cp()
    geom = _geom("batch_norm_backward", x)
    if gy.shape != x.shape or gy.dtype != x.dtype:
        raise ValueError(f"batch_norm_backward: gradient {gy.shape} {gy.dtype.name} must match "
                         f"input {x.shape} {x.dtype.name}")
    x, gy = _contiguous(cp, x), _contiguous(cp, gy)
    if relu_y is None:
        mask = (gy, np.int32(0))  # never read
    else:
        if relu_y.shape != x.shape or relu_y.dtype != x.dtype:
            raise ValueError(f"batch_norm_backward: relu_y {relu_y.shape} {relu_y.dtype.name} "
                             f"must match input {x.shape} {x.dtype.name}")
        mask = (_io(_contiguous(cp, relu_y)), np.int32(1))
    g_acc = _per_channel(gamma, geom, "gamma", "batch_norm_backward")
    mean = _per_channel(mean, geom, "mean", "batch_norm_backward")
    invstd = _per_channel(invstd, geom, "invstd", "batch_norm_backward")
    ggamma = _out_or_new(cp, ggamma_out, geom)
    gbeta = _out_or_new(cp, gbeta_out, geom)
    gx = cp.empty_like(x)
    xi, gyi = _io(x), _io(gy)
    if geom.one_block:
        _bn_fn("bnb_block", geom.kind)((geom.c,), (_ONE_BLOCK_THREADS,),
                                       (xi, gyi, mean, invstd, g_acc, *geom.c_hw_m, ggamma, gbeta,
                                        _io(gx), geom.inv_m, *mask))
    else:
        counters, part = _scratch_for(cp, geom)
        _bn_fn("bnb_stats", geom.kind)(geom.reduce_grid, (_THREADS,),
                                       (xi, gyi, mean, invstd, *geom.c_hw_m_per, part, counters,
                                        ggamma, gbeta, *mask))
        _bn_fn("bnb_apply", geom.kind)(geom.apply_grid, (_THREADS,),
                                       (xi, gyi, mean, invstd, g_acc, ggamma, gbeta, _io(gx),
                                        *geom.total_c_hw, geom.inv_m, *mask))
    return gx, ggamma.astype(gamma.dtype, copy=False), gbeta.astype(gamma.dtype, copy=False)


def _batch_counter(counter, unused):
    """Kernel arguments (pointer, flag) that make the statistics kernel increment ``counter`` (a
    layer's num_batches_tracked): the kernel does it for a contiguous int64 array of one element;
    any other counter is incremented here, and (``unused``, 0) tells the kernel to leave it."""
    if counter is None:
        return unused, np.int32(0)
    if counter.dtype != np.int64 or counter.size != 1 or not counter.flags.c_contiguous:
        counter += 1
        return unused, np.int32(0)
    return counter, np.int32(1)


def _out_or_new(cp, out, geom):
    """``out`` if the kernels can write a (C,) statistic into it, else a new array."""
    if out is not None and out.shape == (geom.c,) and out.dtype == geom.acc \
            and out.flags.c_contiguous:
        return out
    return cp.empty(geom.c, dtype=geom.acc)


def batch_norm_infer(x, gamma, beta, running_mean, running_var, eps, relu=False):
    """Normalise with running statistics (eval mode); y has x's dtype; ``relu``: then max(y, 0)
    in the same pass."""
    cp = _cp()
    geom = _geom("batch_norm_infer", x)
    x = _contiguous(cp, x)
    args = [_per_channel(a, geom, n, "batch_norm_infer") for a, n in
            ((running_mean, "running_mean"), (running_var, "running_var"), (gamma, "gamma"),
             (beta, "beta"))]
    y = cp.empty_like(x)
    _bn_fn("bn_infer", geom.kind)(geom.apply_grid, (_THREADS,),
                                  (_io(x), *args, geom.acc.type(eps), _io(y), *geom.total_c_hw,
                                   np.int32(bool(relu))))
    return y


# ---------------------------------------------------------------------------------------------
# Optimizer updates, in place over flat buffers (one launch for all parameters).
# ---------------------------------------------------------------------------------------------

def _check_flat(where, p, *others):
    for name, a in others:
        if a.shape != p.shape:
            raise ValueError(f"{where}: {name} has shape {a.shape}, expected the parameter's "
                             f"shape {p.shape}")


# The step's changing hyper-parameters (learning rate; Adam's bias-corrected step size) reach
# the kernels through a small float64 device array, not as kernel arguments: a CUDA graph of the
# training step (mpinet.cuda_graph) bakes kernel arguments in at capture, while it reads the
# array at every replay. The optimizer writes the array (``write_hyper_``, one tiny launch)
# before each step; inside a capture it does not (the graph runner writes it before replays).
HYPER_SIZE = 4


def write_hyper_(hyper, values) -> None:
    """hyper[:len(values)] = values, by one launch with the values as kernel arguments (no host
    copy, so nothing synchronises)."""
    v = [float(x) for x in values] + [0.0] * (HYPER_SIZE - len(values))
    k = _elementwise("write_hyper", "float64 a, float64 b, float64 c, float64 d",
                     "raw float64 h", "h[0] = a; h[1] = b; h[2] = c; h[3] = d;")
    k(*v, hyper, size=1)


def _hyper_or_new(hyper, values):
    """The caller's hyper array (already written), or a new one holding ``values``."""
    if hyper is not None:
        return hyper
    if _cp().cuda.get_current_stream().is_capturing():
        raise RuntimeError("an optimizer update inside a CUDA-graph capture needs its "
                           "hyper-parameters in a device array (hyper=...); the Optimizer "
                           "classes pass one")
    hyper = _cp().empty(HYPER_SIZE, dtype=np.float64)
    write_hyper_(hyper, values)
    return hyper


def sgd_hyper(lr):
    """SGD's device hyper-parameters for a step at learning rate ``lr``."""
    return (float(lr),)


def sgd_update_(p, g, buf, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                first_step=False, hyper=None):
    """PyTorch's SGD step, in place on p (and buf):
        d = g + weight_decay * p
        buf = d on the first step, else momentum * buf + (1 - dampening) * d
        p -= lr * (d + momentum * buf if nesterov else buf)
    With momentum 0, buf may be None and p -= lr * d. Pass first_step=True on the first step
    (PyTorch starts buf as a copy of d, which differs from a zero buffer when dampening != 0).
    ``hyper``: a device array holding ``sgd_hyper(lr)``, read at run time; None: made from lr."""
    _check_float("sgd_update_", p, g)
    hp = _hyper_or_new(hyper, sgd_hyper(lr))
    if momentum == 0:
        _check_flat("sgd_update_", p, ("grad", g))
        k = _elementwise("sgd_plain", "G g, raw float64 hp, float64 wd", "P p",
                         "typedef mpn_acc<P>::type A; A pv = mpn_ld<A>(p); "
                         "mpn_put(p, pv - A(hp[0]) * (mpn_ld<A>(g) + A(wd) * pv));")
        k(_io(g), hp, float(weight_decay), _io(p))
        return p
    if buf is None:
        raise ValueError("sgd_update_: momentum != 0 needs a momentum buffer, got None")
    _check_flat("sgd_update_", p, ("grad", g), ("momentum buffer", buf))
    k = _elementwise("sgd_momentum",
                     "G g, raw float64 hp, float64 mom, float64 one_m_damp, float64 wd, "
                     "int32 nesterov, int32 first", "P p, B buf",
                     "typedef mpn_acc<P>::type A; A pv = mpn_ld<A>(p); "
                     "A d = mpn_ld<A>(g) + A(wd) * pv; "
                     "A b = first ? d : A(mom) * mpn_ld<A>(buf) + A(one_m_damp) * d; "
                     "mpn_put(buf, b); "
                     "mpn_put(p, pv - A(hp[0]) * (nesterov ? d + A(mom) * b : b));")
    # 1 - dampening in float64 on the host, as PyTorch does (1 - 0.999f in float32 is 1e-5 off)
    k(_io(g), hp, float(momentum), 1.0 - float(dampening), float(weight_decay),
      int(bool(nesterov)), int(bool(first_step)), _io(p), _io(buf))
    return p


def adam_hyper(lr, beta1, beta2, weight_decay, step):
    """Adam's device hyper-parameters for update number ``step`` (1-based): (decoupled decay
    factor 1 - lr * weight_decay, step size lr / (1 - beta1**step), sqrt(1 - beta2**step)).
    Combined in float64 on the host, as PyTorch does."""
    if step < 1:
        raise ValueError(f"adam_update_: step must be >= 1 (count including this update), "
                         f"got {step}")
    return (1.0 - lr * weight_decay, lr / (1.0 - beta1 ** step),
            math.sqrt(1.0 - beta2 ** step))


def adam_update_(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, decoupled, hyper=None):
    """PyTorch's Adam (decoupled=False) / AdamW (decoupled=True) step, in place on p, m, v.
    ``step`` is the 1-based step count after this update (for bias correction). ``hyper``: a
    device array holding ``adam_hyper(lr, beta1, beta2, weight_decay, step)``, read at run
    time; None: made from the arguments."""
    _check_float("adam_update_", p, g, m, v)
    _check_flat("adam_update_", p, ("grad", g), ("exp_avg", m), ("exp_avg_sq", v))
    hp = _hyper_or_new(hyper, adam_hyper(lr, beta1, beta2, weight_decay, step))
    k = _elementwise("adam",
                     "G g, raw float64 hp, float64 wd, float64 b1, float64 one_m_b1, float64 b2, "
                     "float64 one_m_b2, float64 eps, int32 decoupled", "P p, M m, V v",
                     "typedef mpn_acc<P>::type A; A pv = mpn_ld<A>(p); A gv = mpn_ld<A>(g); "
                     "if (decoupled) pv = pv * A(hp[0]); else gv = gv + A(wd) * pv; "
                     "A mv = A(b1) * mpn_ld<A>(m) + A(one_m_b1) * gv; "
                     "A vv = A(b2) * mpn_ld<A>(v) + A(one_m_b2) * gv * gv; "
                     "mpn_put(m, mv); mpn_put(v, vv); "
                     "mpn_put(p, pv - A(hp[1]) * mv / (sqrt(vv) / A(hp[2]) + A(eps)));")
    # 1 - beta in float64 on the host, as PyTorch does: 1 - beta2 in float32 is 1e-5 off,
    # which shows in v.
    k(_io(g), hp, float(weight_decay), float(beta1), 1.0 - beta1, float(beta2), 1.0 - beta2,
      float(eps), int(bool(decoupled)), _io(p), _io(m), _io(v))
    return p
