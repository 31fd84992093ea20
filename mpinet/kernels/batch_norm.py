"""Batch norm: per-channel statistics over (N, H, W) of x (N, C, H, W), or over N of x (N, C);
and the per-channel sum of a conv bias's gradient, which shares the reduction.

Channels of at most ONE_BLOCK_MAX elements: one launch a direction, a block per channel. Larger:
two launches a direction: a reduction over S slices of each channel (grid S x C) whose last
block per channel combines the slices in float64 and writes the statistics, then an
elementwise apply. Forward sums are shifted by each channel's first element, so the one-pass
variance does not cancel catastrophically when |mean| >> std. Host cost is kept down (it
dominates at small spatial sizes): launch geometry cached per shape, compiled functions cached,
partial sums and arrival counters in a per-(device, stream) scratch buffer.

Statistics (mean, invstd) are float32, or float64 for float64 input; the formulas are PyTorch's
(biased batch variance to normalise, unbiased in the running variance).
"""
from __future__ import annotations

import numpy as np

from ._batch_norm_source import BN_KERNELS, BN_SOURCE
from ._compile import KERNEL_DTYPES, contiguous, cp, io_view, kind_of, raw_function, sm_count

_BN_MODULE = ("batch_norm", BN_SOURCE, BN_KERNELS)
# Channels of at most this many elements take the one-launch kernels (one block per channel).
ONE_BLOCK_MAX = 32768
_ONE_BLOCK_THREADS = 512
_THREADS = 256
_geometry: dict = {}    # (shape, dtype, device) -> _BNGeometry
_scratch: dict = {}     # (device, stream) -> (uint32 arrival counters, partial-sum bytes)


def _bn_fn(name, kind):
    return raw_function(_BN_MODULE, name, kind)


class _BNGeometry:
    """x (N, C, H, W) or (N, C) seen as (N, C, HW), with its launch geometry and the kernels'
    scalar arguments, computed once per (shape, dtype, device)."""

    def __init__(self, where, x, device_id):
        if x.ndim not in (2, 4):
            raise ValueError(f"{where}: expected input (N, C, H, W) or (N, C), got {x.shape}")
        self.kind = kind_of(x)
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
        sms = sm_count(device_id)
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


def _scratch_for(xp, geom):
    """Arrival counters (all zero between launches) and partial-sum space for this stream.
    Reused by every batch-norm call on the stream: stream order keeps the uses apart."""
    key = (xp.cuda.runtime.getDevice(), xp.cuda.get_current_stream().ptr)
    counters, part = _scratch.get(key, (None, None))
    if counters is None or counters.size < geom.c or part.nbytes < geom.part_bytes:
        counters = xp.zeros(max(geom.c, 0 if counters is None else counters.size), xp.uint32)
        part = xp.empty(max(geom.part_bytes, 0 if part is None else part.nbytes), xp.uint8)
        _scratch[key] = (counters, part)
    return counters, part


