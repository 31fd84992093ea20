"""Batch normalisation over (N, C) or (N, C, H, W) (statistics per channel, axis 1).

Training normalises with the batch's mean and biased variance and updates the running
statistics in place (PyTorch's rule: running = (1 - momentum) * running + momentum * batch, with the
*unbiased* batch variance for running_var). Evaluation normalises with the running statistics.
Statistics are float32 (float64 for float64 input); bf16/fp16 input is upcast inside and the
output and input gradient come back in the input's dtype.

Sync batch norm (data parallelism) is built from the pieces, with the communication between:

    s, ss, n = norm.batch_stats(x.data, shift=running_mean)    # per rank: (C,), (C,), int
    s, ss, n = <allreduce-sum of s, ss and n over ranks>
    mean, var = norm.moments_from_stats(s, ss, n, shift=running_mean)
    y = norm.batch_norm_from_stats(x, gamma, beta, mean, var, n, eps,
                                   reduce_grads=<allreduce-sum of a (2, C) array>)
    running_mean, running_var = norm.update_running_stats(running_mean, running_var,
                                                          mean, var, n, momentum)

``reduce_grads`` is called once in backward with the stacked local sums (sum(gy), sum(gy*xhat))
per channel and must return their sum over ranks; the input gradient then uses the global sums
and the global count, as PyTorch's SyncBatchNorm does. gamma's and beta's gradients stay local
(data parallelism averages them with every other parameter gradient). ``shift`` (any per-channel
value close to the mean, identical on every rank, e.g. the running mean) keeps the single-pass
variance sum(x^2)/n - mean^2 from cancelling when |mean| >> std.
"""
from __future__ import annotations

import numpy as np

from .. import backend, kernels
from ..autograd import Function
from ._util import writable_out
from .activation import relu_array, relu_grad


def _compute_dtype(x):
    return x.dtype if x.dtype.itemsize >= 4 else np.dtype(np.float32)


def _reduce_axes(x) -> tuple:
    """Every axis but the channel axis 1: (0,) for (N, C), (0, 2, 3) for (N, C, H, W)."""
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(v, x):
    """(C,) -> (1, C, 1, ...) so it broadcasts over x."""
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def _check_input(x, gamma, beta) -> None:
    if x.ndim < 2:
        raise ValueError(f"batch_norm: input must be (N, C) or (N, C, H, W), got shape "
                         f"{tuple(x.shape)}")
    c = x.shape[1]
    for name, v in (("weight (gamma)", gamma), ("bias (beta)", beta)):
        if tuple(v.shape) != (c,):
            raise ValueError(f"batch_norm: {name} must have shape ({c},) for input "
                             f"{tuple(x.shape)} with {c} channels, got {tuple(v.shape)}")


