"""Batch normalisation layers (PyTorch's names: weight, bias, running_mean, running_var,
num_batches_tracked), so torchvision state dicts load by name."""
from __future__ import annotations

import numpy as np

from .. import amp, backend
from ..ops import lrn, norm
from . import init
from .basic import input_error
from .module import Module


class _BatchNorm(Module):
    """Shared by BatchNorm1d/2d: which input ranks are accepted is the only difference.

    Training normalises with the batch's statistics and updates the running buffers in place
    with PyTorch's momentum update; eval uses the running statistics.
    ``momentum=None`` gives the cumulative average over all batches seen (as PyTorch).
    Statistics stay float32 whatever the input dtype (bf16/fp16 input is cast inside the op).
    ``fuse_relu=True`` makes the layer output max(BN(x), 0): the ReLU that follows it in most
    networks, computed in the same kernels (on the GPU one launch and one autograd node less per
    direction; the values are those of BN then ReLU exactly). It has no parameters, so state
    dicts are the same with or without it.
    """

    _ranks: tuple[int, ...] = ()
    _layout: str = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 fuse_relu: bool = False):
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"{type(self).__name__}: num_features must be positive, got "
                             f"{num_features}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.fuse_relu = bool(fuse_relu)
        self.weight = init.constant((num_features,), 1.0)
        self.bias = init.constant((num_features,), 0.0)
        xp = backend.current().xp
        self.register_buffer("running_mean", xp.zeros(num_features, np.float32))
        self.register_buffer("running_var", xp.ones(num_features, np.float32))
        self.register_buffer("num_batches_tracked", xp.zeros((), np.int64))

    def forward(self, x):
        if x.ndim not in self._ranks or x.shape[1] != self.num_features:
            raise input_error(self, self._layout.format(C=self.num_features), x)
        if not self.training:
            y, _, _ = norm.batch_norm(x, self.weight, self.bias, self.running_mean,
                                      self.running_var, False, eps=self.eps, relu=self.fuse_relu)
            return y
        # The op increments the counter in place (see Module.update_buffer_), on the GPU inside
        # the statistics kernel. The cumulative average (momentum None) needs the new count
        # first: it is incremented here and read on the host (a GPU sync point).
        count, momentum = self.num_batches_tracked, self.momentum
        if momentum is None:
            backend.xp_of(count).add(count, 1, out=count)
            momentum, count = 1.0 / float(count), None
        y, mean, var = norm.batch_norm(x, self.weight, self.bias, self.running_mean,
                                       self.running_var, True, momentum, self.eps,
                                       relu=self.fuse_relu, num_batches_tracked=count)
        self.update_buffer_("running_mean", mean)  # batch_norm wrote them in place: a no-op
        self.update_buffer_("running_var", var)
        return y

    def extra_repr(self) -> str:
        fused = ", fuse_relu=True" if self.fuse_relu else ""
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}{fused}"


class BatchNorm1d(_BatchNorm):
    """Over (N, C) or (N, C, L)."""

    _ranks = (2, 3)
    _layout = "(N, {C}) or (N, {C}, L)"


class BatchNorm2d(_BatchNorm):
    """Over (N, C, H, W)."""

    _ranks = (4,)
    _layout = "(N, {C}, H, W)"


class LayerNorm(Module):
    """Normalize over the last ``len(normalized_shape)`` axes of each sample (torch's LayerNorm):
    y = (x - mean) / sqrt(var + eps) * weight + bias, biased variance; weight ones, bias zeros.

    Built from differentiable ops (mean, pow, mul), so its backward is autograd's."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else \
            tuple(normalized_shape)
        if not shape or any(int(d) < 1 for d in shape):
            raise ValueError(f"LayerNorm: normalized_shape must be positive sizes, got "
                             f"{normalized_shape}")
        self.normalized_shape, self.eps = tuple(int(d) for d in shape), float(eps)
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = init.constant(self.normalized_shape, 1.0)
            self.bias = init.constant(self.normalized_shape, 0.0)

    def forward(self, x):
        k = len(self.normalized_shape)
        if tuple(x.shape[-k:]) != self.normalized_shape:
            raise input_error(self, f"(..., {', '.join(map(str, self.normalized_shape))})", x)
        axes = tuple(range(x.ndim - k, x.ndim))
        if x.dtype.itemsize < 4:  # bf16/fp16 activations: the statistics in fp32 (as torch)
            x = amp.cast(x, np.dtype(np.float32))
        centered = x - x.mean(axis=axes, keepdims=True)
        var = (centered * centered).mean(axis=axes, keepdims=True)
        y = centered * (var + self.eps) ** -0.5
        if self.elementwise_affine:
            y = y * self.weight + self.bias
        return y

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, affine={self.elementwise_affine}"


class LocalResponseNorm(Module):
    """Local response normalisation across channels (no parameters); see mpinet.ops.lrn.

    y[c] = x[c] * (k + alpha / size * sum of x[c']^2 over the ``size`` channels around c) ** -beta
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"LocalResponseNorm: size must be a positive int, got {size!r}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x):
        if x.ndim < 3:
            raise input_error(self, "(N, C, ...) with at least 3 dimensions", x)
        return lrn.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
