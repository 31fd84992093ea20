"""The Communicator interface, its handles, input checks, and the no-hang machinery they share.

Subclasses (mpi.py, nccl.py, hierarchical.py) implement only the ``_i<op>`` methods that start a
collective on already-checked arrays; everything a user can get wrong is refused here, with the
op, shape, dtype and the fix in the message. Blocking collectives are the non-blocking ones plus
``wait()``, so one code path carries timeouts and debug checks for both.

Every wait is bounded, the object collectives included: they move encoded bytes (wire.py) with
non-blocking MPI calls polled against the same deadline as the array collectives. While a wait
lasts, the peers' heartbeats (arrival.py) are watched, so a stopped, dead or cut-off rank ends
the job after ``silence_s`` naming it, its host and the op, instead of after the full timeout.
Every collective also posts a tiny signature check (signature.py): a rank that entered a
different collective (op, element count, dtype) raises ``CommError`` naming both sides.
"""
from __future__ import annotations

import functools
import operator
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from mpinet import backend
from mpinet.comm import failure, topology, wire
from mpinet.comm.arrival import OPS, ArrivalTracker
from mpinet.comm.signature import ENV as CHECK_ENV
from mpinet.comm.signature import SignatureCheck

TIMEOUT_ENV = "MPINET_COMM_TIMEOUT"
DEBUG_ENV = "MPINET_COMM_DEBUG"
SILENCE_ENV = "MPINET_COMM_HEARTBEAT_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_SILENCE_S = 30.0
WATCH_EVERY_S = 0.5  # how often a long wait looks at the peers' heartbeats

DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64", "int32", "int64")
REDUCE_OPS = ("sum", "mean")
OBJ_REDUCE_OPS = ("sum", "max", "min", "lor", "land")
_SIG_REDUCE = REDUCE_OPS + OBJ_REDUCE_OPS[1:]  # reduce-op codes in signatures
_OBJ_REDUCERS = {"sum": operator.add, "max": max, "min": min,
                 "lor": lambda a, b: bool(a) or bool(b), "land": lambda a, b: bool(a) and bool(b)}


class CommError(RuntimeError):
    """A collective was called wrongly (same on every rank, so raising cannot strand a peer)."""


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"${name}={raw!r} is not a number of seconds; "
                         f"set e.g. {name}={default:g} or unset it") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"${name}={raw!r} must be a positive, finite number of seconds")
    return value


def env_timeout_s() -> float:
    return _env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)


def env_silence_s() -> float:
    return _env_seconds(SILENCE_ENV, DEFAULT_SILENCE_S)


