"""The host-staging pipeline of the hierarchical communicator's GPU leg, on the CPU: NumPy arrays
stand in for device memory, and "copies" land chunk by chunk in a rank-dependent order. Every
rank must still post its chunk allreduces in one order (else MPI would pair the wrong chunks),
and the results must be exact. Also: chunk boundaries and the CUDA-awareness probe."""
import time

import numpy as np
import pytest

from mpinet.comm import staging


@pytest.mark.parametrize("n, chunk, want", [
    (10, 4, [(0, 4), (4, 8), (8, 10)]),
    (8, 4, [(0, 4), (4, 8)]),
    (3, 4, [(0, 3)]),
    (1, 1, [(0, 1)]),
    (0, 4, []),
])
def test_chunk_bounds_cover_everything_once(n, chunk, want):
    bounds = staging.chunk_bounds(n, chunk)
    assert bounds == want
    covered = [i for a, b in bounds for i in range(a, b)]
    assert covered == list(range(n))


def test_chunk_bounds_refuse_empty_chunks():
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        staging.chunk_bounds(5, 0)


def test_chunk_size_from_env(monkeypatch):
    monkeypatch.setenv(staging.CHUNK_ENV, "0.5")
    assert staging.chunk_bytes() == 1 << 19
    monkeypatch.setenv(staging.CHUNK_ENV, "lots")
    with pytest.raises(ValueError, match="MPINET_STAGING_CHUNK_MB='lots' is not a number"):
        staging.chunk_bytes()
    monkeypatch.delenv(staging.CHUNK_ENV)
    assert staging.chunk_bytes() == 4 << 20


def test_post_queue_posts_in_order_and_waits_for_the_front():
    q, posted = staging.PostQueue(), []
    ready = {"a": False, "b": True, "c": True}
    for name in "abc":
        q.add(lambda n=name: ready[n], lambda n=name: posted.append(n) or (lambda: True))
    q.pump()
    assert posted == [] and len(q) == 3  # b and c are ready but wait behind a
    ready["a"] = True
    q.pump()
    assert posted == ["a", "b", "c"] and len(q) == 0


def test_cuda_awareness_probe_answers_without_crashing(monkeypatch):
    monkeypatch.delenv(staging.CUDA_AWARE_ENV, raising=False)
    aware, why = staging.mpi_cuda_support()
    # The MPI of this test machine (PyPI mpich or Debian Open MPI) is not CUDA-aware.
    assert aware is False and why, why
    monkeypatch.setenv(staging.CUDA_AWARE_ENV, "1")
    assert staging.mpi_cuda_support() == (True, "$MPINET_MPI_CUDA_AWARE=1")


class FakeDeviceCopy:
    """A "device" array copied to host chunk by chunk, as a GPU would do it: chunk i lands at
    tick ``when[i]`` whether or not anyone looks (``tick()`` is the clock)."""

    def __init__(self, device, host, bounds, when):
        self.device, self.host, self.bounds, self.when = device, host, bounds, when
        self.landed = [False] * len(bounds)
        self.order = []  # landing order, for the test's own check

    def tick(self, now):
        for i, (a, b) in enumerate(self.bounds):
            if not self.landed[i] and now >= self.when[i]:
                self.host[a:b] = self.device[a:b]
                self.landed[i] = True
                self.order.append(i)

    def ready(self, i):
        return self.landed[i]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("n, chunk", [(1, 4), (37, 5), (64, 16), (1000, 7)])
def test_pipelined_allreduce_is_exact_with_copies_landing_out_of_order(n, chunk):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD.Dup()
    rank, size = comm.Get_rank(), comm.Get_size()
    q = staging.PostQueue()
    jobs = []
    # Three "handles" queued back to back, as the communicator does for in-flight allreduces.
    for h in range(3):
        device = (np.arange(n, dtype=np.float64) % 11 + 1) * (rank + 1) * (h + 1)
        host = np.full(n, np.nan)
        bounds = staging.chunk_bounds(n, chunk)
        # Odd ranks see their last chunks land first, even ranks their first: posting order must
        # not follow landing order.
        k = len(bounds)
        when = [(k - i if rank % 2 else i) * 2 + 3 * (2 - h) for i in range(k)]
        copy = FakeDeviceCopy(device, host, bounds, when)
        posted = []

        def post_chunk(view, posted=posted):
            posted.append(len(view))
            req = comm.Iallreduce(MPI.IN_PLACE, view, op=MPI.SUM)
            return req.Test

        test = staging.pipelined_allreduce(q, host, bounds, copy.ready, post_chunk)
        jobs.append((h, host, test, copy, posted))
    deadline, now = time.monotonic() + 30, 0
    while True:
        for job in jobs:
            job[3].tick(now)
        if all(job[2]() for job in jobs):
            break
        now += 1
        assert time.monotonic() < deadline, "pipelined allreduce did not finish"
    total = size * (size + 1) // 2
    for h, host, _, copy, posted in jobs:
        np.testing.assert_array_equal(host, (np.arange(n) % 11 + 1) * total * (h + 1))
        assert posted == [b - a for a, b in copy.bounds]  # posted in chunk order
    if len(jobs[0][3].bounds) > 1 and rank % 2:
        assert jobs[0][3].order[0] != 0  # the copies really landed out of order here
    comm.Free()
