"""Who has reached which collective: the data behind "ranks that did not arrive".

Each rank keeps ``(sequence number, op code)`` of the last collective it entered in a 16-byte
MPI RMA window. Entering a collective is a local store (no communication, ~1 us), so it costs
nothing on the fast path. Only when a wait times out does the waiting rank read every rank's
slot with ``Rget`` inside a passive-target epoch opened once at creation; the target does not
have to call MPI for that (shared memory, or RDMA between nodes), so a rank that sleeps or spins
in Python is still readable. A rank whose slot cannot be read within a few seconds is reported
as unreachable rather than waited for, so the timeout report itself can never hang.
"""
from __future__ import annotations

import atexit
import os
import socket
import time

import numpy as np

from mpinet.comm.guard import deadline

# Op codes stored in the window (and in debug signatures); the order is part of no file format.
OPS = ("allreduce", "bcast", "allgather", "reduce_scatter", "barrier",
       "bcast_obj", "allgather_obj", "allreduce_obj")

_open_trackers: list = []
_registered: list = []  # non-empty once the exit hook is registered


def _free_open_trackers():
    # Windows are freed collectively before MPI_Finalize (mpi4py's finalizer was registered at
    # import, so this runs first); every rank creates the same communicators in the same order.
    from mpi4py import MPI  # noqa: PLC0415

    if MPI.Is_finalized():  # the program finalized MPI itself: nothing can be freed now
        return
    while _open_trackers:
        _open_trackers.pop().free()


class ArrivalTracker:
    def __init__(self, mpi_comm):
        from mpi4py import MPI  # noqa: PLC0415

        self._MPI = MPI
        self._comm = mpi_comm
        self._world_ranks = mpi_comm.Get_group().Translate_ranks(
            list(range(mpi_comm.Get_size())), MPI.COMM_WORLD.Get_group())
        self.seq = 0
        # Where each rank runs, for reports ("rank 2 (pid 4242 on host node2)").
        where = mpi_comm.allgather((os.getpid(), socket.gethostname()))
        self.pids = [pid for pid, _ in where]
        self.hosts = [host for _, host in where]
        self._reading = None  # the rank whose slot is being requested (for a stuck Rget)
        try:
            self._win = MPI.Win.Allocate(16, 8, comm=mpi_comm)
        except MPI.Exception as err:
            # An MPI without usable one-sided support: keep working, report positions unknown.
            self._win, self._slot, self.unavailable = None, None, str(err)
            return
        self.unavailable = ""
        self._slot = np.frombuffer(self._win.tomemory(), dtype=np.int64)
        self._slot[:] = (0, -1)
        self._win.Lock_all(MPI.MODE_NOCHECK)
        if not _registered:
            atexit.register(_free_open_trackers)
            _registered.append(True)
        _open_trackers.append(self)
        mpi_comm.Barrier()  # every slot is initialised before anyone can read it

    def enter(self, op: str) -> int:
        """Record that this rank entered collective ``op``; return its sequence number (1, 2, ...)."""
        self.seq += 1
        if self._win is None:
            return self.seq
        self._slot[:] = (self.seq, OPS.index(op))
        self._win.Sync()  # make the store visible to remote Rget (MPI unified memory model)
        return self.seq

    def positions(self, read_timeout_s: float = 3.0) -> list[tuple[int, int, str] | None]:
        """Per rank of the comm: ``(world rank, seq, last op)``, or None when unreadable in time."""
        MPI, size = self._MPI, self._comm.Get_size()
        bufs = [np.zeros(2, np.int64) for _ in range(size)]
        # Rget can itself block when the target's process is gone (MPICH over tcp): bounded by
        # a watchdog that names the rank being read and ends this process (guard.py).
        with deadline(read_timeout_s + 5.0, self._stuck_report):
            reqs = []
            for r in range(size):
                self._reading = r
                reqs.append(self._win.Rget(bufs[r], r, (0, 2, MPI.INT64_T)))
            self._reading = None
            done = [False] * size
            until = time.monotonic() + read_timeout_s
            while not all(done) and time.monotonic() < until:
                for r, req in enumerate(reqs):
                    done[r] = done[r] or req.Test()
                time.sleep(0.001)
        return [(self._world_ranks[r], int(b[0]), OPS[b[1]] if b[1] >= 0 else "none") if ok
                else None for r, (b, ok) in enumerate(zip(bufs, done))]

    def where(self, rank: int) -> str:
        """``pid P on host H`` of a rank of this comm."""
        return f"pid {self.pids[rank]} on host {self.hosts[rank]}"

    def _stuck_report(self) -> str:
        me = self._comm.Get_rank()
        r = self._reading
        stuck = (f"MPI blocked reading the position of rank {self._world_ranks[r]} "
                 f"({self.where(r)})" if r is not None else "MPI blocked reading peers' positions")
        others = sorted({h for h in self.hosts if h != self.hosts[me]})
        per_host = {h: [self._world_ranks[i] for i, x in enumerate(self.hosts) if x == h]
                    for h in [self.hosts[me], *others]}
        return (f"[mpinet] rank {self._world_ranks[me]}: a collective timed out and {stuck}: "
                f"that rank's process is gone or its host unreachable; ending this rank so the "
                f"launcher ends the job. Ranks per host: "
                + ", ".join(f"{h}: {ranks}" for h, ranks in per_host.items()))

    def missing_report(self, seq: int) -> str:
        """Text naming the ranks that have not entered collective number ``seq``."""
        if self._win is None:
            return f"ranks that did not arrive: unknown (no MPI window: {self.unavailable})"
        late, unreadable = [], []
        for r, pos in enumerate(self.positions()):
            if pos is None:
                unreadable.append(f"{self._world_ranks[r]} (host {self.hosts[r]})")
            elif pos[1] < seq:
                late.append(f"rank {pos[0]} (last entered #{pos[1]} {pos[2]})")
        parts = []
        if late:
            parts.append("ranks that did not arrive: " + ", ".join(late))
        else:
            parts.append("every readable rank has entered it (a rank may have stopped calling "
                         "into MPI between posting and waiting, or the op mismatches: try "
                         "MPINET_COMM_DEBUG=1)")
        if unreadable:
            parts.append("ranks whose position could not be read: " + ", ".join(unreadable))
        return "; ".join(parts)

    def free(self):
        if self._win is None:
            return
        self._win.Unlock_all()
        self._slot = None  # the view would dangle once the window memory is freed
        self._win.Free()
        self._win = None
        if self in _open_trackers:
            _open_trackers.remove(self)