def _per_channel(a, geom, name, where):
    """A (C,) parameter as a contiguous array of the accumulation dtype (no copy if it is)."""
    if a.shape != (geom.c,):
        raise ValueError(f"{where}: {name} has shape {a.shape}, expected ({geom.c},)")
    if a.dtype == geom.acc and a.flags.c_contiguous:
        return a
    return cp().ascontiguousarray(a, dtype=geom.acc)


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
    xp = cp()
    geom = _geom("batch_norm_train", x)
    x = contiguous(xp, x)
    gamma = _per_channel(gamma, geom, "gamma", "batch_norm_train")
    beta = _per_channel(beta, geom, "beta", "batch_norm_train")
    stats = xp.empty(2 * geom.c, dtype=geom.acc)  # mean, invstd
    y = xp.empty_like(x)
    xi = io_view(x)
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm_train: give both running_mean and running_var, or neither")
    if running_mean is not None:
        rm = _per_channel(running_mean, geom, "running_mean", "batch_norm_train")
        rv = _per_channel(running_var, geom, "running_var", "batch_norm_train")
        # In place when the buffers are already contiguous statistics arrays (one thread reads
        # and then writes each channel's value); else into copies returned to the caller.
        rm_out = rm if rm is running_mean else xp.empty_like(rm)
        rv_out = rv if rv is running_var else xp.empty_like(rv)
        running = (np.int32(1), np.float64(momentum), rm, rv, rm_out, rv_out)
    else:  # never read or written by the kernel (update flag 0)
        running = (np.int32(0), np.float64(0), stats, stats, stats, stats)
    batches = _batch_counter(num_batches_tracked, stats)
    relu = np.int32(bool(relu))
    if geom.one_block:
        _bn_fn("bn_fwd_block", geom.kind)((geom.c,), (_ONE_BLOCK_THREADS,),
                                          (xi, *geom.c_hw_m, np.float64(eps), stats, gamma, beta,
                                           io_view(y), *running, *batches, relu))
    else:
        counters, part = _scratch_for(xp, geom)
        _bn_fn("bn_stats", geom.kind)(geom.reduce_grid, (_THREADS,),
                                      (xi, *geom.c_hw_m_per, part, counters, np.float64(eps),
                                       stats, *running, *batches))
        _bn_fn("bn_apply", geom.kind)(geom.apply_grid, (_THREADS,),
                                      (xi, stats[:geom.c], stats[geom.c:], gamma, beta, io_view(y),
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
    xp = cp()
    geom = _geom("batch_norm_backward", x)
    if gy.shape != x.shape or gy.dtype != x.dtype:
        raise ValueError(f"batch_norm_backward: gradient {gy.shape} {gy.dtype.name} must match "
                         f"input {x.shape} {x.dtype.name}")
    x, gy = contiguous(xp, x), contiguous(xp, gy)
    if relu_y is None:
        mask = (gy, np.int32(0))  # never read
    else:
        if relu_y.shape != x.shape or relu_y.dtype != x.dtype:
            raise ValueError(f"batch_norm_backward: relu_y {relu_y.shape} {relu_y.dtype.name} "
                             f"must match input {x.shape} {x.dtype.name}")
        mask = (io_view(contiguous(xp, relu_y)), np.int32(1))
    g_acc = _per_channel(gamma, geom, "gamma", "batch_norm_backward")
    mean = _per_channel(mean, geom, "mean", "batch_norm_backward")
    invstd = _per_channel(invstd, geom, "invstd", "batch_norm_backward")
    ggamma = _out_or_new(xp, ggamma_out, geom)
    gbeta = _out_or_new(xp, gbeta_out, geom)
    gx = xp.empty_like(x)
    xi, gyi = io_view(x), io_view(gy)
    if geom.one_block:
        _bn_fn("bnb_block", geom.kind)((geom.c,), (_ONE_BLOCK_THREADS,),
                                       (xi, gyi, mean, invstd, g_acc, *geom.c_hw_m, ggamma, gbeta,
                                        io_view(gx), geom.inv_m, *mask))
    else:
        counters, part = _scratch_for(xp, geom)
        _bn_fn("bnb_stats", geom.kind)(geom.reduce_grid, (_THREADS,),
                                       (xi, gyi, mean, invstd, *geom.c_hw_m_per, part, counters,
                                        ggamma, gbeta, *mask))
        _bn_fn("bnb_apply", geom.kind)(geom.apply_grid, (_THREADS,),
                                       (xi, gyi, mean, invstd, g_acc, ggamma, gbeta, io_view(gx),
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


def _out_or_new(xp, out, geom):
    """``out`` if the kernels can write a (C,) statistic into it, else a new array."""
    if out is not None and out.shape == (geom.c,) and out.dtype == geom.acc \
            and out.flags.c_contiguous:
        return out
    return xp.empty(geom.c, dtype=geom.acc)


def batch_norm_infer(x, gamma, beta, running_mean, running_var, eps, relu=False):
    """Normalise with running statistics (eval mode); y has x's dtype; ``relu``: then max(y, 0)
    in the same pass."""
    xp = cp()
    geom = _geom("batch_norm_infer", x)
    x = contiguous(xp, x)
    args = [_per_channel(a, geom, n, "batch_norm_infer") for a, n in
            ((running_mean, "running_mean"), (running_var, "running_var"), (gamma, "gamma"),
             (beta, "beta"))]
    y = xp.empty_like(x)
    _bn_fn("bn_infer", geom.kind)(geom.apply_grid, (_THREADS,),
                                  (io_view(x), *args, geom.acc.type(eps), io_view(y),
                                   *geom.total_c_hw, np.int32(bool(relu))))
    return y


def channel_sum(x):
    """Sum over every axis but 1 of x (N, C, ...) -> (C,) in x's dtype (accumulated in float32,
    float64 for float64): a conv bias's gradient, in one launch."""
    xp = cp()
    if x.ndim == 3:  # (N, C, L): the geometry below takes (N, C) or (N, C, H, W)
        x = x.reshape(x.shape + (1,))
    geom = _geom("channel_sum", x)
    x = contiguous(xp, x)
    counters, part = _scratch_for(xp, geom)
    out = xp.empty(geom.c, dtype=x.dtype)
    _bn_fn("ch_sum", geom.kind)(geom.reduce_grid, (_THREADS,),
                                (io_view(x), *geom.c_hw_m_per, part, counters, io_view(out)))
    return out
