"""Fused CuPy kernels for activation gradients, GELU, batch norm and optimizer updates.

One kernel (or, for batch norm, one short fixed sequence) where the plain ``xp`` version launches
several: host launch overhead (~9 us a launch) is what a ResNet step on a fast GPU runs out of.
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
_sm_count: dict = {}  # device id -> multiprocessor count

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


def _is_bf16(a) -> bool:
    return a.dtype.name == "bfloat16"


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
    return _unary_grad("relu_bwd", "relu_backward", y, gy, "yv > A(0) ? g : A(0)")


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
# Batch norm: per-channel statistics over (N, H, W) of x (N, C, H, W), or over N of x (N, C).
# Three launches a direction: partial sums over S slices of each channel (grid S x C), a
# C-thread finalize that combines the slices in float64, and an elementwise apply.
# Forward sums are shifted by each channel's first element, so the one-pass variance does not
# cancel catastrophically when |mean| >> std.
# ---------------------------------------------------------------------------------------------

_BN_SOURCE = r"""
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

// Block (s, c) sums channel c's elements j in slice s of [0, M), M = N * HW:
// p1 = sum(x - shift), p2 = sum((x - shift)^2), shift = x[0, c, 0].
template <int K>
__global__ void bn_partial(const typename io<K>::T* x, unsigned int C, unsigned int HW,
                           unsigned int M, unsigned int per,
                           typename io<K>::A* p1, typename io<K>::A* p2) {
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
    if (threadIdx.x == 0) { p1[c * gridDim.x + s] = a; p2[c * gridDim.x + s] = b; }
}

template <int K>
__global__ void bn_finalize(const typename io<K>::T* x, const typename io<K>::A* p1,
                            const typename io<K>::A* p2, unsigned int C, unsigned int HW,
                            unsigned int S, double M, double eps,
                            typename io<K>::A* mean, typename io<K>::A* invstd) {
    unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double a = 0, b = 0;
    for (unsigned int s = 0; s < S; ++s) { a += p1[c * S + s]; b += p2[c * S + s]; }
    double d = a / M;                       // mean - shift
    double var = fmax(b / M - d * d, 0.0);  // biased variance, as used to normalise
    mean[c] = (typename io<K>::A)((double)io<K>::ld(x[(size_t)c * HW]) + d);
    invstd[c] = (typename io<K>::A)(1.0 / sqrt(var + eps));
}

// y = (x - mean[c]) * invstd[c] * gamma[c] + beta[c] over all elements.
template <int K>
__global__ void bn_apply(const typename io<K>::T* x, const typename io<K>::A* mean,
                         const typename io<K>::A* invstd, const typename io<K>::A* gamma,
                         const typename io<K>::A* beta, typename io<K>::T* y,
                         unsigned int total, unsigned int C, unsigned int HW) {
    typedef typename io<K>::A A;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += gridDim.x * blockDim.x) {
        unsigned int c = (i / HW) % C;
        A scale = invstd[c] * gamma[c];
        y[i] = io<K>::st((io<K>::ld(x[i]) - mean[c]) * scale + beta[c]);
    }
}

// Inference: y = (x - rmean[c]) / sqrt(rvar[c] + eps) * gamma[c] + beta[c].
template <int K>
__global__ void bn_infer(const typename io<K>::T* x, const typename io<K>::A* rmean,
                         const typename io<K>::A* rvar, const typename io<K>::A* gamma,
                         const typename io<K>::A* beta, typename io<K>::A eps,
                         typename io<K>::T* y, unsigned int total, unsigned int C,
                         unsigned int HW) {
    typedef typename io<K>::A A;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += gridDim.x * blockDim.x) {
        unsigned int c = (i / HW) % C;
        A scale = gamma[c] / sqrt(rvar[c] + eps);
        y[i] = io<K>::st((io<K>::ld(x[i]) - rmean[c]) * scale + beta[c]);
    }
}

// Backward partials: p1 = sum(gy), p2 = sum(gy * (x - mean[c])).
template <int K>
__global__ void bnb_partial(const typename io<K>::T* x, const typename io<K>::T* gy,
                            const typename io<K>::A* mean, unsigned int C, unsigned int HW,
                            unsigned int M, unsigned int per,
                            typename io<K>::A* p1, typename io<K>::A* p2) {
    typedef typename io<K>::A A;
    unsigned int c = blockIdx.y, s = blockIdx.x;
    A mu = mean[c];
    A a = 0, b = 0;
    unsigned int j1 = min(M, (s + 1) * per);
    for (unsigned int j = s * per + threadIdx.x; j < j1; j += blockDim.x) {
        unsigned int n = j / HW, i = j - n * HW;
        size_t off = ((size_t)n * C + c) * HW + i;
        A g = io<K>::ld(gy[off]);
        a += g; b += g * (io<K>::ld(x[off]) - mu);
    }
    block_sum2(a, b);
    if (threadIdx.x == 0) { p1[c * gridDim.x + s] = a; p2[c * gridDim.x + s] = b; }
}

