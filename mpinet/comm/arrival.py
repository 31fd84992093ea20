"""Who has reached which collective: the data behind "ranks that did not arrive".

Each rank keeps ``(sequence number, op code, heartbeat, pid, waiting)`` in a 40-byte MPI RMA
window: the first two name the last collective it entered; ``waiting`` is the sequence number it
is blocked in (0 while it runs Python code); a daemon thread bumps the heartbeat every
``HEARTBEAT_PERIOD_S``, so a waiting rank can tell a peer that is merely slow (heartbeat moves)
from one that is stopped, dead or cut off (heartbeat frozen, or slot unreadable) long before the
full timeout; the pid lets a peer on the same host see whether the process still exists.
Entering a collective is a local store (no communication, ~1 us), so it costs
nothing on the fast path. Only when a wait times out does the waiting rank read every rank's
slot with ``Rget`` inside a passive-target epoch opened once at creation; the target does not
have to call MPI for that (shared memory, or RDMA between nodes), so a rank that sleeps or spins
in Python is still readable. A rank whose slot cannot be read within a few seconds is reported
as unreachable rather than waited for; and where posting the read itself blocks (MPICH over tcp
retries the connection to a dead peer inside ``Rget``), a watchdog ends this rank naming the
peer it was stuck on (``comm/guard.py``), so the timeout report itself can never hang.
"""
from __future__ import annotations

import atexit
import os
import socket
import threading
import time

import numpy as np

from mpinet.comm import failure
from mpinet.comm.guard import deadline

# Op codes stored in the window (and in debug signatures); the order is part of no file format.
OPS = ("allreduce", "bcast", "allgather", "reduce_scatter", "barrier",
       "bcast_obj", "allgather_obj", "allreduce_obj")

HEARTBEAT_PERIOD_S = 0.25
_SLOT = 5  # int64 fields per rank: seq, op code, heartbeat, pid, waiting

_open_trackers: list = []
_registered: list = []  # non-empty once the exit hook is registered


def _free_open_trackers():
    # Windows are freed collectively before MPI_Finalize (mpi4py's finalizer was registered at
    # import, so this runs first); every rank creates the same communicators in the same order.
    from mpi4py import MPI

    if MPI.Is_finalized():  # the program finalized MPI itself: nothing can be freed now
        return
    # Freeing windows and MPI_Finalize (which mpi4py calls next) synchronise with the peers: a
    # peer stopped or dead at the very end must not leave this rank hanging at exit either.
    limit = max(t.timeout_s for t in _open_trackers) if _open_trackers else 600.0
    timer = threading.Timer(limit, lambda: failure.abort(
        f"exit (freeing MPI windows, MPI_Finalize) did not complete within {limit:g} s: a peer "
        f"rank is stopped, dead or unreachable"))
    timer.daemon = True
    timer.start()
    while _open_trackers:
        _open_trackers.pop().free()


