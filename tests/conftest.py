"""Test-wide setup.

* GPU tests (``@pytest.mark.gpu``) are skipped where no CUDA GPU is usable; checking that never
  imports cupy on a CPU machine.
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


def pytest_collection_modifyitems(config, items):
    if backend.gpu_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
    for item in items:
        # The marker, not the keyword: pytest also makes directory names keywords, and
        # tests/gpu/ holds CPU-only checks of the GPU tests' references too.
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


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
