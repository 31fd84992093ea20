"""Collectives on NumPy host arrays through MPI's non-blocking collectives.

float16 and bfloat16: MPI has no predefined op for them (no bfloat16 type at all), so they move
as raw 16-bit words (MPI.UINT16_T) and are summed by a user-defined op that widens to float32,
adds, and rounds back: the same per-step rounding NCCL applies. It runs in Python, so it is slow
(host bf16 gradients are a fallback, not a fast path); float32 uses MPI's native sum.
"""
from __future__ import annotations

import numpy as np

from mpinet import backend
from mpinet.comm.base import Communicator, Handle, OpInfo

_HALF = ("float16", "bfloat16")
_user_sum_ops: dict = {}


def _half_sum_op(dtype):
    """An MPI user op summing 16-bit floats stored as uint16 words (cached per dtype)."""
    from mpi4py import MPI

    name = np.dtype(dtype).name
    if name not in _user_sum_ops:
        dt = np.dtype(dtype)

        def add(inbuf, inoutbuf, _datatype):
            a = np.frombuffer(inbuf, dtype=dt)
            b = np.frombuffer(inoutbuf, dtype=dt)
            b[...] = (a.astype(np.float32) + b.astype(np.float32)).astype(dt)

        _user_sum_ops[name] = MPI.Op.Create(add, commute=True)
    return _user_sum_ops[name]


def buffer_and_op(x):
    """(MPI buffer spec, MPI sum op) for a contiguous host array of a supported dtype."""
    from mpi4py import MPI

    if x.dtype.name in _HALF:
        return [x.view(np.uint16), MPI.UINT16_T], _half_sum_op(x.dtype)
    return x, MPI.SUM


class RequestsHandle(Handle):
    """MPI requests plus a host-side finishing step (mean division, unpadding) run once."""

    def __init__(self, comm: Communicator, reqs, result, info: OpInfo, finish=None, keep=()):
        self._comm, self._reqs, self._result, self._info = comm, reqs, result, info
        self._finish = finish
        self._keep = keep  # buffers MPI still reads/writes: must outlive the requests
        self._done = False

    def _complete(self):
        if self._finish is not None:
            self._finish()
        self._done, self._reqs, self._keep = True, None, ()

    def test(self) -> bool:
        from mpi4py import MPI

        if not self._done and MPI.Request.Testall(self._reqs):
            if self._comm.check:  # its signature check completes beside it (done: no wait)
                self._comm._sig.settle_through(self._info.seq)
            self._complete()
        return self._done

    def wait(self):
        if not self._done:
            self._comm._wait_requests(self._reqs, self._info)
            self._complete()
        return self._result


def divide_by(arr, n):
    """A finishing step that turns a sum into a mean, in place (keeps float16/bfloat16)."""
    def finish():
        arr[...] = arr / n

    return finish


# Posting functions: start one MPI collective on host arrays, return its request. Shared by the
# mpi impl and the hierarchical one (which runs them on host copies of GPU arrays).

def post_allreduce(comm, x, out):
    from mpi4py import MPI

    if out is x:
        buf, mpi_op = buffer_and_op(x)
        return comm.Iallreduce(MPI.IN_PLACE, buf, op=mpi_op)
    src, mpi_op = buffer_and_op(x)
    return comm.Iallreduce(src, buffer_and_op(out)[0], op=mpi_op)


def post_bcast(comm, x, root):
    return comm.Ibcast(buffer_and_op(x)[0], root=root)


def post_allgather(comm, x, out):
    return comm.Iallgather(buffer_and_op(x)[0], buffer_and_op(out)[0])


def post_reduce_scatter(comm, x, out):
    src, mpi_op = buffer_and_op(x)
    return comm.Ireduce_scatter_block(src, buffer_and_op(out)[0], op=mpi_op)


class MpiCommunicator(Communicator):
    name = "mpi"

    def __init__(self, mpi_comm=None, timeout_s=None, debug=None, layout=None):
        super().__init__(mpi_comm, timeout_s, debug, layout)
        # Data collectives on their own comm: never confused with control traffic.
        self._data = self.mpi_comm.Dup()

    def _owned_comms(self):
        return super()._owned_comms() + [self._data]

    def _accept_array_type(self, op, x):
        if backend.is_gpu_array(x):
            raise TypeError(f"mpi {op}: x is a CuPy array with shape {tuple(x.shape)} and dtype "
                            f"{x.dtype}, but the MPI here is not CUDA-aware (device pointers "
                            f"crash it); use impl='nccl' or 'hierarchical', or copy to host "
                            f"with x.get()")

    def _iallreduce(self, x, op, out, info):
        req = post_allreduce(self._data, x, out)
        finish = divide_by(out, self.size) if op == "mean" else None
        return RequestsHandle(self, [req], out, info, finish, keep=(x, out))

    def _ibcast(self, x, root, info):
        return RequestsHandle(self, [post_bcast(self._data, x, root)], x, info, keep=(x,))

    def _iallgather(self, x, out, info):
        req = post_allgather(self._data, x, out)
        return RequestsHandle(self, [req], out, info, keep=(x, out))

    def _ireduce_scatter(self, x, op, out, info):
        req = post_reduce_scatter(self._data, x, out)
        finish = divide_by(out, self.size) if op == "mean" else None
        return RequestsHandle(self, [req], out, info, finish, keep=(x, out))
