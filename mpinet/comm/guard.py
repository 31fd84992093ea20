"""A deadline for MPI calls that may never return.

Reading a peer's position (an RMA ``Rget``) is meant to be non-blocking, but with MPICH over
libfabric's tcp provider the call itself blocks, retrying the connection, when the peer's
process is gone (seen on emulated hosts: every process of one host killed, the survivors stuck
inside ``Rget`` while building their timeout report, so the job never ended). Nothing in Python
can interrupt a blocked C call, so a watchdog thread ends this process instead: it prints what
was stuck and exits non-zero, which makes the launcher end the job (srun --kill-on-bad-exit,
hydra's bad-termination cleanup). ``os._exit`` rather than MPI_Abort: the blocked main thread may
hold MPI's global lock, on which MPI_Abort from another thread would wait.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading

EXIT_CODE = 1


@contextlib.contextmanager
def deadline(seconds: float, describe):
    """Run the block; if it has not finished after ``seconds``, print ``describe()`` (called in
    the watchdog thread, so it must not call MPI) and end the process with EXIT_CODE."""
    finished = threading.Event()

    def watch():
        if finished.wait(seconds):
            return
        try:
            text = describe()
        except Exception as e:  # the report must go out whatever happens
            text = f"(could not describe the stuck call: {type(e).__name__}: {e})"
        sys.stderr.write(f"{text}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(EXIT_CODE)

    thread = threading.Thread(target=watch, name="mpinet-deadline", daemon=True)
    thread.start()
    try:
        yield
    finally:
        finished.set()
