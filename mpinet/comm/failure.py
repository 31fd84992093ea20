"""End every rank when one fails, so no rank is left blocked in a collective.

An uncaught exception on one rank would otherwise leave its peers waiting forever in the next
allreduce. ``install_abort_handler`` makes such an exception print a report that names the rank,
then call MPI_Abort, which the launcher (mpirun, mpiexec, srun) turns into the end of the job.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback

_PREFIX = "[mpinet]"


def _world(mpi_comm=None):
    if mpi_comm is not None:
        return mpi_comm
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _rank_tag(comm) -> str:
    return f"rank {comm.Get_rank()}/{comm.Get_size()}"


def abort(message: str, code: int = 1, mpi_comm=None, before_exit=None):
    """Print ``message`` with this rank's prefix to stderr and MPI_Abort the whole job.

    ``before_exit`` runs right before MPI_Abort (after the report has had time to flush)."""
    comm = _world(mpi_comm)
    sys.stderr.write(f"{_PREFIX} {_rank_tag(comm)}: {message}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    _abort_now(comm, code, before_exit)


def _abort_now(comm, code: int, before_exit=None):
    # MPI_Abort tears down the launcher's output forwarding at once; a report still in the pipe
    # was seen to be lost. Give the launcher a moment to forward it: this path runs once.
    time.sleep(0.3)
    if before_exit is not None:
        try:
            before_exit()
        except Exception:
            pass
    comm.Abort(code)
    # MPICH's MPI_Abort was seen to return while the launcher tears the job down; this rank
    # must not run on (it would print results or enter the next collective), so exit now.
    os._exit(code)


@contextlib.contextmanager
def deadline(what: str, seconds: float, mpi_comm=None):
    """Bound a blocking MPI call that has no non-blocking form (communicator creation, window
    allocation): if the block takes longer than ``seconds``, a timer thread reports and aborts
    the job (MPI_Abort from a second thread: mpi4py initialises MPI_THREAD_MULTIPLE)."""
    timer = threading.Timer(seconds, lambda: abort(
        f"{what} did not complete within {seconds:g} s ($MPINET_COMM_TIMEOUT or "
        f"--comm-timeout): a rank is stopped, dead or unreachable", mpi_comm=mpi_comm))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def install_abort_handler(mpi_comm=None) -> None:
    """Make an uncaught exception (main thread or any thread) abort all ranks with a report.

    Report format: ``[mpinet] rank R/N failed: <traceback>`` on stderr, then MPI_Abort(1).
    """
    comm = _world(mpi_comm)

    def report_and_abort(exc_type, exc, tb, where=""):
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        sys.stderr.write(f"{_PREFIX} {_rank_tag(comm)} failed{where}: {text}")
        sys.stderr.flush()
        sys.stdout.flush()
        _abort_now(comm, 1)

    def excepthook(exc_type, exc, tb):
        report_and_abort(exc_type, exc, tb)

    def thread_excepthook(args):
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        report_and_abort(args.exc_type, args.exc_value, args.exc_traceback,
                         where=f" in thread {name!r}")

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
