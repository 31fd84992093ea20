"""Replay a whole training step as one CUDA graph: one launch per step instead of ~1,000.

Why: eager CuPy costs host time per kernel (~29 us per launch measured on the GPU machines:
a ResNet-50 bf16 step of 1,063 kernels kept the GPU waiting on the host for 29% of the step).
On several ranks it costs twice: each rank's host jitter also delays the other ranks'
allreduces. Captured once, the step is replayed by a single launch.

How (the recipe of ``torch.cuda.graphs``, with CuPy):
  * The first ``warmup`` steps of each input shape run eagerly: cuDNN plans are built, label
    checks done, workspaces and the optimizer state allocated.
  * The step is captured on a side stream, with every allocation made during the capture served
    by a private memory pool: the graph owns that memory, and nothing outside it can be handed
    the same addresses later.
  * Inputs are copied into static buffers before each replay; the outputs (loss and metric
    sums) are copied out after it, so the caller never holds graph memory.
  * What changes between steps lives in device memory that replays read: the optimizer's
    learning rate and bias corrections (``Optimizer.write_device_hyper`` before each replay),
    batch norm's running statistics and counters (updated in place), and the dropout
    generators' call counters (advanced by a kernel, so each replay draws fresh masks).
  * The data-parallel allreduces started from the autograd hooks are captured too, on the NCCL
    stream (forked from the capture and joined back by events), so the graph keeps the overlap
    of communication with backprop. Each replay is put under the communicator's watchdog.

What a graph cannot replay faithfully is refused up front by ``check_capturable`` with the
reason: fp16 loss scaling and compressed gradients (their overflow checks read values on the
host), SyncBatchNorm (it reads the global count on the host), the "forward" data-parallel mode
and host-staged (hierarchical, MPI) communicators.
"""
from __future__ import annotations

from .. import backend
from ..parallel.sync_batchnorm import SyncBatchNorm

#: Eager steps per input shape before the capture (plans, workspaces, optimizer state).
DEFAULT_WARMUP = 3


def check_capturable(step) -> None:
    """Raise ValueError naming what in this ``TrainStep`` (mpinet.training.step) a CUDA graph
    could not replay correctly."""
    problems = []
    if not backend.current().is_gpu:
        problems.append("the backend is the CPU (CUDA graphs need a GPU)")
    if step.precision.loss_scaling:
        problems.append("precision fp16 (dynamic loss scaling reads an overflow flag on the "
                        "host every step); use bf16")
    if step.dp.grad_dtype is not None:
        problems.append("compressed gradients (grad_dtype: the overflow check reads the host)")
    if step.dp.mode == "forward":
        problems.append("dp_mode 'forward' (use 'backward', the default)")
    if step.comm.size > 1 and step.comm.name != "nccl":
        problems.append(f"the {step.comm.name!r} communicator (its host-staged transfers cannot "
                        f"be captured; use comm 'nccl')")
    sync = [name for name, m in step.network.named_modules() if isinstance(m, SyncBatchNorm)]
    if sync:
        problems.append(f"SyncBatchNorm layers {sync[:3]}{'...' if len(sync) > 3 else ''} (they "
                        f"read the global value count on the host every step)")
    if problems:
        raise ValueError("cannot train with a CUDA graph of the step: " + "; ".join(problems)
                         + ". Train without --cuda-graph (compile(cuda_graph=False)) or change "
                           "the above.")


