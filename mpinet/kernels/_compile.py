"""What every kernel family shares: the dtype header (how each io dtype is loaded, computed and
stored, bfloat16 rounding written once), the compile caches, and the launch helpers.

Every kernel computes in float32 (float64 when the arrays are float64) whatever the io dtype,
and is compiled once per dtype combination on first use (CuPy caches the binaries).

Dtypes: float32, float64, float16 and bfloat16 (``ml_dtypes.bfloat16``). bfloat16 arrays are
handed to the kernels as uint16 views and converted in-kernel, so nothing depends on how a CuPy
version spells bfloat16 in device code.

Importing this module (or any kernels module) loads no CUDA: cupy is imported by ``cp()`` on the
first launch, so the package imports on a machine without a GPU.
"""
from __future__ import annotations

import numpy as np

_kernels: dict = {}    # name -> compiled cupy ElementwiseKernel / RawModule, built on first use
_functions: dict = {}  # (module name, kernel name, kind) -> cupy Function

# float32 <-> bfloat16 bit patterns, shared by both headers below: the one place that rounds.
_BF16_BITS = r"""
__device__ __forceinline__ float mpn_bf16_to_float(unsigned short v) {
    return __uint_as_float(((unsigned int)v) << 16); }
__device__ __forceinline__ unsigned short mpn_float_to_bf16(float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even, as ml_dtypes does
    return (unsigned short)(u >> 16);
}
"""

# Conversions for ElementwiseKernels (the ``preamble``). There ``unsigned short`` is always a
# bfloat16 bit pattern (see io_view); float16 arrives as CuPy's own float16 type.
ELEMENTWISE_PREAMBLE = _BF16_BITS + r"""
template <typename T> struct mpn_acc { typedef float type; };
template <> struct mpn_acc<double> { typedef double type; };
template <typename A, typename T> __device__ __forceinline__ A mpn_ld(T v) {
    return static_cast<A>(static_cast<float>(v)); }
template <typename A> __device__ __forceinline__ A mpn_ld(double v) { return static_cast<A>(v); }
template <typename A> __device__ __forceinline__ A mpn_ld(unsigned short v) {
    return static_cast<A>(mpn_bf16_to_float(v)); }
template <typename T, typename A> __device__ __forceinline__ void mpn_put(T& dst, A v) {
    dst = static_cast<T>(v); }
__device__ __forceinline__ void mpn_put(unsigned short& dst, float v) {
    dst = mpn_float_to_bf16(v); }
"""

# The same for raw kernels (RawModule sources), templated on the dtype kind K.
IO_HEADER = _BF16_BITS + r"""
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
    static __device__ __forceinline__ float ld(unsigned short v) { return mpn_bf16_to_float(v); }
    static __device__ __forceinline__ unsigned short st(float v) { return mpn_float_to_bf16(v); } };
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

# Element-wise raw kernels over 16-byte vectors (8 bfloat16/float16, 4 float32 or 2 float64 values
# per load and store). One value per thread, as CuPy's kernels and ElementwiseKernel do, reached
# about a quarter of PyTorch's bandwidth on VGG-16's bfloat16 activations (ReLU 4.1 ms a step vs
# 0.8). Operands must be C-contiguous and 16-byte aligned, with fewer than 2**31 elements
# (``vectorizable``); otherwise the wrappers take a one-value-per-thread path.
VEC_HEADER = IO_HEADER + r"""
template <int K> struct vec {
    typedef typename io<K>::T T;
    static const int V = 16 / sizeof(T);
    union U { uint4 u; T t[16 / sizeof(T)]; };
};
"""
VEC_THREADS = 256

_FLOAT_KIND = {"f": 0, "e": 1, "d": 3}  # dtype.char (fast) -> K; bfloat16 is 2
KERNEL_DTYPES = ("float32", "float16", "bfloat16", "float64")  # by K


def cp():
    """cupy, imported on the first launch (never at import time)."""
    import cupy

    return cupy


_BF16 = []  # [bfloat16 dtype or None], resolved on first use


def is_bf16(a) -> bool:
    # A dtype comparison, not dtype.name: NumPy builds .name in Python (~2 us), and this runs
    # several times per kernel call.
    if not _BF16:
        try:
            import ml_dtypes

            _BF16.append(np.dtype(ml_dtypes.bfloat16))
        except ImportError:
            _BF16.append(None)
    return _BF16[0] is not None and a.dtype == _BF16[0]


def io_view(a):
    """The array as the kernels see it: a uint16 view for bfloat16, else itself."""
    return a.view(cp().uint16) if is_bf16(a) else a


def like(out, ref):
    """Undo io_view on a kernel's output so it carries ``ref``'s dtype."""
    return out.view(ref.dtype) if is_bf16(ref) else out


def check_float(where, *arrays):
    for a in arrays:
        if a.dtype.kind != "f" and not is_bf16(a):
            raise TypeError(f"{where}: expected floating-point arrays, got dtype {a.dtype.name}")


def contiguous(xp, a):
    return a if a.flags.c_contiguous else xp.ascontiguousarray(a)


def kind_of(a):
    """The raw kernels' dtype index K of an array (see IO_HEADER), or None for other dtypes."""
    if is_bf16(a):
        return 2
    return _FLOAT_KIND.get(a.dtype.char)


def elementwise_kernel(name, in_params, out_params, body, preamble=ELEMENTWISE_PREAMBLE):
    """The ElementwiseKernel ``name`` (compiled on first use, per dtype combination)."""
    k = _kernels.get(name)
    if k is None:
        k = _kernels[name] = cp().ElementwiseKernel(
            in_params, out_params, body, name=f"mpinet_{name}", preamble=preamble)
    return k


def raw_function(module, name, kind):
    """Kernel template ``name`` of ``module`` = (module name, source, kernel template names) for
    dtype kind K; the module is compiled on first use for all four kinds."""
    module_name, source, templates = module
    f = _functions.get((module_name, name, kind))
    if f is None:
        mod = _kernels.get(module_name)
        if mod is None:
            names = [f"{k}<{i}>" for k in templates for i in range(4)]
            mod = _kernels[module_name] = cp().RawModule(code=source, name_expressions=names)
        f = _functions[(module_name, name, kind)] = mod.get_function(f"{name}<{kind}>")
    return f


_sm_counts: dict = {}  # device id -> multiprocessor count


def sm_count(device_id):
    n = _sm_counts.get(device_id)
    if n is None:
        n = _sm_counts[device_id] = cp().cuda.Device(device_id).attributes["MultiProcessorCount"]
    return n


def vectorizable(*arrays):
    """K if the arrays are non-empty, share a float dtype and shape, are C-contiguous, 16-byte
    aligned and small enough for 32-bit indices; else None."""
    first = arrays[0]
    kind = kind_of(first)
    if kind is None or first.size == 0 or first.size >= 2**31:
        return None
    for a in arrays:
        if a.dtype != first.dtype or a.shape != first.shape or not a.flags.c_contiguous \
                or a.data.ptr % 16:
            return None
    return kind


def launch_vec(module, name, kind, like_array, *args):
    """Launch vector kernel ``name`` of ``module`` (see raw_function) over ``like_array``'s
    elements: at most 16 blocks per SM (grid-stride beyond that), at least ~8 values or vectors
    per thread."""
    blocks = max(1, min(16 * sm_count(like_array.device.id),
                        -(-like_array.size // (VEC_THREADS * 8))))
    raw_function(module, name, kind)((blocks,), (VEC_THREADS,), args)
