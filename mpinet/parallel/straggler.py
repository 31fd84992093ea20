"""Which rank holds the others back, per logging window: straggler attribution.

Every host wait of a communicator adds to ``comm.waited_s``. Over a window, a rank that runs
behind makes the others wait for it at every collective, and waits little itself. At the end of
each window a barrier (so the lag at the window's end is counted too, also on GPU, where the
gradient collectives never block the host) is followed by one small allgather of each rank's
waited time. The slowest rank is the one that waited least; how far it runs behind is how much
longer the median other rank waited: ``lag_s = median(others' waits) - its wait``.
"""
from __future__ import annotations

import sys

import numpy as np


class StragglerWatch:
    def __init__(self, comm, warn_s: float | None = None):
        self.comm, self.warn_s = comm, warn_s
        self._mark = comm.waited_s

    def window_end(self, first_step: int, last_step: int) -> dict:
        """Collective: ``{"slowest_rank", "straggler_s"}`` for the window just ended ({} on one
        rank); rank 0 prints a warning when the lag exceeds ``warn_s``."""
        comm = self.comm
        if comm.size == 1:
            return {}
        comm.barrier()
        waited = comm.waited_s - self._mark
        waits = np.asarray(comm.allgather_obj(waited), dtype=np.float64)
        self._mark = comm.waited_s  # this allgather's own wait counts in the next window
        slowest = int(np.argmin(waits))
        others = np.delete(waits, slowest)
        lag = max(0.0, float(np.median(others)) - float(waits[slowest]))
        if self.warn_s is not None and lag > self.warn_s and comm.rank == 0:
            print(f"[mpinet] straggler: rank {slowest} (host {comm.host_of(slowest)}) ran "
                  f"{lag:.3f} s behind the median rank over steps {first_step}-{last_step} "
                  f"(--straggler-warn {self.warn_s:g} s)", file=sys.stderr, flush=True)
        return {"slowest_rank": slowest, "straggler_s": lag}
