"""Helpers for the tests that run the slurm/ scripts on a real (single-node) Slurm.

Jobs run 2 CPU tasks each, with the site values overridden through the environment exactly as a
user would (MPINET_SLURM_GPUS=0). (A module of its own, not conftest.py: tests import from it.)
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TOY_TRAINER = REPO / "tests" / "slurm" / "toy_trainer.py"
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
USABLE_NODE_STATES = ("idle", "mixed", "allocated", "completing")


def slurm_problem():
    """None if a Slurm controller answers and has a usable node, else why the tests must skip."""
    if shutil.which("sinfo") is None:
        return ("no Slurm here (sinfo not found); CI installs Debian's slurmctld/slurmd/"
                "slurm-client/munge and runs tests/slurm/start_slurm.sh")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s; is slurmctld running?"
    if out.returncode != 0:
        return (f"sinfo failed ({out.stderr.strip()[-200:]}); start Slurm with "
                f"`bash tests/slurm/start_slurm.sh`")
    states = out.stdout.split()
    if not any(s.rstrip("*~#!%$@^-").startswith(USABLE_NODE_STATES) for s in states):
        return f"Slurm has no usable node (node states: {states or 'none'})"
    return None


@lru_cache(maxsize=None)
def train_cli_problem():
    """None if `python -m mpinet.train --help` works, else the reason the trainer tests skip."""
    try:
        out = subprocess.run([sys.executable, "-m", "mpinet.train", "--help"], cwd=REPO,
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": _pythonpath()})
    except subprocess.TimeoutExpired:
        return "`python -m mpinet.train --help` did not finish within 120 s"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"mpinet.train is not usable yet (`python -m mpinet.train --help`: {last})"
    return None


def _pythonpath():
    # Jobs run in a scratch directory: make the checkout importable without installing it.
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


def newest_checkpoint(directory):
    """The most recently written *.safetensors under directory (searched recursively)."""
    files = glob.glob(os.path.join(directory, "**", "*.safetensors"), recursive=True)
    assert files, f"no *.safetensors checkpoint under {directory}"
    return max(files, key=os.path.getmtime)


def assert_same_tensors(path_a, path_b):
    from safetensors.numpy import load_file

    a, b = load_file(path_a), load_file(path_b)
    assert sorted(a) == sorted(b), f"tensor names differ: {sorted(a)} vs {sorted(b)}"
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=f"tensor {name!r} differs "
                                      f"between {path_a} and {path_b}")


class Slurm:
    """Submit the slurm/ scripts through slurm/submit.sh and watch their jobs."""

    def __init__(self):
        self.submitted = []

    @staticmethod
    def env(program, **extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(MPINET_SLURM_GPUS="0", MPINET_SLURM_TASKS_PER_NODE="2",
                   MPINET_SLURM_CPUS_PER_TASK="1", MPINET_PROGRAM=program,
                   PYTHON=sys.executable, PYTHONPATH=_pythonpath())
        env.update(extra)
        return env

    def submit(self, script, workdir, program_args=(), *, program=None, sbatch_args=(),
               time_limit_min=4, **extra_env):
        """Submit slurm/<script> from workdir (its logs land there); returns the job id."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        program = program or f"{sys.executable} {TOY_TRAINER}"
        cmd = [str(REPO / "slurm" / "submit.sh"), "--parsable", f"--chdir={workdir}",
               f"--time={time_limit_min}", *sbatch_args, str(REPO / "slurm" / script),
               *map(str, program_args)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                             env=self.env(program, **extra_env))
        assert out.returncode == 0, f"submission failed ({out.returncode}): {out.stderr}"
        assert "[mpinet] running: sbatch" in out.stderr, "submit.sh must print its command"
        job_id = out.stdout.strip().splitlines()[-1].split(";")[0]
        self.submitted.append(job_id)
        return job_id

    @staticmethod
    def jobs(job_id):
        """One dict of scontrol's Key=Value fields per job (several for an array)."""
        out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, f"scontrol show job {job_id} failed: {out.stderr}"
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.stdout.splitlines()
                if line.strip()]

    def wait(self, job_id, condition, timeout_s, what, workdir=None):
        """Poll until condition(list of job dicts) holds; on timeout cancel the job and fail."""
        deadline = time.monotonic() + timeout_s
        while True:
            jobs = self.jobs(job_id)
            if condition(jobs):
                return jobs
            if time.monotonic() > deadline:
                subprocess.run(["scancel", job_id], timeout=30)
                states = [(j.get("JobId"), j.get("JobState"), j.get("Restarts")) for j in jobs]
                pytest.fail(f"job {job_id}: not {what} after {timeout_s} s (states {states})\n"
                            f"{logs(workdir) if workdir else ''}")
            time.sleep(1)

    def wait_finished(self, job_id, timeout_s, workdir=None):
        return self.wait(job_id, lambda js: all(j["JobState"] in FINISHED for j in js),
                         timeout_s, "finished", workdir)

    def cancel_all(self):
        for job_id in self.submitted:
            subprocess.run(["scancel", job_id], capture_output=True, timeout=30)


def logs(workdir):
    """All job output files in workdir, concatenated (for assertions and failure messages)."""
    parts = []
    for path in sorted(Path(workdir).glob("*.out")):
        parts.append(f"----- {path.name}\n{path.read_text(errors='replace')}")
    return "\n".join(parts)
