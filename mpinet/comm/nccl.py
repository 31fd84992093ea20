"""Collectives on CuPy arrays through NCCL (cupy.cuda.nccl), one rank per GPU.

Ordering without host syncs: NCCL runs on its own non-blocking stream. Before each collective an
event recorded on the caller's (compute) stream makes the NCCL stream wait, so the collective sees
finished gradients; ``handle.wait()`` makes the compute stream wait on the collective's done
event and returns at once, so the host keeps queuing work (the GPU does the waiting).

No hangs: GPU waits cannot time out by themselves, so a watchdog thread looks at the oldest
unfinished collective every half second; past ``timeout_s`` (or on an NCCL async error) it aborts
the NCCL communicator and MPI_Aborts the job with a report. Host waits (barrier) poll the event
with the same deadline.
"""
from __future__ import annotations

import collections
import os
import socket
import threading
import time

from mpinet import backend
from mpinet.comm import failure
from mpinet.comm.base import Communicator, Handle, OpInfo

# ncclDataType_t / ncclRedOp_t values (stable NCCL ABI; cupy does not export AVG or BFLOAT16 in
# every version).
NCCL_TYPES = {"int32": 2, "int64": 4, "float16": 6, "float32": 7, "float64": 8, "bfloat16": 9}
NCCL_SUM, NCCL_AVG = 0, 4
_AVG_MIN_VERSION = 21000  # ncclAvg appeared in NCCL 2.10


PRIORITY_ENV = "MPINET_NCCL_PRIORITY"


def _stream_priority() -> int:
    """The NCCL stream's priority: the device's highest by default, so a collective's blocks are
    scheduled as soon as its inputs are ready instead of queuing behind the blocks of the
    compute kernels already in flight (which delays the allreduce of the last bucket, the part
    no compute can hide). $MPINET_NCCL_PRIORITY=normal gives the default priority."""
    choice = os.environ.get(PRIORITY_ENV, "high").strip().lower()
    if choice not in ("high", "normal"):
        raise ValueError(f"${PRIORITY_ENV}={choice!r}: use 'high' (default) or 'normal'")
    # CUDA clamps an out-of-range priority to the device's range (lower is higher; the
    # greatest is -5 on recent GPUs), and CuPy 14 does not expose the range itself.
    return 0 if choice == "normal" else -100


