"""Test-wide setup.

* GPU tests (``@pytest.mark.gpu``) are skipped where no CUDA GPU is usable; checking that never
  imports cupy on a CPU machine.
* ``@pytest.mark.requires_gpus(n)``: skipped, with the reason, on a machine with fewer than n
  GPUs. A GPU test running under mpiexec needs one GPU per rank on this node, so it is
  skipped the same way when the node has fewer GPUs than ranks (NCCL refuses two ranks on one
  GPU).
* Under MPI, a failure on one rank must end every rank, not leave the others blocked in a
  collective: the failing rank prints its report (with its rank) and calls MPI_Abort.
"""
import os
import sys

import pytest

from mpinet import backend


def _world():
    """COMM_WORLD if this pytest runs under mpiexec with more than one rank, else None."""
    if "mpi4py.MPI" not in sys.modules:
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def pytest_sessionstart(session):
    """Under mpiexec, the test ranks get the thread budget mpinet gives every rank (run.sh sets
    no thread variables, as users set none): 4 ranks on 2 cores must not run 8 BLAS threads."""
    world = _world()
    if world is not None:
        from mpinet.threads import apply_thread_budget

        apply_thread_budget(world, verbose=False)


def _ranks_on_this_node() -> int:
    world = _world()
    if world is None:
        return 1
    from mpi4py import MPI

    local = world.Split_type(MPI.COMM_TYPE_SHARED)
    size = local.Get_size()
    local.Free()
    return size


def gpu_shortfall(needed: int, have: int) -> str:
    """The skip reason when ``needed`` GPUs are not there ("" when they are)."""
    if have >= needed:
        return ""
    return f"needs {needed} GPU(s) on this node, it has {have}"


def pytest_collection_modifyitems(config, items):
    if not backend.gpu_available():
        skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
        for item in items:
            # The marker, not the keyword: pytest also makes directory names keywords, and
            # tests/gpu/ holds CPU-only checks of the GPU tests' references too.
            if item.get_closest_marker("gpu") is not None or \
                    item.get_closest_marker("requires_gpus") is not None:
                item.add_marker(skip_gpu)
        return
    have, ranks = backend.gpu_count(), _ranks_on_this_node()
    for item in items:
        marker = item.get_closest_marker("requires_gpus")
        needed = int(marker.args[0]) if marker is not None else 0
        if item.get_closest_marker("gpu") is not None:
            needed = max(needed, ranks)
        reason = gpu_shortfall(needed, have)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    world = _world()
    if world is None:
        return
    rank = world.Get_rank()
    sys.stderr.write(f"\n[mpinet test] rank {rank}/{world.Get_size()} FAILED {item.nodeid} "
                     f"({report.when}):\n{report.longreprtext}\n"
                     f"[mpinet test] rank {rank} aborting all ranks so none is left hanging\n")
    sys.stderr.flush()
    world.Abort(1)


@pytest.fixture(autouse=True)
def _cpu_backend_by_default():
    """Each test starts on the CPU backend unless it selects the GPU itself."""
    if os.environ.get("MPINET_TEST_DEVICE", "cpu") == "cpu":
        backend.use_cpu()
    yield
