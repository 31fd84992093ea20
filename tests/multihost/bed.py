"""Helpers for tests on the emulated hosts of tests/multihost/hosts.sh (a module of its own, not
conftest.py, so tests import from it)."""
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DIR = Path(os.environ.get("MPINET_HOSTS_DIR", "/run/mpinet-hosts"))
SLURM_CONF = DIR / "slurm" / "slurm.conf"
SCRIPTS = HERE / "scripts"


def nodes() -> list[str]:
    """Names of the emulated hosts that are up ([] when the bed is down)."""
    try:
        return (DIR / "nodes").read_text().split()
    except FileNotFoundError:
        return []


def bed_problem(min_nodes: int = 2):
    """None when at least ``min_nodes`` emulated hosts are up, else why the tests must skip."""
    up = nodes()
    if len(up) < min_nodes:
        return (f"{len(up)} emulated host(s) up, {min_nodes} needed: start them with "
                f"`tests/multihost/hosts.sh up 2` as root (tests/run.sh does)")
    return None


def slurm_problem():
    if not SLURM_CONF.exists():
        return "no Slurm on the emulated hosts: start it with `tests/multihost/slurm.sh up`"
    return None


def job_env(**extra) -> dict:
    """The environment of a job on the bed: this checkout importable, one BLAS thread per rank,
    no PMI variables of a parent launcher."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "OMPI_COMM_WORLD", "SLURM_"))}
    env.update(PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(cmd, timeout_s: float, env=None, cwd=None):
    """Run ``cmd`` (list) with a timeout; returns (CompletedProcess, seconds). Output combined."""
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env or job_env(), cwd=cwd or REPO, timeout=timeout_s,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, time.monotonic() - start


def mpirun(args, n=4, ppn=2, timeout_s=120, env=None, cwd=None):
    """mpiexec -n N -ppn PPN ARGS across the bed (started on head); ARGS after the launcher's."""
    cmd = [str(HERE / "mpirun.sh"), "-n", str(n), "-ppn", str(ppn), *map(str, args)]
    return run(cmd, timeout_s, env, cwd)


def python_script(name, *args):
    return [sys.executable, str(SCRIPTS / name), *map(str, args)]


def on_host(host, cmd, timeout_s=60, env=None, cwd=None):
    """Run ``cmd`` on an emulated host (head, node1, ...)."""
    return run([str(HERE / "hosts.sh"), "exec", host, *map(str, cmd)], timeout_s, env, cwd)


# MPICH between hosts over TCP on eth0 (as tests/multihost/mpirun.sh sets it): its default UCX
# netmod would see one machine and use shared memory between the namespaces.
BED_NETWORK = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": "eth0"}


def slurm_env(**extra) -> dict:
    return job_env(SLURM_CONF=str(SLURM_CONF), **BED_NETWORK, **extra)