def _process_identity(pid: int):
    """(boot id + pid namespace, start time, state) of a process from /proc, or None where it
    cannot be read (no /proc, or the process is gone)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (f"{boot}:{namespace}", fields[19], fields[0])  # fields[19]: starttime (field 22)


class ArrivalTracker:
    def __init__(self, mpi_comm, timeout_s: float = 600.0):
        from mpi4py import MPI

        self._MPI = MPI
        self._comm = mpi_comm
        self._world_ranks = mpi_comm.Get_group().Translate_ranks(
            list(range(mpi_comm.Get_size())), MPI.COMM_WORLD.Get_group())
        self.seq = 0
        self.timeout_s = timeout_s
        self._reading = None  # the rank whose slot is being requested (for a stuck Rget)
        self._my_rank = mpi_comm.Get_rank()  # read by the watchdog thread, which calls no MPI
        # Silence watch state: per rank, the last heartbeat seen and when it last changed.
        self._beats: dict[int, tuple[int | None, float]] = {}
        # Where each rank runs, for reports ("rank 1 (pid 4242 on host node07)").
        me = _process_identity(os.getpid())
        self._me = me
        self.pids, self.hosts, self._identities = zip(
            *mpi_comm.allgather((os.getpid(), socket.gethostname(), me)), strict=True)
        try:
            self._win = MPI.Win.Allocate(8 * _SLOT, 8, comm=mpi_comm)
        except MPI.Exception as err:
            # An MPI without usable one-sided support: keep working, report positions unknown.
            self._win, self._slot, self.unavailable = None, None, str(err)
            return
        self.unavailable = ""
        self._slot = np.frombuffer(self._win.tomemory(), dtype=np.int64)
        self._slot[:] = (0, -1, 0, os.getpid(), 0)
        self._win.Lock_all(MPI.MODE_NOCHECK)
        if not _registered:
            atexit.register(_free_open_trackers)
            _registered.append(True)
        _open_trackers.append(self)
        mpi_comm.Barrier()  # every slot is initialised before anyone can read it
        self._stop = threading.Event()
        self._beater = threading.Thread(target=self._beat, name="mpinet-heartbeat", daemon=True)
        self._beater.start()

    def _beat(self) -> None:
        # A plain store into our own window memory (no MPI call, so no THREAD_MULTIPLE needed):
        # peers read it with Rget. It stops when the process is stopped or dead, which is the point.
        while not self._stop.wait(HEARTBEAT_PERIOD_S):
            slot = self._slot
            if slot is None:
                return
            slot[2] += 1

    def where(self, rank: int) -> str:
        """``pid P on host H`` of a rank of this comm."""
        return f"pid {self.pids[rank]} on host {self.hosts[rank]}"

    def enter(self, op: str) -> int:
        """Record that this rank entered collective ``op``; return its sequence number
        (1, 2, ...)."""
        self.seq += 1
        if self._win is None:
            return self.seq
        self._slot[:2] = (self.seq, OPS.index(op))
        self._win.Sync()  # make the store visible to remote Rget (MPI unified memory model)
        return self.seq

    def waiting(self, seq: int) -> None:
        """Mark this rank as blocked in collective ``seq`` (0: back in its own code). A plain
        store: only timeout reports read it."""
        if self._slot is not None:
            self._slot[4] = seq

    def positions(self, read_timeout_s: float = 3.0,
                  ranks=None) -> list[tuple[int, int, str, int] | None]:
        """Per rank of the comm (or of ``ranks``): ``(world rank, seq, last op, heartbeat)``, or
        None when unreadable in time."""
        MPI = self._MPI
        ranks = list(range(self._comm.Get_size())) if ranks is None else list(ranks)
        size = len(ranks)
        bufs = [np.zeros(_SLOT, np.int64) for _ in range(size)]
        # Posting an Rget can itself block when the target's process is gone (MPICH over tcp):
        # a watchdog names the rank being read and ends this process (guard.py).
        with deadline(read_timeout_s + 5.0, self._stuck_report):
            reqs = []
            for i, r in enumerate(ranks):
                self._reading = r
                reqs.append(self._win.Rget(bufs[i], r, (0, _SLOT, MPI.INT64_T)))
            self._reading = None
            done = [False] * size
            until = time.monotonic() + read_timeout_s
            while not all(done) and time.monotonic() < until:
                for r, req in enumerate(reqs):
                    done[r] = done[r] or req.Test()
                time.sleep(0.001)
        return [(self._world_ranks[r], int(b[0]), OPS[b[1]] if b[1] >= 0 else "none", int(b[2]),
                 int(b[4])) if ok else None for r, b, ok in zip(ranks, bufs, done, strict=True)]

    def _stuck_report(self) -> str:
        """What a blocked position read was doing (called by the watchdog thread: no MPI)."""
        me, r = self._my_rank, self._reading
        stuck = (f"MPI blocked reading the position of rank {self._world_ranks[r]} "
                 f"({self.where(r)})" if r is not None else "MPI blocked reading peers' positions")
        order = [self.hosts[me], *sorted({h for h in self.hosts if h != self.hosts[me]})]
        per_host = {h: [self._world_ranks[i] for i, x in enumerate(self.hosts) if x == h]
                    for h in order}
        return (f"[mpinet] rank {self._world_ranks[me]}: waiting for a collective, {stuck}: "
                f"that rank's process is gone or its host unreachable; ending this rank so the "
                f"launcher ends the job. Ranks per host: "
                + ", ".join(f"{h}: {ranks}" for h, ranks in per_host.items()))

    def process_state(self, rank: int) -> str:
        """What can be seen of a peer's process: "exited", "stopped" (SIGSTOP/SIGTSTP) or ""
        (running, or not visible from here: another host, or another pid namespace as with a
        container per rank, where its pid would name some other process)."""
        mine, theirs = self._me, self._identities[rank]
        if self.hosts[rank] != socket.gethostname() or mine is None or theirs is None \
                or theirs[0] != mine[0]:  # not the same machine and pid namespace
            return ""
        seen = _process_identity(self.pids[rank])
        if seen is None or seen[1] != theirs[1]:
            return "exited"  # gone, or its pid now belongs to a newer process
        return {"T": "stopped", "t": "stopped", "Z": "exited", "X": "exited"}.get(seen[2], "")

    def forget_beats(self) -> None:
        """Start a new silence watch (one per long wait)."""
        self._beats = {}

    def silent_ranks(self, silence_s: float) -> list[str]:
        """Descriptions of peers whose heartbeat has not moved (or whose slot could not be read)
        for ``silence_s``, or whose process is seen stopped or gone; [] when none. Called every
        ``WATCH_EVERY_S`` while a wait lasts; each call reads the window once. Every peer counts,
        arrived or not: one that posted its part and then stopped blocks the op just the same."""
        if self._win is None:
            return []
        now = time.monotonic()
        found = []
        me = self._comm.Get_rank()
        positions = self.positions(read_timeout_s=min(3.0, silence_s))
        for r, pos in enumerate(positions):
            if r == me:
                continue
            beat = pos[3] if pos is not None else None
            last, since = self._beats.get(r, (None, now))
            if beat is None or beat != last:
                since = now if beat is not None else since
                self._beats[r] = (beat, since)
            state = self.process_state(r)
            if state == "exited" or now - since >= silence_s or state == "stopped" and \
                    now - since >= min(silence_s, 2.0):
                why = {"exited": "its process has exited",
                       "stopped": "its process is stopped (SIGSTOP?)"}.get(
                    state, f"no heartbeat for {now - since:.1f} s (stopped, dead or cut off)"
                    if beat is not None else "its slot cannot be read (dead or cut off)")
                found.append(f"rank {self._world_ranks[r]} ({self.where(r)}): {why}")
        return found

    def missing_report(self, seq: int) -> str:
        """Text naming the ranks that have not entered collective number ``seq``."""
        if self._win is None:
            return f"ranks that did not arrive: unknown (no MPI window: {self.unavailable})"
        late, unreadable, halted, busy = [], [], [], []
        for r, pos in enumerate(self.positions()):
            state = self.process_state(r)
            if pos is None:
                unreadable.append(f"{self._world_ranks[r]} ({self.where(r)})")
            elif pos[1] < seq:
                late.append(f"rank {pos[0]} (last entered #{pos[1]} {pos[2]}; {self.where(r)}"
                            f"{'; ' + state if state else ''})")
            elif state:
                halted.append(f"rank {pos[0]} (entered #{pos[1]} {pos[2]}; {self.where(r)}; "
                              f"{state})")
            elif pos[4] != seq and pos[1] == seq:
                busy.append(f"rank {pos[0]} ({self.where(r)})")
        parts = []
        if late:
            parts.append("ranks that did not arrive: " + ", ".join(late))
        elif halted:
            parts.append("ranks that entered it but whose process then halted: " +
                         ", ".join(halted))
        elif busy:
            parts.append("every rank entered it, but these are not waiting in it (busy in "
                         "their own code, or stuck outside MPI): " + ", ".join(busy))
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
        self._stop.set()
        self._beater.join()  # it writes into the window memory freed below
        self._win.Unlock_all()
        self._slot = None  # the view would dangle once the window memory is freed
        self._win.Free()
        self._win = None
        if self in _open_trackers:
            _open_trackers.remove(self)
