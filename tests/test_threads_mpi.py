"""Under mpiexec -n 2 / -n 4: each rank's BLAS pool really holds the budget's thread count
(read back with threadpoolctl), computed here from the node's cores and the ranks on it."""

import os

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from mpinet import threads

pytestmark = pytest.mark.mpi


@pytest.fixture
def fresh_budget(monkeypatch):
    """Forget the budget conftest applied; put the pools back afterwards."""
    before = {info["internal_api"]: info["num_threads"] for info in threadpool_info()}
    monkeypatch.setattr(threads, "_applied", None)
    yield
    threadpool_limits(limits=min(before.values()) if before else None)


def _blas_threads() -> set[int]:
    return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}


def test_each_rank_gets_its_share_of_the_node(fresh_budget):
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    local = node.Get_size()
    node.Free()
    cpus = len(os.sched_getaffinity(0))  # mpiexec (hydra) binds nothing here: all see the node
    budget = threads.apply_thread_budget(world, verbose=False, env={})
    assert budget.source == "auto" and budget.local_ranks == local
    assert budget.threads == max(1, cpus // local), (budget, cpus, local)
    assert _blas_threads() == {budget.threads}


def test_the_users_flag_wins(fresh_budget):
    from mpi4py import MPI

    budget = threads.apply_thread_budget(MPI.COMM_WORLD, threads=3, verbose=False, env={})
    assert (budget.threads, budget.source) == (3, "--threads")
    assert _blas_threads() == {3}
