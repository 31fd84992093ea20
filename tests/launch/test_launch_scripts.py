"""launch/local.sh and launch/hosts.sh: real runs with the MPI here, and the environment each
MPI flavour gets (Open MPI checked with a stand-in `mpirun` and library, in --dry-run mode).

Single-process tests: they start mpiexec themselves (never run them under mpiexec).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "launch" / "local.sh"
HOSTS = REPO / "launch" / "hosts.sh"
PROGRAM = f"{sys.executable} {REPO / 'tests' / 'launch' / 'rank_report.py'}"
CORES = os.cpu_count()
OPEN_MPI_LIBRARY = "Open MPI v{v}, package: Debian OpenMPI, ident: {v}, repo rev: v{v}"


def run(script, *args, env=None, timeout=120):
    """Run a launch script in a clean environment: none of the variables it decides about (which
    tests/run.sh, for one, exports) is inherited unless the test passes it in env."""
    decided = ("NCCL_", "OMP_NUM_THREADS", "OMPI_", "PRTE_", "MPIR_CVAR_")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(decided)}
    full_env.update({"PYTHON": sys.executable, **(env or {})})
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def command_line(out):
    """The '[mpinet] running: ...' line the script printed."""
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("[mpinet] running: ")]
    assert len(lines) == 1, f"expected one printed command, got:\n{out.stdout}\n{out.stderr}"
    return lines[0]


def environment_line(out):
    return next(ln for ln in out.stdout.splitlines() if ln.startswith("[mpinet] environment:"))


def rank_lines(out):
    return sorted(ln for ln in out.stdout.splitlines() if re.match(r"rank \d+/", ln))


@pytest.fixture
def fake_open_mpi(tmp_path):
    """Stand-ins for Open MPI's mpirun and for a python whose mpi4py uses Open MPI."""
    def make(version="4.1.6"):
        mpirun = tmp_path / "mpirun"
        mpirun.write_text(f'#!/bin/sh\necho "mpirun (Open MPI) {version}"\n')
        python = tmp_path / "python"
        python.write_text(f'#!/bin/sh\necho "{OPEN_MPI_LIBRARY.format(v=version)}"\n')
        for f in (mpirun, python):
            f.chmod(0o755)
        return {"MPIEXEC": str(mpirun), "PYTHON": str(python)}
    return make


