"""One training step, and the ONE place its update sequence is written.

    step = TrainStep(network, dp, optimizer, comm, precision=Precision.parse("fp16"),
                     loss="cross_entropy", metrics=("accuracy",))
    sums = step(x, y, global_count)          # forward, backward, update; device sums for logs

The sequence, for every path (fp32/bf16/fp16, compressed gradients, accumulation, CUDA graphs):

  1. cast       forward under autocast: the fp32 master weights are cast to the compute dtype
                in one pass (``amp.autocast(params=flat)``), the loss is computed in fp32;
  2. scale      each chunk's loss is weighted by n_chunk / n_global (the exact global mean
                whatever the split), times the loss scale under fp16;
  3. accumulate micro-batches backpropagate inside ``dp.no_sync()``; the last one's hooks
                start the bucketed allreduces, overlapped with its backward;
  4. wait       ``dp.reduce_gradients()``: every bucket reduced (and decompressed);
  5. unscale    fp16: the flat gradient divided by the loss scale;
  6. check      one overflow check (fp16, compressed gradients), agreed by every rank: on
                overflow the step is skipped on all ranks alike;
  7. clip       ``clip(flat)``, the hook for gradient clipping (None: no clipping);
  8. step       ``optimizer.step()``, then the consumed gradients are zeroed, and the loss
                scale backs off or grows.
The data-parallel "forward" mode (without fp16) defers 4-8 per bucket to right before each
layer's next forward (``dp.start_deferred_update``). A CUDA graph (``cuda_graph=True``) captures
1-8 of a one-chunk step after a few eager steps; what it could not replay is refused up front.
"""
from __future__ import annotations

import numpy as np

from .. import amp, backend, random
from ..autograd import Variable
from ..data.arrays import num_samples, take_rows
from ..nn.dropout import Dropout
from ..optim.loss_scaler import LossScaler
from . import metrics as metric_ops
from .cuda_graph import StepGraphs, check_capturable


