"""slurm/submit.sh and slurm/common.sh without a Slurm: stand-in `sbatch` / `srun` commands record
what the scripts would run, so the translation of slurm/config.sh into options is checked
everywhere (the real-Slurm runs are in test_slurm_jobs.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUBMIT = REPO / "slurm" / "submit.sh"


@pytest.fixture
def fake_bin(tmp_path):
    """A directory first on PATH with an `sbatch` that prints its arguments and an `srun` that
    lists the MPI plugins given by $FAKE_SRUN_PLUGINS."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "sbatch-args: $*"\n')
    (bin_dir / "srun").write_text('#!/bin/sh\necho "MPI plugin types are..."\n'
                                  'for p in $FAKE_SRUN_PLUGINS; do printf "\\t%s\\n" "$p"; done\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def submit(fake_bin, *args, **env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MPINET_SLURM_")}
    full_env.update(PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", **env)
    return subprocess.run(["bash", str(SUBMIT), *args], capture_output=True, text=True,
                          timeout=60, env=full_env)


def test_gpu_defaults_one_task_per_gpu(fake_bin):
    out = submit(fake_bin, "--nodes=2", "slurm/train_multinode.sbatch", "--epochs", "3")
    assert out.returncode == 0, out.stderr
    args = out.stdout.strip()
    assert args == ("sbatch-args: --ntasks-per-node=8 --cpus-per-task=8 --gpus-per-node=8 "
                    "--nodes=2 slurm/train_multinode.sbatch --epochs 3"), args
    assert "[mpinet] running: sbatch --ntasks-per-node=8" in out.stderr


def test_cpu_site_values_from_the_environment(fake_bin):
    out = submit(fake_bin, "script.sbatch", MPINET_SLURM_GPUS="0", MPINET_SLURM_PARTITION="short",
                 MPINET_SLURM_ACCOUNT="proj42", MPINET_SLURM_QOS="low")
    assert out.returncode == 0, out.stderr
    args = out.stdout.strip()
    assert args == ("sbatch-args: --partition=short --account=proj42 --qos=low "
                    "--ntasks-per-node=2 --cpus-per-task=1 script.sbatch"), args


@pytest.mark.parametrize("name,value", [("MPINET_SLURM_GPUS", "eight"),
                                        ("MPINET_SLURM_TASKS_PER_NODE", "0")])
def test_bad_site_values_are_refused(fake_bin, name, value):
    out = submit(fake_bin, "script.sbatch", **{name: value})
    assert out.returncode == 2 and name in out.stderr and value in out.stderr, out.stderr
    assert "sbatch-args" not in out.stdout


def plugin(fake_bin, plugins, choice="auto"):
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
           "FAKE_SRUN_PLUGINS": plugins, "MPINET_SLURM_MPI": choice, "PYTHON": sys.executable}
    return subprocess.run(["bash", "-c", f". {REPO}/slurm/common.sh && mpinet_mpi_plugin"],
                          capture_output=True, text=True, timeout=60, env=env)


def test_mpi_plugin_follows_mpi4py_library(fake_bin):
    from mpi4py import MPI

    expected = "pmix" if "Open MPI" in MPI.Get_library_version() else "pmi2"
    out = plugin(fake_bin, "none pmi2 pmix")
    assert out.returncode == 0 and out.stdout.strip() == expected, out.stdout + out.stderr


def test_mpi_plugin_pinned_in_config_and_checked_against_srun(fake_bin):
    out = plugin(fake_bin, "none pmi2 pmix", choice="pmix")
    assert out.returncode == 0 and out.stdout.strip() == "pmix", out.stderr
    missing = plugin(fake_bin, "none pmi2", choice="pmix")
    assert missing.returncode != 0
    assert ("no 'pmix' MPI plugin" in missing.stderr
            and "none pmi2" in missing.stderr), missing.stderr