class StepGraphs:
    """CUDA graphs of one training step, one per input signature, captured after warm-up.

    ``step_fn(x, y, *args) -> dict of device arrays`` does the device work of one step
    (forward, backward, allreduce, update) on whatever arrays it gets; ``run(x, y, *args)`` runs
    it eagerly for the first ``warmup`` calls with the same shapes, dtypes and ``args``, then
    captures it and replays it from then on. ``args`` are host values the step bakes in (e.g.
    the global batch size): each distinct tuple gets its own graph.
    """

    def __init__(self, step_fn, optimizer, comm=None, warmup: int = DEFAULT_WARMUP,
                 state_arrays=None):
        if warmup < 1:
            raise ValueError(f"StepGraphs: warmup must be >= 1 eager step, got {warmup}")
        self.step_fn = step_fn
        self.optimizer = optimizer
        self.comm = comm
        self.warmup = warmup
        # state_arrays() -> the arrays the step's state lives in (buffers, parameters, optimizer
        # state). A graph replays on the ones it captured: if code outside the step replaced
        # one (rebinding instead of writing in place), the graphs are dropped and recaptured.
        self.state_arrays = state_arrays
        self.recaptures = 0
        self._seen: dict = {}    # key -> eager steps run so far
        self._graphs: dict = {}  # key -> _CapturedStep
        self.replays = 0

    def run(self, x, y, *args) -> dict:
        key = (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype, args)
        captured = self._graphs.get(key)
        if captured is not None and not captured.state_is(self._state()):
            self.reset()  # some state array was replaced: the graphs would use stale ones
            self.recaptures += 1
            captured = None
        if captured is None:
            seen = self._seen.get(key, 0)
            if seen < self.warmup:
                self._seen[key] = seen + 1
                return self.step_fn(x, y, *args)
            captured = self._graphs[key] = _CapturedStep(
                lambda sx, sy: self.step_fn(sx, sy, *args), self.optimizer, x, y, self._state())
            outputs = captured.replay(x, y, first=True)
        else:
            outputs = captured.replay(x, y)
        self.replays += 1
        if self.comm is not None:
            self.comm.track_device_work(captured.done, f"CUDA-graph replay of the training "
                                                       f"step (replay {self.replays})")
        return outputs

    def _state(self) -> tuple:
        return tuple(self.state_arrays()) if self.state_arrays is not None else ()

    def reset(self) -> None:
        """Forget every graph: after parameters, buffers or optimizer state were replaced by
        new arrays (loading a checkpoint), the graphs would still use the old ones."""
        self._graphs.clear()
        self._seen.clear()


class _CapturedStep:
    def __init__(self, step_fn, optimizer, x, y, state=()):
        import cupy as cp

        self._cp = cp
        self.state = state  # referenced: the graph writes into these arrays
        self.optimizer = optimizer
        caller = cp.cuda.get_current_stream()
        self.static_x = cp.empty_like(x)
        self.static_y = cp.empty_like(y)
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.pool = cp.cuda.MemoryPool()
        # The capture records no work, so the step it describes has not run yet: its
        # hyper-parameters are written now (the capture itself books the step on the host).
        optimizer.write_device_hyper()
        self.stream.wait_event(_event(cp, caller))  # earlier eager steps and the hyper write
        with cp.cuda.using_allocator(self.pool.malloc), self.stream:
            self.stream.begin_capture()
            try:
                outputs = step_fn(self.static_x, self.static_y)
            except BaseException as error:
                try:
                    self.stream.end_capture()
                except Exception:
                    pass
                raise RuntimeError(
                    f"capturing the training step as a CUDA graph failed ({type(error).__name__}:"
                    f" {error}); the model's state may be inconsistent now: restart without "
                    f"--cuda-graph (compile(cuda_graph=False))") from error
            self.graph = self.stream.end_capture()
        self.outputs = outputs
        self.done = None

    def state_is(self, state: tuple) -> bool:
        """True if ``state`` holds the very arrays this graph was captured on."""
        return len(state) == len(self.state) and all(
            a is b for a, b in zip(state, self.state, strict=True))

    def replay(self, x, y, first: bool = False) -> dict:
        """Copy in ``x, y``, run the graph after the caller's queued work, and return copies of
        its outputs; the caller's stream waits for the graph (no host synchronisation)."""
        cp = self._cp
        caller = cp.cuda.get_current_stream()
        if not first:
            self.optimizer.write_device_hyper()
        self.static_x[...] = x
        self.static_y[...] = y
        self.stream.wait_event(_event(cp, caller))
        self.graph.launch(stream=self.stream)
        self.done = _event(cp, self.stream)
        caller.wait_event(self.done)
        if not first:
            self.optimizer.count_replayed_step()
        return {k: (v.copy() if backend.is_gpu_array(v) else v) for k, v in self.outputs.items()}


def _event(cp, stream):
    """A fresh event recorded on ``stream`` (no timing: cheaper to record and wait on)."""
    event = cp.cuda.Event(disable_timing=True)
    event.record(stream)
    return event