class TrainStep:
    """Forward, backward and update of one optimizer step on this rank's share of a batch.

    ``precision``: an ``amp.Precision``; ``loss``: a name of ``metrics.LOSSES`` or a
    callable(output, target); ``clip``: callable(flat) applied to the reduced, unscaled
    gradients before the optimizer (for a CUDA graph it must not read values on the host).
    """

    def __init__(self, network, dp, optimizer, comm, *, precision: amp.Precision,
                 loss="cross_entropy", metrics=(), label_smoothing: float = 0.0, clip=None,
                 cuda_graph: bool = False):
        metric_ops.check_names(loss, metrics)
        self.network = network
        self.dp = dp
        self.optimizer = optimizer
        self.comm = comm
        self.precision = precision
        self.loss_fn = loss
        self.metrics = tuple(metrics)
        self.label_smoothing = float(label_smoothing)
        self.clip = clip
        self.ignore_index = None  # the padded-target value while training on padded sequences
        self.scaler = LossScaler() if precision.loss_scaling else None
        # Only fp16 and compressed gradients can overflow; only they read the host in update().
        self.checks_overflow = self.scaler is not None or dp.grad_dtype is not None
        self.found_inf = False  # the last update's overflow flag (the same on every rank)
        self.graphs = None
        if cuda_graph:
            check_capturable(self)
            self.graphs = StepGraphs(self._device_step, optimizer, comm,
                                     state_arrays=self.state_arrays)

    # ---- the step's computation -------------------------------------------------------------
    def forward(self, x) -> Variable:
        """The network's output for device array ``x`` under the step's precision; a tuple
        batch (padded sequences, lengths, ...) calls network(Variable(x[0]), *x[1:])."""
        x, extra = (x[0], x[1:]) if isinstance(x, tuple) else (x, ())
        if self.precision.compute_dtype is None:
            return self.network(Variable(x), *extra)
        # All weights cast in one pass per forward, unless the "forward" data-parallel mode
        # updates layers during the forward pass (then each layer casts its own weight).
        flat = self.dp.flat if self.dp.mode != "forward" else None
        with amp.autocast(self.precision, params=flat):
            return self.network(Variable(x), *extra)

    def loss(self, out: Variable, y) -> Variable:
        return metric_ops.compute_loss(self.loss_fn, out, y, self.label_smoothing,
                                       self.ignore_index)

    def metric_sums(self, out, y) -> dict:
        return metric_ops.metric_sums(self.metrics, out, y)

    def __call__(self, x, y, global_count: int, accumulation_steps: int = 1) -> dict:
        """One optimizer step on this rank's share ``x, y`` of a global batch of
        ``global_count`` samples; returns device sums (loss*n, metric sums) for logging."""
        n_local = num_samples(x)
        if self.graphs is not None and accumulation_steps == 1 and n_local > 0:
            # Eager for the first steps of each batch shape, then one graph replay per step.
            return self.graphs.run(x, y, global_count)
        sums = {"loss": 0.0}
        if n_local == 0:
            self.dp.backward_empty()
        else:
            chunks = np.array_split(np.arange(n_local), min(accumulation_steps, n_local))
            for i, idx in enumerate(chunks):
                xs, ys = (x, y) if len(chunks) == 1 else (take_rows(x, idx[0], idx[-1] + 1),
                                                          y[idx[0]:idx[-1] + 1])
                out = self.forward(xs)
                loss = self.loss(out, ys)
                weight = len(idx) / global_count
                if self.scaler is not None:
                    weight *= self.scaler.scale_value
                if i == len(chunks) - 1:
                    self.dp.backward(loss, weight=weight)
                else:
                    with self.dp.no_sync():
                        self.dp.backward(loss, weight=weight)
                sums["loss"] = sums["loss"] + loss.data * len(idx)
                for k, v in self.metric_sums(out.data, ys).items():
                    sums[k] = sums.get(k, 0) + v
        self.update()
        return sums

    def _device_step(self, x, y, global_count: int) -> dict:
        """The device work of a one-chunk step: forward, backward (allreduces started from the
        hooks), update. What a CUDA graph captures: no host reads in here."""
        out = self.forward(x)
        loss = self.loss(out, y)
        self.dp.backward(loss, weight=num_samples(x) / global_count)
        sums = {"loss": loss.data * num_samples(x), **self.metric_sums(out.data, y)}
        self.update()
        return sums

    # ---- the update sequence ----------------------------------------------------------------
    def update(self) -> bool:
        """Steps 4-8 of the module docstring; returns False if the step was skipped (overflow)."""
        flat = self.dp.flat
        if self.dp.mode == "forward" and self.scaler is None:
            self.dp.start_deferred_update(self.optimizer)
            return True
        self.dp.reduce_gradients()
        self.found_inf = self._unscale_and_check()
        if not self.found_inf:
            if self.clip is not None:
                self.clip(flat)  # gradient clipping plugs in here
            self.optimizer.step()
        flat.zero_grad()  # consumed (or discarded on overflow): the next step starts from zero
        if self.scaler is not None:
            self.scaler.update(self.found_inf)
        return not self.found_inf

    def _unscale_and_check(self) -> bool:
        """Divide the reduced gradient by the loss scale (fp16); True if any value is inf/nan.
        The one overflow check: a CPU-GPU sync point, so only where something can overflow."""
        if not self.checks_overflow:
            return False
        grad = self.dp.flat.grad
        if self.scaler is not None:
            grad *= 1.0 / self.scaler.scale_value  # exact: the scale is a power of two
        found = not bool(backend.xp_of(grad).isfinite(grad).all())
        # The reduced gradient is the same everywhere, but every rank must skip alike even if
        # a reduction were not bitwise identical: agree (one tiny host allreduce).
        return bool(self.comm.allreduce_obj(found, op="lor")) if self.comm.size > 1 else found

    # ---- CUDA graphs ------------------------------------------------------------------------
    def state_arrays(self) -> list:
        """The arrays a training step's state lives in (what a CUDA graph replays on)."""
        modules = [m for _, m in self.network.named_modules()]
        arrays = [buf for m in modules for buf in m._buffers.values()]
        generators = {id(g): g for g in (m.rng or random.dropout_generator() for m in modules
                                        if isinstance(m, Dropout))}
        return (arrays + [g.state for g in generators.values()]
                + [self.dp.flat.data, self.dp.flat.grad] + self.optimizer.device_state())

    def forget_graphs(self) -> None:
        """Loading replaces buffers and optimizer state with new arrays: recapture."""
        if self.graphs is not None:
            self.graphs.reset()
