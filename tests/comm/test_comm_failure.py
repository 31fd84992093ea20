"""No hangs: a rank that raises ends the whole job; a late rank makes the others time out with
a report naming the op, size, dtype and the missing rank. Each case launches its own
``mpiexec -n 2`` (a job must really die), so these tests run in the single-process session."""
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest

from helpers import mpi_env

SCRIPTS = os.path.join(os.path.dirname(__file__), "mpi_scripts")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launcher():
    """$MPINET_TEST_MPIEXEC (e.g. Open MPI's "mpirun --allow-run-as-root --bind-to none
    -x NCCL_NVLS_ENABLE=0"), else mpiexec from PATH."""
    cmd = shlex.split(os.environ.get("MPINET_TEST_MPIEXEC", "mpiexec"))
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"{cmd[0]} not found")
    return cmd


def run_job(script, *args, env_extra=None, limit_s=30):
    env = mpi_env()
    env.update({"PYTHONPATH": ROOT + os.pathsep + env.get("PYTHONPATH", ""),
                "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1",
                "OMPI_MCA_mpi_yield_when_idle": "1", "OMPI_ALLOW_RUN_AS_ROOT": "1",
                "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "NCCL_NVLS_ENABLE": "0",
                **(env_extra or {})})
    start = time.monotonic()
    proc = subprocess.run([*launcher(), "-n", "2", sys.executable, os.path.join(SCRIPTS, script),
                           *args], env=env, capture_output=True, text=True, timeout=limit_s)
    return proc, time.monotonic() - start


# ids must not be the bare word "mpi": pytest-mpi would take it for the mpi marker and skip.
@pytest.mark.parametrize("impl", ["mpi", "hierarchical"], ids=["impl-mpi", "impl-hierarchical"])
def test_raising_rank_ends_job_within_10s(impl):
    proc, elapsed = run_job("raise_while_peer_waits.py", impl, limit_s=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert elapsed < 10, f"job took {elapsed:.1f} s to end:\n{out}"
    assert "[mpinet] rank 1/2 failed" in out, out
    assert "RuntimeError: deliberate failure on rank 1" in out, out
    assert "rank 0 finished" not in out, out


@pytest.mark.parametrize("impl", ["mpi", "hierarchical"], ids=["impl-mpi", "impl-hierarchical"])
def test_timeout_names_op_and_missing_rank(impl):
    proc, elapsed = run_job("late_rank.py", impl, "20", env_extra={"MPINET_COMM_TIMEOUT": "1.5"},
                            limit_s=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert elapsed < 15, f"rank 0 did not time out (job took {elapsed:.1f} s):\n{out}"
    assert "finished" not in out, out
    assert (f"[mpinet] rank 0/2: {impl} allreduce (collective #2) of 1234 elements of float32"
            in out), out
    assert "did not complete within 1.5 s" in out, out
    assert "ranks that did not arrive: rank 1 (last entered #1 allreduce; pid " in out, out
    assert f"on host {socket.gethostname()})" in out, out


@pytest.mark.gpu
@pytest.mark.requires_gpus(2)  # two ranks, one GPU each
@pytest.mark.parametrize("impl", ["nccl", "hierarchical"], ids=["impl-nccl", "impl-hierarchical"])
def test_gpu_timeout_aborts_with_report(impl):
    proc, elapsed = run_job("late_rank_gpu.py", impl, "60",
                            env_extra={"MPINET_COMM_TIMEOUT": "5", "MPINET_EMULATE_NODES": "2"},
                            limit_s=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert elapsed < 45, f"rank 0 did not time out (job took {elapsed:.1f} s):\n{out}"
    assert "finished" not in out, out
    assert f"{impl} allreduce (collective #" in out and "1234 elements of float32" in out, out
    assert "ranks that did not arrive: rank 1" in out, out