def _count(x) -> int:
    return int(x.size // x.shape[1]) if x.shape[1] else 0


# ---- statistics, usable on their own (sync batch norm) ----------------------------------------
def batch_stats(x, shift=None):
    """Per-channel (sum, sum of squares, count) of x - shift for a raw (N, C, ...) array.

    Sums are in float32 (float64 for float64 x); ``shift`` is an optional (C,) array.
    """
    xp = backend.xp_of(x)
    cdt = _compute_dtype(x)
    xc = x.astype(cdt, copy=False)
    if shift is not None:
        xc = xc - _per_channel(xp.asarray(shift, dtype=cdt), x)
    axes = _reduce_axes(x)
    return xc.sum(axis=axes), (xc * xc).sum(axis=axes), _count(x)


def moments_from_stats(total, total_sq, count, shift=None):
    """(mean, biased variance) per channel from summed statistics (see ``batch_stats``)."""
    xp = backend.xp_of(total)
    count = float(count)
    centred = total / count
    var = xp.maximum(total_sq / count - centred * centred, 0)  # rounding can go below 0
    mean = centred if shift is None else centred + xp.asarray(shift, dtype=total.dtype)
    return mean, var


def update_running_stats(running_mean, running_var, mean, var, count: int, momentum: float):
    """New (running_mean, running_var) as PyTorch computes them; the inputs are not modified.

    ``var`` is the biased batch variance; running_var takes the unbiased count/(count-1) one.
    """
    if count < 2:
        raise ValueError(f"batch_norm: cannot update running variance from {count} value per "
                         f"channel; train with more than 1 value per channel (batch size > 1)")
    dt = running_mean.dtype
    m = dt.type(momentum)
    unbiased = var * (count / (count - 1))
    new_mean = (1 - m) * running_mean + m * mean.astype(dt, copy=False)
    new_var = (1 - m) * running_var + m * unbiased.astype(dt, copy=False)
    return new_mean, new_var


# ---- the differentiable ops ------------------------------------------------------------------
class BatchNormTrain(Function):
    """Normalise x with batch statistics: local ones (computed here), or given ones (sync BN).

    After forward, ``self.mean`` / ``self.var`` (biased) / ``self.count`` hold the statistics used.
    ``relu``: the output is max(y, 0), the ReLU that follows most batch norms fused into this op
    (one launch and one autograd node less per layer and direction on the GPU).
    ``batches``: the layer's int64 num_batches_tracked, incremented in place by the forward (by
    the statistics kernel itself on the GPU's fused path).
    """

    def __init__(self, eps: float, stats=None, reduce_grads=None, running=None, relu=False,
                 batches=None):
        self.eps = eps
        self.relu = relu
        self.batches = batches
        self.stats = stats  # (mean, var, count) or None: compute from this batch
        self.reduce_grads = reduce_grads
        # (running_mean, running_var, momentum) for the GPU kernel to update in the same launch;
        # it sets new_running. Otherwise the caller updates them (update_running_stats).
        self.running = running
        self.new_running = None
        self._var = None

    @property
    def var(self):
        """Biased batch variance used to normalise (computed on demand on the fused path)."""
        if self._var is None:
            invstd = self._invstd
            self._var = 1 / (invstd * invstd) - invstd.dtype.type(self.eps)
        return self._var

    def forward(self, x, gamma, beta):
        _check_input(x, gamma, beta)
        xp = backend.xp_of(x)
        self.fused = (self.stats is None and self.reduce_grads is None
                      and backend.is_gpu_array(x))
        if self.fused:
            self.count = _count(x)
            _need_two_values(self.count, x)
            rm, rv, momentum = self.running if self.running is not None else (None, None, 0.0)
            y, mean, invstd, new_rm, new_rv = kernels.batch_norm.batch_norm_train(
                x, gamma, beta, self.eps, rm, rv, momentum, self.relu, self.batches)
            if new_rm is not None:
                self.new_running = (new_rm, new_rv)
            self.mean, self._invstd = mean, invstd
            self.save(x, gamma, mean, invstd, y if self.relu else None)
            return y

        cdt = _compute_dtype(x)
        xc = x.astype(cdt, copy=False)
        if self.stats is None:
            self.count = _count(x)
            _need_two_values(self.count, x)
            axes = _reduce_axes(x)
            mean = xc.mean(axis=axes)
            centred = xc - _per_channel(mean, x)
            var = (centred * centred).mean(axis=axes)  # two passes: no cancellation
        else:
            mean, var, self.count = self.stats
            mean, var = mean.astype(cdt, copy=False), var.astype(cdt, copy=False)
            _need_two_values(self.count, x)
            centred = xc - _per_channel(mean, x)
        invstd = 1 / xp.sqrt(var + cdt.type(self.eps))
        self.mean, self._var = mean, var
        scale = _per_channel(gamma.astype(cdt, copy=False) * invstd, x)
        y = (centred * scale + _per_channel(beta.astype(cdt, copy=False), x)).astype(
            x.dtype, copy=False)
        if self.relu:
            y = relu_array(y)
        if self.batches is not None:
            xp.add(self.batches, 1, out=self.batches)
        self.save(x, gamma, mean, invstd, y if self.relu else None)
        return y

    def backward(self, gy):
        x, gamma, mean, invstd, relu_y = self.saved
        # gamma's and beta's gradients go straight into their zeroed buffers when possible
        ggamma_out, gbeta_out = self.grad_destination(1), self.grad_destination(2)
        if self.fused:
            gx, ggamma, gbeta = kernels.batch_norm.batch_norm_backward(
                x, gy, gamma, mean, invstd, ggamma_out, gbeta_out, relu_y)
            return gx, ggamma, gbeta
        if relu_y is not None:
            gy = relu_grad(relu_y, gy)
        cdt = _compute_dtype(x)
        xp = backend.xp_of(x)
        axes = _reduce_axes(x)
        xhat = (x.astype(cdt, copy=False) - _per_channel(mean, x)) * _per_channel(invstd, x)
        gyc = gy.astype(cdt, copy=False)
        gbeta = gyc.sum(axis=axes, out=writable_out(gbeta_out, cdt))             # (C,)
        ggamma = (gyc * xhat).sum(axis=axes, out=writable_out(ggamma_out, cdt))  # (C,)
        gx = None
        if self.needs_input_grad[0]:
            sums = xp.stack([gbeta, ggamma])   # (2, C)
            if self.reduce_grads is not None:
                sums = self.reduce_grads(sums)  # sync BN: sum over ranks
            n = cdt.type(self.count)
            gx = _per_channel(gamma.astype(cdt, copy=False) * invstd, x) * (
                gyc - (_per_channel(sums[0], x) + xhat * _per_channel(sums[1], x)) / n)
            gx = gx.astype(x.dtype, copy=False)
        return gx, ggamma.astype(gamma.dtype, copy=False), gbeta.astype(gamma.dtype, copy=False)


def _need_two_values(count: int, x) -> None:
    if count < 2:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got "
                         f"input shape {tuple(x.shape)}; use a batch size > 1 or eval mode")


