"""Data parallelism: identical replicas, gradients averaged by allreduce overlapped with compute.

The flow of one step (default mode "backward")::

    loss = criterion(model(x), y)
    # hooks start each bucket's allreduce (Push+PullReq)
    dp.backward(loss, weight=n_local / n_global)
    dp.step(optimizer)                            # wait for the buckets (PullWait), then update
                                                  # (mpinet.training.TrainStep: the full sequence)

* Parameters live in one flat buffer, gradients in another (``FlatParameters``), laid out in
  REVERSE registration order: the last layers' gradients are final first, so the first buckets
  fill first. A bucket is a slice of the flat gradient buffer (~25 MB by default), no copies.
* Autograd fires a grad-ready hook the moment a parameter's gradient is final; when every
  parameter of a bucket is ready its non-blocking allreduce starts while backprop continues.
  Buckets are launched strictly in index order on every rank, so collectives always match.
* ``weight`` makes the average exact for uneven batches: each rank scales its local mean loss by
  n_local / n_global and the buckets are SUMMED, giving the mean over the global batch whatever
  the split (a rank with an empty batch calls ``dp.backward_empty()`` and contributes zeros).
* Mode "forward" is cxxnet/mshadow-ps's discipline: ``step`` returns at once, and each layer
  waits for its bucket(s) and applies its update right before its next forward (a pre-forward
  hook), so communication also overlaps the next forward. Updates are never stale: a layer's
  forward always sees the weights updated with the previous step's reduced gradients.
* Mode "sync" reduces everything after backward (the baseline for measuring overlap).
* ``no_sync()`` accumulates gradients over micro-batches with no communication (like DDP's).
* ``grad_dtype="bf16"|"fp16"`` compresses buckets for the wire and decompresses into fp32; the
  overflow check that skips a step is mpinet.training.TrainStep's (the one update sequence).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from .. import amp, backend
from ..autograd import Parameter
from ..flat import FlatParameters
from ..nn.module import Module

MODES = ("backward", "forward", "sync")


@dataclass
class Bucket:
    """A contiguous slice [start, stop) of the flat gradient buffer and the params in it."""

    index: int
    start: int
    stop: int
    params: list[Parameter]
    pending: int = 0  # params whose gradient is not final yet in this backward
    handle: object = None  # in-flight allreduce
    wire: object = None  # compressed send/receive buffer (grad_dtype) or None

    @property
    def ready(self) -> bool:
        return self.pending == 0


class DataParallel:
    def __init__(self, model: Module, comm, *, bucket_mb: float = 25.0, mode: str = "backward",
                 grad_dtype=None, broadcast: bool = True):
        if mode not in MODES:
            raise ValueError(f"DataParallel mode must be one of {MODES}, got {mode!r}")
        if bucket_mb <= 0:
            raise ValueError(f"bucket_mb must be > 0, got {bucket_mb}")
        self.model = model
        self.comm = comm
        self.mode = mode
        self.grad_dtype = amp.resolve_dtype(grad_dtype) if grad_dtype else None
        params = model.parameters()
        if not params:
            raise ValueError(f"{type(model).__name__} has no parameters to train")
        self.flat = FlatParameters(list(reversed(params)))
        if broadcast:
            self.broadcast_state()
        self.buckets = self._make_buckets(int(bucket_mb * 2 ** 20))
        self._bucket_of = {id(p): b for b in self.buckets for p in b.params}
        self._next_launch = 0
        self._syncing = True  # False inside no_sync()
        self._pending_update = None  # mode "forward": (optimizer, lr) waiting to be applied
        self._hook_removers = [p.register_grad_ready_hook(self._on_grad_ready) for p in params]
        if mode == "forward":
            self._install_pre_forward_waits()

    # ---- set-up ---------------------------------------------------------------------------
    def broadcast_state(self) -> None:
        """Make every rank's parameters and buffers equal to rank 0's."""
        self.comm.bcast(self.flat.data, root=0)
        for _, module in self.model.named_modules():
            for name, buf in module._buffers.items():
                module._buffers[name] = self.comm.bcast(buf, root=0)
                object.__setattr__(module, name, module._buffers[name])

    def _make_buckets(self, bucket_bytes: int) -> list[Bucket]:
        itemsize = self.flat.data.dtype.itemsize
        buckets, current, start = [], [], 0
        for p, offset in zip(self.flat.params, self.flat.offsets, strict=True):
            current.append(p)
            stop = offset + p.size
            if (stop - start) * itemsize >= bucket_bytes:
                buckets.append(Bucket(len(buckets), start, stop, current))
                current, start = [], stop
        if current:
            buckets.append(Bucket(len(buckets), start, self.flat.size, current))
        xp = backend.xp_of(self.flat.grad)
        for b in buckets:
            b.pending = len(b.params)
            if self.grad_dtype is not None:
                b.wire = xp.empty(b.stop - b.start, self.grad_dtype)
        return buckets

    def _install_pre_forward_waits(self) -> None:
        """Hook each module that owns parameters: before its forward, finish its buckets."""
        for _, module in self.model.named_modules():
            own = list(module._parameters.values())
            if not own:
                continue
            mine = tuple(sorted({self._bucket_of[id(p)].index for p in own}))
            module.register_forward_pre_hook(lambda m, _idx=mine: self._finish_buckets(_idx))

    # ---- backward side --------------------------------------------------------------------
    # The optimizer step consumes and zeroes the gradients, so a training loop needs no
    # zero_grad() call (in mode "forward" zeroing earlier would erase gradients still pending).
    def backward(self, loss, weight: float = None) -> None:
        """Backpropagate ``loss * weight`` (weight = n_local / n_global; default 1 / size)."""
        self._finish_pending_update()  # a layer unused in forward must not miss its update
        scale = (1.0 / self.comm.size) if weight is None else float(weight)
        (loss * scale).backward()

    def backward_empty(self) -> None:
        """This rank has no samples in this step: contribute zero gradients to every bucket."""
        self._finish_pending_update()
        for p in self.flat.params:
            self._on_grad_ready(p)

    def _on_grad_ready(self, p: Parameter) -> None:
        if not self._syncing:
            return
        bucket = self._bucket_of[id(p)]
        bucket.pending -= 1
        if bucket.pending < 0:
            raise RuntimeError(f"parameter {p.name!r} got two gradients in one backward before "
                               f"its bucket was reduced; call dp.step() between backward passes "
                               f"or accumulate inside dp.no_sync()")
        if self.mode != "sync":
            self._launch_ready()

    def _launch_ready(self) -> None:
        # Strict index order keeps the sequence of collectives identical on every rank.
        while self._next_launch < len(self.buckets) and self.buckets[self._next_launch].ready:
            self._launch(self.buckets[self._next_launch])
            self._next_launch += 1

    def _launch(self, b: Bucket) -> None:
        grad = self.flat.grad[b.start:b.stop]
        if b.wire is None:
            b.handle = self.comm.iallreduce(grad, op="sum", out=grad)
        else:
            b.wire[...] = grad  # compress (one cast kernel); reduced in the wire dtype
            b.handle = self.comm.iallreduce(b.wire, op="sum", out=b.wire)

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate gradients locally (micro-batches); the next backward outside reduces."""
        self._syncing = False
        try:
            yield
        finally:
            self._syncing = True

    # ---- waiting and updating -------------------------------------------------------------
    def _wait(self, b: Bucket) -> None:
        """PullWait: on NCCL the compute stream waits on the GPU; on MPI the host polls."""
        if b.handle is None:
            return
        b.handle.wait()
        if b.wire is not None:
            self.flat.grad[b.start:b.stop] = b.wire  # decompress into the fp32 gradients
        b.handle = None

    def reduce_gradients(self) -> None:
        """Launch whatever is not launched yet (sync mode, unused params) and wait for all.

        After this, ``flat.grad`` holds the global gradient on every rank (used directly by
        fp16 loss scaling, which must inspect it before the optimizer runs)."""
        self.synchronize()
        for b in self.buckets:
            if b.index >= self._next_launch:
                b.pending = 0
        self._launch_ready()
        for b in self.buckets:
            self._wait(b)
        for b in self.buckets:
            b.pending = len(b.params)
        self._next_launch = 0

    def start_deferred_update(self, optimizer) -> None:
        """Mode "forward": launch what is not launched yet and return; each layer waits for its
        buckets and applies its update (with this step's learning rate) before its next forward."""
        if self.mode != "forward":
            raise RuntimeError(f"start_deferred_update is for mode 'forward', not {self.mode!r}")
        self._finish_pending_update()
        for b in self.buckets:
            if b.index >= self._next_launch:
                b.pending = 0
        self._launch_ready()
        self._pending_update = (optimizer, _current_lr(optimizer), set())

    def step(self, optimizer) -> None:
        """Finish the reduction and update (mode "forward": start it; see above). The plain
        sequence without mixed-precision handling: ``mpinet.training.TrainStep`` is the full one
        (loss scaling, the overflow check of compressed gradients, clipping, CUDA graphs)."""
        if self.mode == "forward":
            self.start_deferred_update(optimizer)
            return
        if self.grad_dtype is not None:
            raise RuntimeError("compressed gradients (grad_dtype) can overflow: update through "
                               "mpinet.training.TrainStep, which checks and skips such steps")
        self.reduce_gradients()
        optimizer.step()
        self.flat.zero_grad()  # the gradients are consumed: the next step starts from zero

    def _finish_buckets(self, indices) -> None:
        """Pre-forward hook (mode "forward"): wait for these buckets and apply their updates."""
        if self._pending_update is None:
            return
        optimizer, lr, done = self._pending_update
        todo = [i for i in indices if i not in done]
        if not todo:
            return
        for i in todo:
            b = self.buckets[i]
            self._wait(b)
            _step_slice(optimizer, self.flat, b.start, b.stop, lr)
            self.flat.zero_grad_slice(b.start, b.stop, b.params)  # consumed; next starts at 0
            done.add(i)
        if len(done) == len(self.buckets):
            self._end_pending_update()

    def _finish_pending_update(self) -> None:
        if self._pending_update is not None:
            self._finish_buckets(range(len(self.buckets)))

    def _end_pending_update(self) -> None:
        optimizer, _, _ = self._pending_update
        self._pending_update = None
        _finish_step(optimizer)
        for b in self.buckets:
            b.pending = len(b.params)
        self._next_launch = 0

    def synchronize(self) -> None:
        """Apply any update still pending (mode "forward"): call before eval or checkpoints."""
        self._finish_pending_update()

    def zero_grad(self) -> None:
        """Discard accumulated gradients (step() already zeroes the ones it consumed)."""
        self.synchronize()
        self.flat.zero_grad()

    def average_buffers(self) -> None:
        """Average floating buffers (BN running statistics) over ranks, e.g. before evaluation.
        In place: a CUDA graph of the training step keeps updating the arrays it captured."""
        for _, module in self.model.named_modules():
            for name, buf in list(module._buffers.items()):
                if buf.dtype.kind == "f":
                    if buf.flags.c_contiguous:
                        self.comm.allreduce(buf, op="mean", out=buf)
                    else:
                        module.update_buffer_(name, self.comm.allreduce(
                            backend.xp_of(buf).ascontiguousarray(buf), op="mean"))

    def close(self) -> None:
        for remove in self._hook_removers:
            remove()


def _current_lr(optimizer):
    return getattr(optimizer, "lr", None)


def _step_slice(optimizer, flat: FlatParameters, start: int, stop: int, lr) -> None:
    """Update one bucket's slice of the flat parameters with the optimizer's math."""
    if not hasattr(optimizer, "step_slice"):
        raise TypeError(f"{type(optimizer).__name__} cannot update one bucket at a time; "
                        f"DataParallel(mode='forward') needs an optimizer built on the flat "
                        f"parameters (optimizer flat=dp.flat), or use mode='backward'")
    optimizer.step_slice(start, stop, lr=lr)


def _finish_step(optimizer) -> None:
    if hasattr(optimizer, "finish_step"):
        optimizer.finish_step()