def test_local_runs_two_cpu_ranks_and_prints_the_command():
    out = run(LOCAL, "-n", "2", "-p", PROGRAM, "--", "--epochs", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    cmd = command_line(out)
    assert re.search(r"running: \S*mpiexec -n 2 .*rank_report\.py --epochs 1", cmd), cmd
    ranks = rank_lines(out)
    assert len(ranks) == 2, out.stdout
    for r, line in enumerate(ranks):
        # One MPI world of 2, node-local rank = rank, program arguments passed through.
        assert line.startswith(f"rank {r}/2 local {r}/2 "), line
        assert "args ['--epochs', '1']" in line and "NCCL_NVLS_ENABLE=0" in line, line
        # The launcher's own local-rank variable (if any) agrees with Split_type's.
        assert re.search(rf"launcher_local ({r}|-) ", line), line


def test_local_keeps_a_user_nccl_setting_and_passes_nccl_debug():
    out = run(LOCAL, "-n", "2", "-p", PROGRAM, env={"NCCL_NVLS_ENABLE": "1", "NCCL_DEBUG": "WARN"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert all("NCCL_NVLS_ENABLE=1" in ln for ln in rank_lines(out)), out.stdout
    assert "NCCL_DEBUG=WARN" in environment_line(out)


def test_local_mpich_yields_only_when_oversubscribed():
    over = run(LOCAL, "-n", str(CORES + 1), "--dry-run")
    assert over.returncode == 0, over.stderr
    assert "MPIR_CVAR_ENABLE_HEAVY_YIELD=1" in environment_line(over)
    assert "python -m mpinet.train" in command_line(over).replace(sys.executable, "python")
    fits = run(LOCAL, "-n", "1", "--dry-run")
    assert "HEAVY_YIELD" not in environment_line(fits)
    assert "OMPI_" not in fits.stdout  # nothing Open MPI-specific for MPICH


@pytest.mark.parametrize("ranks", [1, CORES + 2])
def test_local_open_mpi_flags(fake_open_mpi, ranks):
    out = run(LOCAL, "-n", str(ranks), "--dry-run", env=fake_open_mpi("4.1.6"))
    assert out.returncode == 0, out.stderr
    cmd, env_line = command_line(out), environment_line(out)
    assert "--bind-to none" in cmd and "-x NCCL_NVLS_ENABLE" in cmd, cmd
    oversubscribed = ranks > CORES
    assert ("--oversubscribe" in cmd) == oversubscribed, cmd
    assert ("OMPI_MCA_mpi_yield_when_idle=1" in env_line) == oversubscribed, env_line
    assert ("OMPI_ALLOW_RUN_AS_ROOT=1" in env_line) == (os.getuid() == 0), env_line
    assert "HEAVY_YIELD" not in env_line


def test_open_mpi_5_oversubscribes_through_prte(fake_open_mpi):
    out = run(LOCAL, "-n", str(CORES + 2), "--dry-run", env=fake_open_mpi("5.0.3"))
    assert out.returncode == 0, out.stderr
    assert "--oversubscribe" not in command_line(out)
    assert "PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe" in environment_line(out)


def test_launcher_of_another_mpi_than_mpi4py_is_refused(fake_open_mpi):
    env = fake_open_mpi("4.1.6")
    del env["PYTHON"]  # the real python: its mpi4py uses this machine's MPI (MPICH here)
    from mpi4py import MPI

    if "Open MPI" in MPI.Get_library_version():
        pytest.skip("mpi4py here uses Open MPI: the stand-in launcher matches it")
    out = run(LOCAL, "-n", "2", "--dry-run", env=env)
    assert out.returncode != 0
    assert "1-process world" in out.stderr and "MPIEXEC" in out.stderr, out.stderr


@pytest.mark.parametrize("bad", ["0", "two", "-3"])
def test_local_rejects_a_bad_rank_count(bad):
    out = run(LOCAL, "-n", bad, "--dry-run")
    assert out.returncode == 2 and "positive integer" in out.stderr, out.stderr


def test_hosts_runs_ranks_per_host_from_a_hostfile(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the test machine\nlocalhost slots=8\n\n")
    out = run(HOSTS, "-f", str(hostfile), "-N", "2", "-p", PROGRAM, "--", "x")
    assert out.returncode == 0, out.stdout + out.stderr
    cmd = command_line(out)
    assert "-n 2" in cmd and "localhost" in cmd, cmd
    ranks = rank_lines(out)
    assert [ln.split(" launcher_local")[0] for ln in ranks] == \
        ["rank 0/2 local 0/2", "rank 1/2 local 1/2"], out.stdout


def test_hosts_open_mpi_places_blocks_and_forwards_environment(tmp_path, fake_open_mpi):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1\nnode2 slots=4\n")
    env = {**fake_open_mpi("4.1.6"), "NCCL_SOCKET_IFNAME": "ib0", "OMP_NUM_THREADS": "3"}
    out = run(HOSTS, "-f", str(hostfile), "-N", "4", "--dry-run", env=env)
    assert out.returncode == 0, out.stderr
    cmd = command_line(out)
    assert "-n 8 --host node1:4,node2:4 --map-by slot" in cmd, cmd
    assert "--oversubscribe" not in cmd, cmd  # host:4 declares 4 slots per host
    for var in ("NCCL_NVLS_ENABLE", "NCCL_SOCKET_IFNAME", "PATH", "OMP_NUM_THREADS"):
        assert f"-x {var} " in cmd, (var, cmd)  # OMP_NUM_THREADS: the user's value, forwarded
    unset = run(HOSTS, "-f", str(hostfile), "-N", "4", "--dry-run", env=fake_open_mpi("4.1.6"))
    assert "OMP_NUM_THREADS" not in command_line(unset), command_line(unset)  # mpinet decides


def test_hosts_needs_a_hostfile_with_hosts(tmp_path):
    empty = tmp_path / "hosts"
    empty.write_text("# nothing\n")
    out = run(HOSTS, "-f", str(empty), "--dry-run")
    assert out.returncode == 2 and "lists no host" in out.stderr, out.stderr
    out = run(HOSTS, "--dry-run")
    assert out.returncode == 2 and "hostfile" in out.stderr, out.stderr
