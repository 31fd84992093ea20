"""Moving the hierarchical communicator's cross-node shard through MPI, from device memory.

Two ways, chosen once per communicator by ``mpi_cuda_support()``:
  * CUDA-aware MPI: the device shard is handed to MPI as it is (no host copy).
  * Otherwise (the PyPI and Debian MPIs: a device pointer crashes them): the shard is copied to
    pinned host memory in chunks, each with its own event, and each chunk's MPI allreduce is
    posted as soon as its copy has landed, so device->host copies overlap the network instead
    of preceding it.

The pipelining is host logic over "is this chunk ready" and "post this chunk" callables, so it
is tested on the CPU with NumPy arrays standing in for device memory (tests/comm/
test_comm_staging.py). Posting order is what keeps ranks matched: every rank must post the
same MPI collectives in the same order on a communicator, whatever order its copies finish in.
``PostQueue`` posts strictly in the order chunks were queued (handle by handle, chunk by chunk),
and a chunk waits for every earlier one to be posted.
"""
from __future__ import annotations

import ctypes
import os
from collections import deque

CUDA_AWARE_ENV = "MPINET_MPI_CUDA_AWARE"  # "1"/"0": override the detection
CHUNK_ENV = "MPINET_STAGING_CHUNK_MB"
DEFAULT_CHUNK_MB = 4.0
MPIX_GPU_SUPPORT_CUDA = 0  # MPICH's enum value for CUDA in MPIX_GPU_query_support


def chunk_bytes() -> int:
    raw = os.environ.get(CHUNK_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_CHUNK_MB
    except ValueError:
        raise ValueError(f"${CHUNK_ENV}={raw!r} is not a number of MiB; set e.g. "
                         f"{CHUNK_ENV}=4 or unset it") from None
    if mb <= 0:
        raise ValueError(f"${CHUNK_ENV}={raw!r} must be a positive number of MiB")
    return max(1, int(mb * (1 << 20)))


def chunk_bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in pieces of ``chunk`` (the last shorter)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 element, got {chunk}")
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


def _loaded_mpi_library():
    """The MPI shared library this process has loaded (ctypes handle), or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "libmpi" in ln and ".so" in ln})
    except OSError:
        return None
    for path in paths:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def mpi_cuda_support() -> tuple[bool, str]:
    """Whether MPI accepts device pointers, and how that was found out. Never raises.

    Open MPI: ``MPIX_Query_cuda_support()`` (built with CUDA *and* enabled at run time).
    MPICH: ``MPIX_GPU_query_support(CUDA)``, true only when built with CUDA and GPU support is
    on (``MPIR_CVAR_ENABLE_GPU``). ``$MPINET_MPI_CUDA_AWARE`` (1/0) overrides both."""
    raw = os.environ.get(CUDA_AWARE_ENV, "").strip()
    if raw in ("0", "1"):
        return raw == "1", f"${CUDA_AWARE_ENV}={raw}"
    from mpi4py import MPI

    lib = _loaded_mpi_library()
    if lib is None:
        version = MPI.Get_library_version().splitlines()[0]
        return False, f"MPI library not found among loaded libraries ({version})"
    try:
        query = getattr(lib, "MPIX_GPU_query_support", None)
        if query is not None:  # MPICH >= 4
            flag = ctypes.c_int(0)
            if query(MPIX_GPU_SUPPORT_CUDA, ctypes.byref(flag)) == 0:
                return bool(flag.value), f"MPIX_GPU_query_support(CUDA) = {flag.value}"
        query = getattr(lib, "MPIX_Query_cuda_support", None)
        if query is not None:  # Open MPI (and MPICH)
            query.restype = ctypes.c_int
            value = int(query())
            return value == 1, f"MPIX_Query_cuda_support() = {value}"
    except Exception as e:  # a probe must never take the job down
        return False, f"CUDA-awareness query failed ({type(e).__name__}: {e})"
    return False, "the MPI library has no CUDA-awareness query"


class _Ticket:
    __slots__ = ("ready", "post", "test")

    def __init__(self, ready, post):
        self.ready, self.post, self.test = ready, post, None

    def done(self) -> bool:
        return self.test is not None and self.test()


class PostQueue:
    """MPI posts in a fixed order, each once its input is ready.

    ``add(ready, post)`` queues one post: ``ready()`` says its input has landed (e.g. a CUDA
    event of the chunk's copy), ``post()`` starts the MPI op and returns its test callable.
    ``pump()`` posts from the front while the front is ready; a ready chunk behind an unready
    one waits, so every rank posts in queue order."""

    def __init__(self):
        self._waiting: deque[_Ticket] = deque()

    def add(self, ready, post) -> _Ticket:
        ticket = _Ticket(ready, post)
        self._waiting.append(ticket)
        return ticket

    def pump(self) -> None:
        while self._waiting and self._waiting[0].ready():
            ticket = self._waiting.popleft()
            ticket.test = ticket.post()

    def __len__(self):
        return len(self._waiting)


def pipelined_allreduce(queue: PostQueue, host, bounds, ready, post_chunk):
    """Queue one allreduce per chunk of ``host`` and return the stage's test callable.

    ``ready(i)`` -> True once chunk i is in ``host``; ``post_chunk(view)`` posts the in-place
    allreduce of one host view and returns its test. The returned test pumps the queue and is
    True once every chunk's allreduce has completed."""
    tickets = [queue.add(lambda i=i: ready(i), lambda a=a, b=b: post_chunk(host[a:b]))
               for i, (a, b) in enumerate(bounds)]

    def test() -> bool:
        queue.pump()
        return all(t.done() for t in tickets)

    return test