def env_check() -> bool:
    return os.environ.get(CHECK_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def env_debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def poll(test, deadline: float) -> bool:
    """Call ``test()`` until it is true (-> True) or ``time.monotonic()`` passes ``deadline``.

    MPI without an async-progress thread advances only inside MPI calls, so waiting *is* calling
    Test. Spin for the first 10 ms (latency of small messages), then yield the core between
    polls (ranks may outnumber cores). Never sleep: a large message moves in pipelined chunks
    that each need a Test to advance, and a 1 ms sleep per poll once made a 1 GiB hierarchical
    allreduce take 11 s instead of about 0.5 s.
    """
    start = time.monotonic()
    while not test():
        now = time.monotonic()
        if now > deadline:
            return False
        if now - start > 0.01:
            os.sched_yield()
    return True


@dataclass(frozen=True)
class OpInfo:
    """What a collective is, for timeout and mismatch reports."""

    impl: str
    op: str
    seq: int
    count: int
    dtype: str
    detail: str = ""

    def describe(self) -> str:
        return (f"{self.impl} {self.op} (collective #{self.seq}) of {self.count} elements "
                f"of {self.dtype}{self.detail}")


class Handle:
    """A started collective. ``wait()`` returns its result array; ``test()`` says if it is done."""

    def wait(self):
        raise NotImplementedError

    def test(self) -> bool:
        raise NotImplementedError


def wait_all(handles) -> list:
    """Wait for every handle, in order; returns their results."""
    return [h.wait() for h in handles]


_DTYPE_NAME_CACHE: dict = {}


def _dtype_name(dtype) -> str:
    # Cached: numpy's dtype.name is slow (microseconds), and every collective asks twice.
    name = _DTYPE_NAME_CACHE.get(dtype)
    if name is None:
        name = _DTYPE_NAME_CACHE[dtype] = np.dtype(dtype).name
    return name


class Communicator:
    """Collectives on arrays over one MPI communicator (see the package docstring for the API)."""

    name = "base"
    dtypes: tuple[str, ...] = DTYPE_NAMES

    def __init__(self, mpi_comm=None, timeout_s=None, debug=None, layout=None, check=None):
        if mpi_comm is None:
            from mpi4py import MPI

            mpi_comm = MPI.COMM_WORLD
        self.mpi_comm = mpi_comm
        self.timeout_s = float(timeout_s) if timeout_s is not None else env_timeout_s()
        # A peer whose heartbeat stops ends the job after this long (never longer than timeout).
        self.silence_s = min(env_silence_s(), self.timeout_s)
        self.debug = bool(debug) if debug is not None else env_debug()
        self.check = bool(check) if check is not None else env_check()
        self.waited_s = 0.0  # host time spent blocked in this communicator's waits (stragglers)
        # Communicator creation is blocking MPI with no non-blocking form: bound it by a timer.
        with failure.deadline("communicator setup", self.timeout_s, mpi_comm):
            topo, self._local_comm, self._cross_comm = layout or topology.build(mpi_comm)
            # Control messages (object collectives, barrier, debug signatures) get their own
            # comm so they can never match a data collective that a peer has posted.
            self._ctl = mpi_comm.Dup()
            self._sig_comm = mpi_comm.Dup()
            self._tracker = ArrivalTracker(self._ctl, self.timeout_s)
        self.topology = topo
        self.rank, self.size = topo.rank, topo.size
        self.local_rank, self.local_size = topo.local_rank, topo.local_size
        self.node, self.num_nodes = topo.node, topo.num_nodes
        self._sig = SignatureCheck(self._sig_comm, self._poll_bounded, OPS, DTYPE_NAMES,
                                   _SIG_REDUCE)

    def __repr__(self):
        return (f"<{type(self).__name__} {self.name} rank {self.rank}/{self.size} "
                f"node {self.node}/{self.num_nodes} local {self.local_rank}/{self.local_size}>")

    def close(self) -> None:
        """Free the MPI resources (collective: every rank calls it). Optional: exit frees too."""
        self._drain()
        self._sig.settle_all()
        with failure.deadline("closing the communicator", self.timeout_s, self.mpi_comm):
            for c in self._owned_comms():
                c.Free()
            self._tracker.free()

    def _owned_comms(self) -> list:
        return [self._ctl, self._sig_comm, self._local_comm, self._cross_comm]

    def host_of(self, rank: int) -> str:
        """The host name rank ``rank`` (of this communicator) runs on."""
        return self._tracker.hosts[rank]

    def places(self) -> list[tuple[str, int]]:
        """(host, pid) of every rank: maps a launcher's "PID ... RUNNING AT host" to a rank."""
        return list(zip(self._tracker.hosts, self._tracker.pids, strict=True))

    # ---- checks -------------------------------------------------------------------------------

    def _accept_array_type(self, op: str, x) -> None:
        """Refuse array types this implementation cannot move (NumPy vs CuPy)."""

    def _check_array(self, op: str, x, what: str = "x") -> None:
        if not hasattr(x, "dtype") or not hasattr(x, "flags"):
            raise TypeError(f"{self.name} {op}: {what} must be a NumPy or CuPy array, got "
                            f"{type(x).__name__}; wrap it with xp.asarray(...)")
        self._accept_array_type(op, x)
        dt = _dtype_name(x.dtype)
        if dt not in self.dtypes:
            raise TypeError(f"{self.name} {op}: {what} with shape {tuple(x.shape)} has dtype {dt}, "
                            f"which this communicator does not support; cast it to one of "
                            f"{', '.join(self.dtypes)}")
        if not x.flags.c_contiguous:
            raise ValueError(f"{self.name} {op}: {what} with shape {tuple(x.shape)} and dtype {dt} "
                             f"is not C-contiguous; pass xp.ascontiguousarray({what}) (a copy)")

    def _check_reduce_op(self, op: str, x, reduce_op: str) -> None:
        if reduce_op not in REDUCE_OPS:
            raise ValueError(f"{self.name} {op}: op={reduce_op!r} is not supported; use 'sum' or "
                             f"'mean'")
        if reduce_op == "mean" and _dtype_name(x.dtype).startswith("int"):
            raise TypeError(f"{self.name} {op}: op='mean' on integer dtype {x.dtype} would "
                            f"truncate; use op='sum' and divide, or cast to a float dtype")

    def _resolve_out(self, op: str, x, out, shape):
        """``out`` as given (checked), or a new array of ``shape`` on x's device."""
        shape = tuple(int(s) for s in shape)
        if out is None:
            return backend.xp_of(x).empty(shape, dtype=x.dtype)
        if backend.is_gpu_array(out) != backend.is_gpu_array(x):
            raise TypeError(f"{self.name} {op}: out is a {type(out).__module__} array but x is a "
                            f"{type(x).__module__} array; put both on the same device")
        if tuple(out.shape) != shape or out.dtype != x.dtype:
            raise ValueError(f"{self.name} {op}: out has shape {tuple(out.shape)} and dtype "
                             f"{out.dtype}, expected shape {shape} and dtype {x.dtype}; pass a "
                             f"matching array or out=None to allocate one")
        if not out.flags.c_contiguous:
            raise ValueError(f"{self.name} {op}: out with shape {shape} is not C-contiguous; "
                             f"pass a contiguous array or out=None")
        return out

    # ---- bookkeeping every collective goes through ---------------------------------------------

    def _enter(self, op: str, x=None, reduce_op: str = "", root: int = -1) -> OpInfo:
        """Record arrival (for timeout reports), post the signature check, and in debug mode
        check shapes on every rank right away."""
        seq = self._tracker.enter(op)
        count = int(x.size) if x is not None else 0
        dtype = _dtype_name(x.dtype) if x is not None else "object"
        detail = ((f", op={reduce_op}" if reduce_op else "")
                  + (f", root={root}" if root >= 0 else ""))
        info = OpInfo(self.name, op, seq, count, dtype, detail)
        if self.check and not self.debug:  # debug mode's check below is stricter and eager
            self._sig.settle_finished()
            self._sig.post(info, (seq, OPS.index(op),
                                  DTYPE_NAMES.index(dtype) if x is not None else -1, count,
                                  _SIG_REDUCE.index(reduce_op) if reduce_op else -1, root))
        if self.debug:
            self._debug_check(seq, op, x, reduce_op, root)
        return info

    def _debug_check(self, seq, op, x, reduce_op, root) -> None:
        # Signature: seq, op, dtype, reduce op, root, ndim, shape[:6] (-1 padded), element count.
        sig = np.full(13, -1, np.int64)
        sig[0], sig[1], sig[4] = seq, OPS.index(op), root
        sig[3] = REDUCE_OPS.index(reduce_op) if reduce_op in REDUCE_OPS else -1
        if x is not None:
            sig[2] = DTYPE_NAMES.index(_dtype_name(x.dtype))
            sig[5] = x.ndim
            sig[6:6 + min(x.ndim, 6)] = x.shape[:6]
            sig[12] = x.size
        sigs = np.empty((self.size, 13), np.int64)
        req = self._ctl.Iallgather(sig, sigs)
        info = OpInfo(self.name, f"{op} (debug signature check)", seq, 13, "int64")
        self._poll_bounded([req], info)
        bad = [r for r in range(self.size) if not np.array_equal(sigs[r], sigs[0])]
        if bad:
            raise CommError(f"collective mismatch at collective #{seq}: rank 0 calls "
                            f"{_describe_sig(sigs[0])} but rank {bad[0]} calls "
                            f"{_describe_sig(sigs[bad[0]])} (ranks differing from rank 0: {bad}); "
                            f"every rank must issue the same collectives in the same order")

    def _wait_requests(self, reqs, info: OpInfo) -> None:
        """Finish a collective: settle its signature check (a mismatch raises CommError before
        its possibly wrong result is used), then poll its requests, bounded."""
        from mpi4py import MPI

        ticket = None
        if self.check:
            self._sig.settle_through(info.seq - 1)  # earlier ones: normally complete already
            ticket = self._sig.take(info.seq)
        if ticket is None:
            self._poll_bounded(reqs, info)
            return
        checked = []

        def test():  # one poll loop for both: no extra round of scheduling for the check
            if not checked:
                if not ticket.req.Test():
                    return False
                checked.append(True)
                self._sig.check(ticket)  # raises CommError on a mismatch, before the data
            return MPI.Request.Testall(reqs)

        self.wait_until(test, info)

    def _settle_checks(self) -> None:
        """Settle every posted signature check (before host-synchronising calls)."""
        if self.check:
            self._sig.settle_all()

    def _poll_bounded(self, reqs, info: OpInfo) -> None:
        """Poll MPI requests to completion, or abort the job with a report: after timeout_s,
        once a peer has been silent (no heartbeat) for silence_s or is seen stopped or gone, or
        when MPI reports a failed peer."""
        from mpi4py import MPI

        self.wait_until(lambda: MPI.Request.Testall(reqs), info)

    def wait_until(self, test, info: OpInfo, extra=lambda: "") -> None:
        """Call ``test()`` until true; the bounded, watched wait every blocking call goes through.
        ``extra()`` adds detail to a timeout report (e.g. which stage was stuck)."""
        self._tracker.waiting(info.seq)
        start = time.monotonic()
        try:
            self._watched_poll(test, info, extra)
        finally:
            self._tracker.waiting(0)
            self.waited_s += time.monotonic() - start

    def _watched_poll(self, test, info, extra) -> None:
        from mpi4py import MPI

        start = time.monotonic()
        deadline = start + self.timeout_s
        watching = False
        while True:
            try:
                if poll(test, min(deadline, time.monotonic() + WATCH_EVERY_S)):
                    return
            except MPI.Exception as err:  # a peer failed and MPI noticed (launcher kept us alive)
                self._abort_timeout(info, extra=f"{extra()}; MPI reported: {err}", failed=True)
            if time.monotonic() >= deadline:
                self._abort_timeout(info, extra=extra())
            if not watching:
                self._tracker.forget_beats()
                watching = True
            silent = self._tracker.silent_ranks(self.silence_s)
            if silent:
                failure.abort(f"{info.describe()} cannot complete: {'; '.join(silent)} "
                              f"(waited {time.monotonic() - start:.1f} s; heartbeat limit "
                              f"{self.silence_s:g} s, ${SILENCE_ENV}; timeout {self.timeout_s:g} "
                              f"s, ${TIMEOUT_ENV} or --comm-timeout){extra()}",
                              before_exit=self._main_thread_before_abort())

    def _main_thread_before_abort(self):
        return self._before_abort if threading.current_thread() is threading.main_thread() \
            else None

    def _abort_timeout(self, info: OpInfo, extra: str = "", failed: bool = False) -> None:
        from mpi4py import MPI

        # The NCCL watchdog calls this from its own thread: reading peers' positions is an MPI
        # call, safe there only under MPI_THREAD_MULTIPLE.
        if (threading.current_thread() is threading.main_thread()
                or MPI.Query_thread() == MPI.THREAD_MULTIPLE):
            who = self._tracker.missing_report(info.seq)
        else:
            who = "ranks that did not arrive: unknown (MPI lacks THREAD_MULTIPLE for the watchdog)"
        msg = (f"{info.describe()} " + ("failed" if failed else
               f"did not complete within {self.timeout_s:g} s (${TIMEOUT_ENV} or --comm-timeout)")
               + f"; {who}{extra}")
        # _before_abort (NCCL abort) frees a stuck GPU stream. Only the main thread may do it:
        # when the NCCL watchdog thread reports, the main thread may be blocked on that very
        # stream, and freeing it lets the main thread run on with an unfinished result before
        # MPI_Abort ends the process (seen on H100: "rank 0 finished" printed, even with the
        # NCCL abort placed right before MPI_Abort). There the process ends without it:
        # MPI_Abort, then os._exit, which does not wait for the GPU.
        on_main = threading.current_thread() is threading.main_thread()
        failure.abort(msg, before_exit=self._before_abort if on_main else None)

    def _before_abort(self) -> None:
        """Hook: release device-side resources (NCCL abort) before MPI_Abort."""

    def track_device_work(self, done, what: str) -> None:
        """Put device work that includes this communicator's collectives (a replayed CUDA graph
        of the training step) under its watchdog; ``done`` is an event that fires when the work
        has finished. Only device-side implementations have anything to watch."""

    # ---- the array collectives ----------------------------------------------------------------

    def iallreduce(self, x, op: str = "sum", out=None) -> Handle:
        self._check_array("allreduce", x)
        self._check_reduce_op("allreduce", x, op)
        out = self._resolve_out("allreduce", x, out, x.shape)
        return self._iallreduce(x, op, out, self._enter("allreduce", x, reduce_op=op))

    def allreduce(self, x, op: str = "sum", out=None):
        """Sum (or mean) of x over all ranks into ``out`` (x itself for in place; None: new)."""
        return self.iallreduce(x, op=op, out=out).wait()

    def ibcast(self, x, root: int = 0) -> Handle:
        self._check_array("bcast", x)
        if not 0 <= root < self.size:
            raise ValueError(f"{self.name} bcast: root={root} is not a rank of this "
                             f"{self.size}-rank communicator; use 0..{self.size - 1}")
        return self._ibcast(x, root, self._enter("bcast", x, root=root))

    def bcast(self, x, root: int = 0):
        """Overwrite x on every rank with root's x (in place); returns x."""
        return self.ibcast(x, root=root).wait()

    def iallgather(self, x) -> Handle:
        self._check_array("allgather", x)
        out = self._resolve_out("allgather", x, None, (self.size, *x.shape))
        return self._iallgather(x, out, self._enter("allgather", x))

    def allgather(self, x):
        """Every rank's x stacked by rank: shape (size, *x.shape)."""
        return self.iallgather(x).wait()

    def ireduce_scatter(self, x, op: str = "sum") -> Handle:
        self._check_array("reduce_scatter", x)
        self._check_reduce_op("reduce_scatter", x, op)
        if x.ndim != 1 or x.size % self.size:
            raise ValueError(f"{self.name} reduce_scatter: x has shape {tuple(x.shape)} "
                             f"({x.dtype}); it must be 1-D with a length divisible by the "
                             f"{self.size} ranks; flatten it and pad to a multiple of {self.size}")
        out = self._resolve_out("reduce_scatter", x, None, (x.size // self.size,))
        return self._ireduce_scatter(x, op, out, self._enter("reduce_scatter", x, reduce_op=op))

    def reduce_scatter(self, x, op: str = "sum"):
        """Rank r gets elements [r*m, (r+1)*m) of the reduced x, m = x.size // size."""
        return self.ireduce_scatter(x, op=op).wait()

    def barrier(self) -> None:
        """Wait until every rank is here and this rank's queued collectives have finished."""
        self._drain()
        self._gate(self._enter("barrier"))

    def _drain(self) -> None:
        """Hook: finish this rank's queued device work (host wait, with timeout)."""

    def _gate(self, info: OpInfo) -> None:
        """An Ibarrier polled with the timeout: after it, no peer is missing from the op."""
        self._settle_checks()
        self._poll_bounded([self._ctl.Ibarrier()], info)

    # ---- small Python values, over the control comm ---------------------------------------------
    # Encoded by wire.py (no pickle), moved as bytes with non-blocking MPI calls, so they are
    # bounded and watched exactly like the array collectives.

    def bcast_obj(self, obj, root: int = 0):
        if not 0 <= root < self.size:
            raise ValueError(f"{self.name} bcast_obj: root={root} is not a rank of this "
                             f"{self.size}-rank communicator; use 0..{self.size - 1}")
        info = self._enter("bcast_obj", root=root)
        self._settle_checks()  # a mismatch is reported before any payload moves
        return self._bcast_payload(obj, root, info, self._ctl)

    def allgather_obj(self, obj) -> list:
        info = self._enter("allgather_obj")
        self._settle_checks()
        return self._allgather_payload(obj, info, self._ctl)

    def allreduce_obj(self, value, op: str = "sum"):
        if op not in OBJ_REDUCE_OPS:
            raise ValueError(f"{self.name} allreduce_obj: op={op!r} is not supported; use one of "
                             f"{', '.join(OBJ_REDUCE_OPS)}")
        info = self._enter("allreduce_obj", reduce_op=op)
        self._settle_checks()
        # Reduced in rank order on every rank: the same result everywhere, bit for bit.
        values = self._allgather_payload(value, info, self._ctl)
        result = functools.reduce(_OBJ_REDUCERS[op], values)
        return bool(result) if op in ("lor", "land") else result

    def _bcast_payload(self, obj, root: int, info: OpInfo, comm):
        """``obj`` of ``root`` on every rank (a fresh copy, root included), bounded."""
        data = wire.encode(obj) if comm.Get_rank() == root else b""
        n = np.array([len(data)], np.int64)
        self._poll_bounded([comm.Ibcast(n, root=root)], info)
        buf = np.frombuffer(data, np.uint8).copy() if data else np.empty(int(n[0]), np.uint8)
        self._poll_bounded([comm.Ibcast(buf, root=root)], info)
        return wire.decode(buf)

    def _allgather_payload(self, obj, info: OpInfo, comm) -> list:
        """Every rank's ``obj``, in rank order, bounded."""
        from mpi4py import MPI

        data = np.frombuffer(wire.encode(obj), np.uint8)
        sizes = np.empty(comm.Get_size(), np.int64)
        self._poll_bounded([comm.Iallgather(np.array([data.size], np.int64), sizes)], info)
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        recv = np.empty(int(sizes.sum()), np.uint8)
        self._poll_bounded([comm.Iallgatherv(data, [recv, (sizes.tolist(), displs.tolist()),
                                                    MPI.BYTE])], info)
        return [wire.decode(recv[d:d + n]) for d, n in zip(displs, sizes, strict=True)]

    # ---- implemented by subclasses -------------------------------------------------------------

    def _iallreduce(self, x, op, out, info) -> Handle:
        raise NotImplementedError

    def _ibcast(self, x, root, info) -> Handle:
        raise NotImplementedError

    def _iallgather(self, x, out, info) -> Handle:
        raise NotImplementedError

    def _ireduce_scatter(self, x, op, out, info) -> Handle:
        raise NotImplementedError


def _describe_sig(sig) -> str:
    op = OPS[sig[1]]
    if sig[2] < 0:
        return f"{op} (collective #{sig[0]}{f', root={sig[4]}' if sig[4] >= 0 else ''})"
    shape = tuple(int(s) for s in sig[6:6 + min(int(sig[5]), 6)])
    extra = (f", op={REDUCE_OPS[sig[3]]}" if sig[3] >= 0 else "") + \
            (f", root={sig[4]}" if sig[4] >= 0 else "")
    return f"{op}(shape={shape}, dtype={DTYPE_NAMES[sig[2]]}{extra}) (collective #{sig[0]})"
