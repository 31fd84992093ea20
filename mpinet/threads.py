"""A thread budget per rank: each rank's BLAS/OpenMP pools sized to the cores it owns.

Without it, every rank's BLAS starts one thread per core of the node: 2 ranks on 2 cores run 4
spinning threads and the README's first command gets 10-25x slower; 8 ranks on a 64-core node run
512. So at start each rank sets its pools to

    threads = max(1, the cores this rank owns)

where the cores a rank owns are its CPU affinity mask (``os.sched_getaffinity``), shared fairly
with the other ranks of this node whose masks overlap it (each CPU counts 1 / number of local
ranks that may run on it): ranks bound to disjoint cores (``mpirun --bind-to core``, ``srun
--cpu-bind``) keep their own cores, ranks that all see the whole node split it. Slurm's
``SLURM_CPUS_PER_TASK`` caps the figure. A value the user chose wins: ``--threads`` (the
``threads`` argument), else ``OMP_NUM_THREADS`` (then libraries keep the user's own settings).

Data-loader worker processes take their share of the same budget (``worker_budget``), so
ranks x (1 + workers) x threads never exceeds the cores. The pools are set through
``threadpoolctl``, which works after NumPy is loaded. ``OMP_NUM_THREADS`` is not exported: a
process the rank starts would take it for the user's choice; decode workers get their count
explicitly.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_applied: ThreadBudget | None = None  # the budget this process already set (set once)


@dataclass(frozen=True)
class ThreadBudget:
    """threads: BLAS/OpenMP threads of this rank; cores: the cores it owns (fractional share
    rounded down, >= 1); local_ranks: ranks on this node; source: why (printed at start)."""

    threads: int
    cores: int
    local_ranks: int
    source: str

    def describe(self) -> str:
        if self.source == "auto":
            return (
                f"threads: {self.threads} per rank ({self.cores} core(s) per rank, "
                f"{self.local_ranks} rank(s) on this node; set OMP_NUM_THREADS or --threads "
                "to override)"
            )
        return f"threads: {self.threads} per rank (from {self.source})"


def share_of_cores(masks: list[set[int]], index: int) -> float:
    """Cores owned by local rank ``index``: each CPU of its mask divided by the number of local
    ranks whose masks contain that CPU. masks: one affinity set per rank on this node."""
    mine = masks[index]
    return sum(1.0 / sum(cpu in m for m in masks) for cpu in mine)


def user_threads(env=None, flag: int | None = None) -> tuple[int, str] | None:
    """(threads, where from) when the user chose: the flag first, then OMP_NUM_THREADS."""
    if flag is not None:
        if int(flag) < 1:
            raise ValueError(f"--threads must be >= 1, got {flag}")
        return int(flag), "--threads"
    env = os.environ if env is None else env
    raw = env.get("OMP_NUM_THREADS", "").strip()
    if raw:
        try:  # OpenMP allows a list ("4,2") for nested levels; the first level is ours
            value = int(raw.split(",")[0])
        except ValueError:
            raise ValueError(
                f"OMP_NUM_THREADS={raw!r} is not a positive integer; unset it or set "
                "a number of threads, e.g. OMP_NUM_THREADS=4"
            ) from None
        if value >= 1:
            return value, "OMP_NUM_THREADS"
    return None


def choose_threads(
    masks: list[set[int]], index: int, env=None, flag: int | None = None
) -> ThreadBudget:
    """The pure decision (no MPI, no libraries touched): see the module docstring."""
    env = os.environ if env is None else env
    cores = max(1, int(share_of_cores(masks, index) + 1e-9))
    slurm = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) >= 1:
        cores = min(cores, int(slurm))
    chosen = user_threads(env, flag)
    if chosen is not None:
        return ThreadBudget(chosen[0], cores, len(masks), chosen[1])
    return ThreadBudget(cores, cores, len(masks), "auto")


def worker_budget(cores: int, workers: int) -> int:
    """Threads for each of ``workers`` decode processes of a rank owning ``cores`` cores: the
    rank's main process keeps one core's worth, the workers share the rest, at least 1 each."""
    if workers <= 0:
        return 0
    return max(1, (cores - 1) // workers)


MAX_DEFAULT_WORKERS = 16  # beyond this a rank's workers cost more memory than they gain


def default_workers(cores: int) -> int:
    """Decode workers when the user gives none: every core of the rank but the training one."""
    return min(MAX_DEFAULT_WORKERS, max(0, cores - 1))


def rank_cores() -> int:
    """Cores this process owns: from the applied budget, else (no MPI, nothing applied yet)
    its whole affinity mask."""
    if _applied is not None:
        return _applied.cores
    return choose_threads(_local_masks(None)[0], 0, env={}).cores


def make_room_for_workers(workers: int, threads_each: int) -> int:
    """The rank's own BLAS threads once ``workers`` decode processes of ``threads_each`` threads
    run beside it: what is left of its cores, at least 1, so ranks x (own + workers' threads)
    stays within the cores. A user's choice (flag, OMP_NUM_THREADS) is kept. Returns the count."""
    if _applied is not None and _applied.source != "auto":
        return _applied.threads
    own = max(1, rank_cores() - workers * threads_each)
    from threadpoolctl import threadpool_limits  # loaded when the budget is applied

    threadpool_limits(limits=own)
    return own


def default_loader_workers() -> int:
    return default_workers(rank_cores())


def loader_worker_threads(workers: int) -> int:
    return worker_budget(rank_cores(), workers)


LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE",
                   "PMI_LOCAL_SIZE")


def launcher_local_size(env=None) -> int:
    """Processes the MPI launcher started on this node (Open MPI, MPICH hydra, MVAPICH), else 1."""
    env = os.environ if env is None else env
    for var in LOCAL_SIZE_VARS:
        value = env.get(var, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return 1


def _local_masks(mpi_comm) -> tuple[list[set[int]], int]:
    """Affinity masks of the ranks on this node (gathered over a shared-memory split)."""
    mine = (
        set(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else set(range(os.cpu_count() or 1))
    )
    if mpi_comm is None or mpi_comm.Get_size() == 1:
        # A communicator of one (COMM_SELF under mpirun, or no MPI): the launcher's count of
        # processes on this node, if it says, shares the same mask.
        return [mine] * launcher_local_size(), 0
    from mpi4py import MPI  # initialises MPI

    node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        masks = [set(m) for m in node.allgather(sorted(mine))]
        return masks, node.Get_rank()
    finally:
        node.Free()


def apply_thread_budget(
    mpi_comm=None, threads: int | None = None, verbose: bool = True, env=None
) -> ThreadBudget:
    """Decide and set this rank's thread count; collective over ``mpi_comm`` (an mpi4py comm,
    default none = a single process). Rank 0 prints the choice once per process. A later call
    returns the first budget unless ``threads`` asks for another count."""
    global _applied
    if _applied is not None and (threads is None or threads == _applied.threads):
        return _applied
    env = os.environ if env is None else env
    masks, index = _local_masks(mpi_comm)
    budget = choose_threads(masks, index, env, threads)
    if budget.source != "OMP_NUM_THREADS":  # the user's variable already sized the pools
        from threadpoolctl import threadpool_limits  # loaded when the budget is applied

        threadpool_limits(limits=budget.threads)
    rank = 0 if mpi_comm is None else mpi_comm.Get_rank()
    if verbose and rank == 0:
        print(f"[mpinet] {budget.describe()}", file=sys.stderr, flush=True)
    _applied = budget
    return budget


def current_budget() -> ThreadBudget | None:
    """The budget this process applied, or None before ``apply_thread_budget``."""
    return _applied