class BatchNormEval(Function):
    """y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta (running stats fixed)."""

    def __init__(self, running_mean, running_var, eps: float, relu: bool = False):
        self.running_mean, self.running_var, self.eps = running_mean, running_var, eps
        self.relu = relu  # output max(y, 0): see BatchNormTrain

    def forward(self, x, gamma, beta):
        _check_input(x, gamma, beta)
        if backend.is_gpu_array(x):
            y = kernels.batch_norm.batch_norm_infer(x, gamma, beta, self.running_mean,
                                                    self.running_var, self.eps, self.relu)
        else:
            scale, shift = self._affine(x, gamma, beta)
            y = (x.astype(scale.dtype, copy=False) * _per_channel(scale, x)
                 + _per_channel(shift, x)).astype(x.dtype, copy=False)
            if self.relu:
                y = relu_array(y)
        self.save(x, gamma, y if self.relu else None)
        return y

    def _affine(self, x, gamma, beta):
        """Per-channel (scale, shift) equal to normalising with the running statistics."""
        xp = backend.xp_of(x)
        cdt = _compute_dtype(x)
        invstd = 1 / xp.sqrt(self.running_var.astype(cdt) + cdt.type(self.eps))
        scale = gamma.astype(cdt, copy=False) * invstd
        shift = beta.astype(cdt, copy=False) - self.running_mean.astype(cdt) * scale
        return scale, shift

    def backward(self, gy):
        x, gamma, relu_y = self.saved
        if relu_y is not None:
            gy = relu_grad(relu_y, gy)
        xp = backend.xp_of(x)
        cdt = _compute_dtype(x)
        axes = _reduce_axes(x)
        invstd = 1 / xp.sqrt(self.running_var.astype(cdt) + cdt.type(self.eps))
        gyc = gy.astype(cdt, copy=False)
        gx = (gyc * _per_channel(gamma.astype(cdt, copy=False) * invstd, x)).astype(
            x.dtype, copy=False)
        xhat = (x.astype(cdt, copy=False) - _per_channel(self.running_mean.astype(cdt), x)) \
            * _per_channel(invstd, x)
        ggamma = (gyc * xhat).sum(axis=axes).astype(gamma.dtype, copy=False)
        gbeta = gyc.sum(axis=axes).astype(gamma.dtype, copy=False)
        return gx, ggamma, gbeta


# ---- public functions --------------------------------------------------------------------------
def batch_norm(x, gamma, beta, running_mean, running_var, training: bool, momentum: float = 0.1,
               eps: float = 1e-5, relu: bool = False, num_batches_tracked=None):
    """Batch norm over axis 1 -> (y, new_running_mean, new_running_var).

    x (N, C) or (N, C, H, W); gamma, beta (C,); running stats (C,) raw arrays. In training they
    are updated in place, on every device, and the given arrays come back (the GPU kernel
    writes them in the forward launch; elsewhere the new values are written into them). In
    eval mode the given ones come back unchanged. In training the running stats may be None
    (no tracking): then None, None come back.
    ``relu=True`` returns max(y, 0) (a following ReLU fused in); ``num_batches_tracked`` (an
    int64 array of one element) is incremented in place when training.
    """
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: eval mode needs running_mean and running_var")
        return BatchNormEval(running_mean, running_var, eps, relu).apply(x, gamma, beta), \
            running_mean, running_var
    tracked = running_mean is not None and running_var is not None
    op = BatchNormTrain(eps, running=(running_mean, running_var, momentum) if tracked else None,
                        relu=relu, batches=num_batches_tracked)
    y = op.apply(x, gamma, beta)
    if not tracked:
        return y, None, None
    if op.new_running is not None:  # computed by the GPU kernel in the forward launch
        new_mean, new_var = op.new_running
    else:
        new_mean, new_var = update_running_stats(running_mean, running_var, op.mean, op.var,
                                                 op.count, momentum)
    return y, _store(running_mean, new_mean), _store(running_var, new_var)


def _store(buffer, value):
    """``buffer`` holding ``value``: written in place unless it already is that array (the GPU
    kernel updates contiguous statistics of its own dtype in place, and returns them)."""
    if value is not buffer:
        buffer[...] = value
    return buffer


def batch_norm_from_stats(x, gamma, beta, mean, var, count: int, eps: float = 1e-5,
                          reduce_grads=None, relu: bool = False):
    """Normalise x with given per-channel (mean, biased var) over ``count`` values (sync BN).

    See the module docstring for the data-parallel recipe and what ``reduce_grads`` must do.
    ``relu=True`` returns max(y, 0), as in ``batch_norm``.
    """
    return BatchNormTrain(eps, stats=(mean, var, int(count)), reduce_grads=reduce_grads,
                          relu=relu).apply(x, gamma, beta)