class DeviceLane:
    """One NCCL communicator over ``mpi_comm``, its stream, in-flight list and watchdog.

    Shared by the nccl impl (world) and the hierarchical impl (node-local). ``owner`` supplies
    ``timeout_s``, ``_abort_timeout(info, extra)`` and ``_gate(info)``.
    """

    def __init__(self, mpi_comm, owner: Communicator):
        self._mpi = mpi_comm
        self._owner = owner
        self.nccl = None
        self.stream = None
        self.device_id = None
        self._inflight = collections.deque()  # (done event, OpInfo, post time, kept arrays)
        self._lock = threading.RLock()

    def ensure(self, x, op: str):
        """Create the NCCL communicator on first use (after the caller chose its GPU)."""
        cp = backend.xp_of(x)
        if self.nccl is None:
            from cupy.cuda import nccl

            # NCCL init blocks until every rank joins: gate with a timed barrier first so a
            # missing rank is reported instead of hanging in ncclCommInitRank.
            rank, size = self._mpi.Get_rank(), self._mpi.Get_size()
            setup = OpInfo(self._owner.name, "NCCL communicator setup", 0, 0, "-")
            self._owner._gate(setup)
            # Two ranks on one GPU would fail inside NCCL (NCCL_ERROR_INVALID_USAGE, then an
            # abort): every rank sees the same list, so every rank refuses alike, in words.
            places = self._owner._allgather_payload(
                (socket.gethostname(), str(cp.cuda.Device().pci_bus_id)), setup, self._mpi)
            if len(set(places)) < len(places):
                host, gpu = next(p for p in places if places.count(p) > 1)
                ranks = [r for r, p in enumerate(places) if p == (host, gpu)]
                raise ValueError(f"{self._owner.name}: ranks {ranks} (of this communicator) on "
                                 f"host {host} all use GPU {gpu}; NCCL needs one GPU per rank. "
                                 f"Start at most as many ranks per node as it has GPUs, and call "
                                 f"backend.select_device(local_rank) on each")
            uid = self._owner._bcast_payload(nccl.get_unique_id() if rank == 0 else None, 0,
                                             setup, self._mpi)
            self.device_id = cp.cuda.Device().id
            with failure.deadline("NCCL communicator setup", self._owner.timeout_s):
                self.nccl = nccl.NcclCommunicator(size, uid, rank)
            self.stream = cp.cuda.Stream(non_blocking=True, priority=_stream_priority())
            self.avg = nccl.get_version() >= _AVG_MIN_VERSION
            threading.Thread(target=self._watchdog, args=(self.device_id,),
                             name="mpinet-nccl-watchdog", daemon=True).start()
        if x.device.id != self.device_id:
            raise ValueError(f"{self._owner.name} {op}: x with shape {tuple(x.shape)} ({x.dtype}) "
                             f"is on GPU {x.device.id} but this communicator's NCCL runs on GPU "
                             f"{self.device_id}; create arrays under backend.select_device(...)")
        return cp

    def launch(self, cp, fn, info: OpInfo, keep, after_compute: bool = True):
        """Run ``fn(nccl_comm, stream_ptr)`` on the NCCL stream, after the compute stream's work
        queued so far unless ``after_compute`` is False (for steps whose inputs come from host
        or from earlier work on this stream: waiting would only delay them)."""
        if after_compute:
            ready = cp.cuda.Event(disable_timing=True)
            ready.record(cp.cuda.get_current_stream())
            self.stream.wait_event(ready)
        fn(self.nccl, self.stream.ptr)
        done = cp.cuda.Event(disable_timing=True)
        done.record(self.stream)
        if self.stream.is_capturing():
            # Recorded into a CUDA graph (the NCCL stream joined the capture through ``ready``):
            # this event never fires by itself and must not be queried. The graph runner
            # watches each replay instead (``track``).
            return done
        self.track(done, info, keep)
        return done

    def track(self, done, info: OpInfo, keep=()) -> None:
        """Watch ``done`` (an event that fires when this lane's queued work has finished) for
        the timeout; ``keep`` stays referenced until then (arrays the GPU still uses)."""
        with self._lock:
            # Drop finished entries: their arrays may now be freed (the GPU is done with them).
            while self._inflight and self._inflight[0][0].done:
                self._inflight.popleft()
            self._inflight.append((done, info, time.monotonic(), keep))

    def host_wait(self, event, info: OpInfo) -> None:
        """Block the host until ``event`` fires, checking NCCL errors; abort past the timeout."""
        def finished():
            self._check_async(info)
            return event.done

        self._owner.wait_until(finished, info, extra=lambda: "; the NCCL stream is still busy")

    def drain(self, info: OpInfo) -> None:
        with self._lock:
            last = self._inflight[-1][0] if self._inflight else None
        if last is not None:
            self.host_wait(last, info)

    def _check_async(self, info: OpInfo) -> None:
        # Under the lock: close()/abort() from another thread must not free the comm mid-call.
        with self._lock:
            if self.nccl is None:
                return
            try:
                self.nccl.check_async_error()
                return
            except Exception as err:  # NcclError: a peer died or the network failed
                error = err
        self._owner._abort_timeout(info, extra=f"; NCCL reported an asynchronous error: {error}")

    def _watchdog(self, device_id):
        import cupy

        # CUDA's current device is per thread: without this, the first event query here would
        # create a context on GPU 0 (hundreds of MB) in every rank's process.
        cupy.cuda.Device(device_id).use()
        while self.nccl is not None:
            time.sleep(min(0.5, self._owner.timeout_s / 4))
            with self._lock:
                pending = next((e for e in self._inflight if not e[0].done), None)
            if pending is None:
                continue
            self._check_async(pending[1])
            if time.monotonic() - pending[2] > self._owner.timeout_s:
                self._owner._abort_timeout(
                    pending[1], extra="; detected by the NCCL watchdog (the GPU is stuck in it)")

    def close(self) -> None:
        with self._lock:
            nccl, self.nccl = self.nccl, None  # also stops the watchdog loop
        if nccl is not None:
            nccl.destroy()
        self._mpi.Free()

    def abort(self) -> None:
        with self._lock:
            nccl, self.nccl = self.nccl, None
        if nccl is not None:
            nccl.abort()


