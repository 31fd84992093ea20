"""SyncBatchNorm: batch statistics over the global batch (all ranks), for small per-rank batches.

Forward allreduces the per-channel (sum, sum of squares, count); backward allreduces the
per-channel (sum(gy), sum(gy * xhat)). Both are blocking host-visible collectives of 2C+1 and
2C numbers: cheap next to the convolution around them. The parameters and buffers have the
same names as BatchNorm's, so checkpoints and state dicts move freely between the two.
"""
from __future__ import annotations

from .. import backend
from ..nn.module import Module
from ..ops import norm


class SyncBatchNorm(Module):
    def __init__(self, bn: Module, comm):
        super().__init__()
        self.comm = comm
        self.num_features, self.eps, self.momentum = bn.num_features, bn.eps, bn.momentum
        self.fuse_relu = bn.fuse_relu  # outputs max(BN(x), 0), as the layer it replaces
        self.weight, self.bias = bn.weight, bn.bias
        for name, buf in bn._buffers.items():
            self.register_buffer(name, buf)

    def extra_repr(self) -> str:
        fused = ", fuse_relu=True" if self.fuse_relu else ""
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}{fused}, "
                f"ranks={self.comm.size}")

    def forward(self, x):
        if not self.training:
            y, _, _ = norm.batch_norm(x, self.weight, self.bias, self.running_mean,
                                      self.running_var, training=False, eps=self.eps,
                                      relu=self.fuse_relu)
            return y
        xp = backend.xp_of(x.data)
        shift = self.running_mean
        s, ss, n = norm.batch_stats(x.data, shift=shift)
        # One allreduce for all three: [sum (C), sum of squares (C), count (1)].
        packed = xp.concatenate([s, ss, xp.asarray([n], dtype=s.dtype)])
        packed = self.comm.allreduce(packed, op="sum")
        c = self.num_features
        s, ss, n = packed[:c], packed[c:2 * c], int(round(float(packed[2 * c])))
        mean, var = norm.moments_from_stats(s, ss, n, shift=shift)

        def reduce_grads(local):  # (2, C): sum(gy), sum(gy * xhat) on this rank
            return self.comm.allreduce(xp.ascontiguousarray(local), op="sum")

        y = norm.batch_norm_from_stats(x, self.weight, self.bias, mean, var, n, self.eps,
                                       reduce_grads=reduce_grads, relu=self.fuse_relu)
        new_mean, new_var = norm.update_running_stats(self.running_mean, self.running_var,
                                                      mean, var, n, self.momentum)
        self.update_buffer_("running_mean", new_mean)
        self.update_buffer_("running_var", new_var)
        if "num_batches_tracked" in self._buffers:
            count = self.num_batches_tracked
            backend.xp_of(count).add(count, 1, out=count)
        return y


def convert_sync_batchnorm(module: Module, comm) -> Module:
    """Replace every BatchNorm1d/BatchNorm2d inside ``module`` by a SyncBatchNorm (in place),
    sharing its parameters and buffers; returns the module (or the replacement if it is one)."""
    from ..nn import BatchNorm1d, BatchNorm2d

    if isinstance(module, (BatchNorm1d, BatchNorm2d)):
        return SyncBatchNorm(module, comm)
    for name, child in list(module._modules.items()):
        setattr(module, name, convert_sync_batchnorm(child, comm))
    return module