// gbeta = sum(gy), ggamma = sum(gy * (x - mean)) * invstd.
template <int K>
__global__ void bnb_finalize(const typename io<K>::A* p1, const typename io<K>::A* p2,
                             const typename io<K>::A* invstd, unsigned int C, unsigned int S,
                             typename io<K>::A* ggamma, typename io<K>::A* gbeta) {
    unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double a = 0, b = 0;
    for (unsigned int s = 0; s < S; ++s) { a += p1[c * S + s]; b += p2[c * S + s]; }
    gbeta[c] = (typename io<K>::A)a;
    ggamma[c] = (typename io<K>::A)(b * (double)invstd[c]);
}

// gx = gamma * invstd * (gy - gbeta / M - xhat * ggamma / M), xhat = (x - mean) * invstd.
template <int K>
__global__ void bnb_apply(const typename io<K>::T* x, const typename io<K>::T* gy,
                          const typename io<K>::A* mean, const typename io<K>::A* invstd,
                          const typename io<K>::A* gamma, const typename io<K>::A* ggamma,
                          const typename io<K>::A* gbeta, typename io<K>::T* gx,
                          unsigned int total, unsigned int C, unsigned int HW,
                          typename io<K>::A inv_m) {
    typedef typename io<K>::A A;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += gridDim.x * blockDim.x) {
        unsigned int c = (i / HW) % C;
        A is = invstd[c];
        A xhat = (io<K>::ld(x[i]) - mean[c]) * is;
        A g = io<K>::ld(gy[i]) - gbeta[c] * inv_m - xhat * ggamma[c] * inv_m;
        gx[i] = io<K>::st(gamma[c] * is * g);
    }
}
"""

_BN_KERNELS = ("bn_partial", "bn_finalize", "bn_apply", "bn_infer", "bnb_partial",
               "bnb_finalize", "bnb_apply")
_BN_KIND = {"float32": 0, "float16": 1, "bfloat16": 2, "float64": 3}
_THREADS = 256


def _bn_module():
    mod = _kernels.get("bn")
    if mod is None:
        names = [f"{k}<{kind}>" for k in _BN_KERNELS for kind in range(4)]
        mod = _kernels["bn"] = _cp().RawModule(code=_BN_SOURCE, name_expressions=names)
    return mod


def _bn_fn(name, kind):
    return _bn_module().get_function(f"{name}<{kind}>")


def _sms(cp) -> int:
    dev = cp.cuda.Device().id
    n = _sm_count.get(dev)
    if n is None:
        n = _sm_count[dev] = cp.cuda.Device(dev).attributes["MultiProcessorCount"]
    return n


class _BNShape:
    """x (N, C, H, W) or (N, C) seen as (N, C, HW), with launch geometry for it."""

    def __init__(self, where, x):
        cp = _cp()
        if x.ndim not in (2, 4):
            raise ValueError(f"{where}: expected input (N, C, H, W) or (N, C), got {x.shape}")
        _check_float(where, x)
        if x.dtype.name not in _BN_KIND:
            raise TypeError(f"{where}: dtype {x.dtype.name} not supported; expected one of "
                            f"{sorted(_BN_KIND)}")
        self.n, self.c = x.shape[0], x.shape[1]
        self.hw = int(x.shape[2] * x.shape[3]) if x.ndim == 4 else 1
        self.m = self.n * self.hw       # elements per channel
        self.total = x.size
        if self.m < 1 or self.c < 1:
            raise ValueError(f"{where}: empty input {x.shape}")
        if self.total >= 2**31:
            raise ValueError(f"{where}: input {x.shape} has {self.total} elements; the fused "
                             f"kernels index with 32 bits (at most 2**31 - 1): split the batch")
        self.kind = _BN_KIND[x.dtype.name]
        self.acc = cp.float64 if self.kind == 3 else cp.float32
        sms = _sms(cp)
        # Slices per channel: enough blocks to fill the GPU (~8 per SM), none under ~2K elements.
        self.slices = max(1, min(max(1, 8 * sms // self.c), -(-self.m // 2048)))
        self.per = -(-self.m // self.slices)
        self.apply_blocks = max(1, min(-(-self.total // _THREADS), 32 * sms))

    def per_channel(self, a, name, where):
        """A (C,) parameter as a contiguous array of the accumulation dtype."""
        if a.shape != (self.c,):
            raise ValueError(f"{where}: {name} has shape {a.shape}, expected ({self.c},)")
        return _cp().ascontiguousarray(a, dtype=self.acc)


def _u32(v):
    return np.uint32(v)


def batch_norm_train(x, gamma, beta, eps):
    """Normalise with batch statistics: returns (y, mean, invstd), mean/invstd of shape (C,),
    invstd = 1/sqrt(biased var + eps). y has x's dtype."""
    cp = _cp()
    s = _BNShape("batch_norm_train", x)
    x = cp.ascontiguousarray(x)
    gamma = s.per_channel(gamma, "gamma", "batch_norm_train")
    beta = s.per_channel(beta, "beta", "batch_norm_train")
    p1 = cp.empty((s.c, s.slices), dtype=s.acc)
    p2 = cp.empty((s.c, s.slices), dtype=s.acc)
    mean = cp.empty(s.c, dtype=s.acc)
    invstd = cp.empty(s.c, dtype=s.acc)
    y = cp.empty_like(x)
    xi, yi = _io(x), _io(y)
    _bn_fn("bn_partial", s.kind)((s.slices, s.c), (_THREADS,),
                                 (xi, _u32(s.c), _u32(s.hw), _u32(s.m), _u32(s.per), p1, p2))
    _bn_fn("bn_finalize", s.kind)((-(-s.c // 128),), (128,),
                                  (xi, p1, p2, _u32(s.c), _u32(s.hw), _u32(s.slices),
                                   np.float64(s.m), np.float64(eps), mean, invstd))
    _bn_fn("bn_apply", s.kind)((s.apply_blocks,), (_THREADS,),
                               (xi, mean, invstd, gamma, beta, yi, _u32(s.total), _u32(s.c),
                                _u32(s.hw)))
    return y, mean, invstd


def batch_norm_backward(x, gy, gamma, mean, invstd):
    """Gradients of batch_norm_train given its saved mean and invstd: returns (gx, ggamma,
    gbeta). x and gy share shape and dtype; gx has that dtype, ggamma/gbeta have gamma's."""
    cp = _cp()
    s = _BNShape("batch_norm_backward", x)
    if gy.shape != x.shape or gy.dtype != x.dtype:
        raise ValueError(f"batch_norm_backward: gradient {gy.shape} {gy.dtype.name} must match "
                         f"input {x.shape} {x.dtype.name}")
    x, gy = cp.ascontiguousarray(x), cp.ascontiguousarray(gy)
    g_acc = s.per_channel(gamma, "gamma", "batch_norm_backward")
    mean = s.per_channel(mean, "mean", "batch_norm_backward")
    invstd = s.per_channel(invstd, "invstd", "batch_norm_backward")
    p1 = cp.empty((s.c, s.slices), dtype=s.acc)
    p2 = cp.empty((s.c, s.slices), dtype=s.acc)
    ggamma = cp.empty(s.c, dtype=s.acc)
    gbeta = cp.empty(s.c, dtype=s.acc)
    gx = cp.empty_like(x)
    xi, gyi = _io(x), _io(gy)
    _bn_fn("bnb_partial", s.kind)((s.slices, s.c), (_THREADS,),
                                  (xi, gyi, mean, _u32(s.c), _u32(s.hw), _u32(s.m), _u32(s.per),
                                   p1, p2))
    _bn_fn("bnb_finalize", s.kind)((-(-s.c // 128),), (128,),
                                   (p1, p2, invstd, _u32(s.c), _u32(s.slices), ggamma, gbeta))
    inv_m = (np.float64 if s.kind == 3 else np.float32)(1.0 / s.m)
    _bn_fn("bnb_apply", s.kind)((s.apply_blocks,), (_THREADS,),
                                (xi, gyi, mean, invstd, g_acc, ggamma, gbeta, _io(gx),
                                 _u32(s.total), _u32(s.c), _u32(s.hw), inv_m))
    return gx, ggamma.astype(gamma.dtype, copy=False), gbeta.astype(gamma.dtype, copy=False)


def batch_norm_infer(x, gamma, beta, running_mean, running_var, eps):
    """Normalise with running statistics (eval mode); y has x's dtype."""
    cp = _cp()
    s = _BNShape("batch_norm_infer", x)
    x = cp.ascontiguousarray(x)
    args = [s.per_channel(a, n, "batch_norm_infer") for a, n in
            ((running_mean, "running_mean"), (running_var, "running_var"), (gamma, "gamma"),
             (beta, "beta"))]
    y = cp.empty_like(x)
    e = (np.float64 if s.kind == 3 else np.float32)(eps)
    _bn_fn("bn_infer", s.kind)((s.apply_blocks,), (_THREADS,),
                               (_io(x), *args, e, _io(y), _u32(s.total), _u32(s.c), _u32(s.hw)))
    return y


# ---------------------------------------------------------------------------------------------
# Optimizer updates, in place over flat buffers (one launch for all parameters).
# ---------------------------------------------------------------------------------------------

def _check_flat(where, p, *others):
    for name, a in others:
        if a.shape != p.shape:
            raise ValueError(f"{where}: {name} has shape {a.shape}, expected the parameter's "
                             f"shape {p.shape}")


def sgd_update_(p, g, buf, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                first_step=False):
    """PyTorch's SGD step, in place on p (and buf):
        d = g + weight_decay * p
        buf = d on the first step, else momentum * buf + (1 - dampening) * d
        p -= lr * (d + momentum * buf if nesterov else buf)
    With momentum 0, buf may be None and p -= lr * d. Pass first_step=True on the first step
    (PyTorch starts buf as a copy of d, which differs from a zero buffer when dampening != 0)."""
    _check_float("sgd_update_", p, g)
    if momentum == 0:
        _check_flat("sgd_update_", p, ("grad", g))
        k = _elementwise("sgd_plain", "G g, float64 lr, float64 wd", "P p",
                         "typedef mpn_acc<P>::type A; A pv = mpn_ld<A>(p); "
                         "mpn_put(p, pv - A(lr) * (mpn_ld<A>(g) + A(wd) * pv));")
        k(_io(g), float(lr), float(weight_decay), _io(p))
        return p
    if buf is None:
        raise ValueError("sgd_update_: momentum != 0 needs a momentum buffer, got None")
    _check_flat("sgd_update_", p, ("grad", g), ("momentum buffer", buf))
    k = _elementwise("sgd_momentum",
                     "G g, float64 lr, float64 mom, float64 one_m_damp, float64 wd, int32 nesterov, "
                     "int32 first", "P p, B buf",
                     "typedef mpn_acc<P>::type A; A pv = mpn_ld<A>(p); "
                     "A d = mpn_ld<A>(g) + A(wd) * pv; "
                     "A b = first ? d : A(mom) * mpn_ld<A>(buf) + A(one_m_damp) * d; "
                     "mpn_put(buf, b); "
                     "mpn_put(p, pv - A(lr) * (nesterov ? d + A(mom) * b : b));")
    # 1 - dampening in float64 on the host, as PyTorch does (1 - 0.999f in float32 is 1e-5 off)
    k(_io(g), float(lr), float(momentum), 1.0 - float(dampening), float(weight_decay),
      int(bool(nesterov)), int(bool(first_step)), _io(p), _io(buf))
    return p


def adam_update_(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, decoupled):
    """PyTorch's Adam (decoupled=False) / AdamW (decoupled=True) step, in place on p, m, v.
    ``step`` is the 1-based step count after this update (for bias correction)."""
    _check_float("adam_update_", p, g, m, v)
    _check_flat("adam_update_", p, ("grad", g), ("exp_avg", m), ("exp_avg_sq", v))
    if step < 1:
        raise ValueError(f"adam_update_: step must be >= 1 (count including this update), "
                         f"got {step}")
    bc1 = 1.0 - beta1 ** step
    bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
    k = _elementwise("adam",
                     "G g, float64 wd, float64 decay, float64 b1, float64 one_m_b1, float64 b2, "
                     "float64 one_m_b2, float64 eps, float64 step_size, float64 bc2_sqrt, "
                     "int32 decoupled", "P p, M m, V v",
                     "typedef mpn_acc<P>::type A; A pv = mpn_ld<A>(p); A gv = mpn_ld<A>(g); "
                     "if (decoupled) pv = pv * A(decay); else gv = gv + A(wd) * pv; "
                     "A mv = A(b1) * mpn_ld<A>(m) + A(one_m_b1) * gv; "
                     "A vv = A(b2) * mpn_ld<A>(v) + A(one_m_b2) * gv * gv; "
                     "mpn_put(m, mv); mpn_put(v, vv); "
                     "mpn_put(p, pv - A(step_size) * mv / (sqrt(vv) / A(bc2_sqrt) + A(eps)));")
    # Scalars combined in float64 on the host, as PyTorch does: 1 - beta2 in float32 is 1e-5
    # off, which shows in v.
    k(_io(g), float(weight_decay), 1.0 - lr * weight_decay, float(beta1), 1.0 - beta1,
      float(beta2), 1.0 - beta2, float(eps), float(lr / bc1), float(bc2_sqrt),
      int(bool(decoupled)), _io(p), _io(m), _io(v))
    return p