class EventHandle(Handle):
    """A collective queued on the NCCL stream; ``done`` fires when it has finished on the GPU."""

    def __init__(self, cp, done, result, keep, finish=None):
        self._cp, self._done, self._result = cp, done, result
        self._keep = keep  # arrays the NCCL stream still uses
        self._finish = finish  # runs on the compute stream after it waits (e.g. unpadding)
        self._waited = False

    def test(self) -> bool:
        return self._done.done

    def wait(self):
        if not self._waited:
            self._cp.cuda.get_current_stream().wait_event(self._done)
            if self._finish is not None:
                self._finish()
            self._waited, self._keep = True, ()
        return self._result


class NcclCommunicator(Communicator):
    name = "nccl"
    dtypes = tuple(NCCL_TYPES)

    def __init__(self, mpi_comm=None, timeout_s=None, debug=None, layout=None):
        super().__init__(mpi_comm, timeout_s, debug, layout)
        self._lane = DeviceLane(self.mpi_comm.Dup(), self)

    def _accept_array_type(self, op, x):
        if not backend.is_gpu_array(x):
            raise TypeError(f"nccl {op}: x is a {type(x).__name__} with shape {tuple(x.shape)} "
                            f"({x.dtype}); NCCL moves GPU arrays only: pass a CuPy array "
                            f"(backend.to_device(x)) or use impl='mpi' for host arrays")

    def _before_abort(self):
        self._lane.abort()

    def track_device_work(self, done, what: str) -> None:
        if self._lane.nccl is not None:
            self._lane.track(done, OpInfo(self.name, what, self._tracker.seq, 0, "-"))

    def close(self):
        super().close()
        self._lane.close()

    def _drain(self):
        if self._lane.nccl is not None:
            self._lane.drain(OpInfo(self.name, "barrier (finishing queued NCCL work)",
                                    self._tracker.seq, 0, "-"))

    def _run(self, x, out, info, fn, finish=None):
        cp = self._lane.ensure(x, info.op)
        done = self._lane.launch(cp, fn, info, keep=(x, out))
        return EventHandle(cp, done, out, (x, out), finish)

    def _iallreduce(self, x, op, out, info):
        t = NCCL_TYPES[x.dtype.name]
        native_avg = op == "mean" and self._lane_avg(x)
        nccl_op = NCCL_AVG if native_avg else NCCL_SUM
        finish = None
        if op == "mean" and not native_avg:
            def finish():
                out[...] = out / self.size

        return self._run(x, out, info, lambda c, s: c.allReduce(
            x.data.ptr, out.data.ptr, x.size, t, nccl_op, s), finish)

    def _lane_avg(self, x) -> bool:
        self._lane.ensure(x, "allreduce")
        return self._lane.avg

    def _ibcast(self, x, root, info):
        t = NCCL_TYPES[x.dtype.name]
        return self._run(x, x, info, lambda c, s: c.bcast(x.data.ptr, x.size, t, root, s))

    def _iallgather(self, x, out, info):
        t = NCCL_TYPES[x.dtype.name]
        return self._run(x, out, info, lambda c, s: c.allGather(
            x.data.ptr, out.data.ptr, x.size, t, s))

    def _ireduce_scatter(self, x, op, out, info):
        t = NCCL_TYPES[x.dtype.name]
        native_avg = op == "mean" and self._lane_avg(x)
        finish = None
        if op == "mean" and not native_avg:
            def finish():
                out[...] = out / self.size

        return self._run(x, out, info, lambda c, s: c.reduceScatter(
            x.data.ptr, out.data.ptr, out.size, t, NCCL_AVG if native_avg else NCCL_SUM, s),
            finish)
