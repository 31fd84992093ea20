"""The slurm/ scripts on a real single-node Slurm, 2 CPU tasks per job.

Each job runs either tests/slurm/toy_trainer.py (a tiny MPI program with mpinet.train's
checkpoint/preemption contract, so the scripts are tested on their own) or the real
`python -m mpinet.train` (skipped, with the reason, while it cannot run).

Preemption is triggered the way Slurm's `--signal=B:USR1@N` does it, only earlier: SIGUSR1 to
the batch shell (`scancel --signal=USR1 --batch`). Slurm holds a requeued job for about 120 s
before it may start again; the test lifts that hold (`scontrol update StartTime=now`) so the
round trip takes seconds. Everything else (trap, forward, checkpoint, requeue, restart count,
--resume auto) is the production path.
"""
import json
import subprocess
import sys
import time

import pytest

from slurm_harness import (REPO, TOY_TRAINER, assert_same_tensors, logs, newest_checkpoint,
                           train_cli_problem)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# What each program needs to run for a few seconds on 2 CPU ranks.
TOY = f"{sys.executable} {TOY_TRAINER}"
TRAIN = f"{sys.executable} -m mpinet.train"
PROGRAMS = {"toy": TOY, "train": TRAIN}
SHORT_ARGS = {"toy": ["--steps", "4", "--step-time", "0"], "train": ["--epochs", "1", "--quiet"]}
# Long enough that the signal lands mid-run: the toy 40 steps x 0.25 s; the trainer's default MLP
# on digits is 23 steps (about 0.1 s) per epoch on 2 ranks.
PREEMPT_ARGS = {"toy": ["--steps", "40", "--step-time", "0.25"],
                "train": ["--epochs", "40", "--quiet", "--save-weights", "final.safetensors"]}


def final_weights(name, run_dir, checkpoint_dir):
    """The file holding a finished run's final weights."""
    if name == "train":
        return str(run_dir / "final.safetensors")  # --save-weights, relative to the job's cwd
    return newest_checkpoint(checkpoint_dir)


def _skip_unless_runnable(name):
    if name == "train" and train_cli_problem():
        pytest.skip(train_cli_problem())


def _completed_ok(job):
    return job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0"


@pytest.mark.parametrize("name,script,sbatch_args", [
    ("toy", "train_1node.sbatch", []),
    ("toy", "train_multinode.sbatch", ["--nodes=1"]),  # the only node there is
    ("train", "train_1node.sbatch", []),
], ids=["toy-1node", "toy-multinode", "train-1node"])
def test_batch_job_runs_and_exits_0(slurm, tmp_path, name, script, sbatch_args):
    _skip_unless_runnable(name)
    args = SHORT_ARGS[name] + ["--checkpoint-dir", "ckpt", "--metrics", "metrics.jsonl",
                               "--seed", "0"]
    job = slurm.submit(script, tmp_path, args, program=PROGRAMS[name], sbatch_args=sbatch_args)
    (final,) = slurm.wait_finished(job, timeout_s=180, workdir=tmp_path)
    log = logs(tmp_path)
    assert _completed_ok(final), f"job {job}: {final['JobState']} {final['ExitCode']}\n{log}"
    assert "[mpinet] running: srun --mpi=" in log, f"the script must print its srun command\n{log}"
    assert "--kill-on-bad-exit=1" in log
    assert "SRUN_CPUS_PER_TASK=1" in log
    if name == "toy":
        assert log.count("allreduce ok") == 2, log  # both ranks in one MPI world
    newest_checkpoint(tmp_path / "ckpt")
    assert (tmp_path / "metrics.jsonl").stat().st_size > 0, "no metrics written"


def test_failing_program_fails_the_job(slurm, tmp_path):
    """A program that fails must fail the job: no hang, non-zero exit code."""
    job = slurm.submit("train_1node.sbatch", tmp_path, ["--steps", "-x"])  # argparse error
    (final,) = slurm.wait_finished(job, timeout_s=120, workdir=tmp_path)
    assert final["JobState"] == "FAILED" and final["ExitCode"] != "0:0", final


@pytest.mark.parametrize("name", ["toy", "train"])
def test_preempted_job_requeues_and_resumes_to_same_weights(slurm, tmp_path, name):
    _skip_unless_runnable(name)
    program, args = PROGRAMS[name], PREEMPT_ARGS[name] + ["--seed", "0"]
    ref_dir, pre_dir = tmp_path / "uninterrupted", tmp_path / "preempted"
    # The uninterrupted reference runs at the same time (the node has room for both).
    ref = slurm.submit("train_1node.sbatch", ref_dir, args + ["--checkpoint-dir", "ckpt"],
                       program=program, time_limit_min=5)
    # The script's own warning (--signal=B:USR1@300) would fire at once in a 5-minute job:
    # move it to the last 10 s so the only signal is the test's.
    pre = slurm.submit("train_preemptible.sbatch", pre_dir,
                       args + ["--metrics", "metrics.jsonl"], program=program,
                       sbatch_args=["--signal=B:USR1@10"], time_limit_min=5)
    metrics = pre_dir / "metrics.jsonl"

    # Signal only once training is under way (a metrics line means the handlers are set).
    slurm.wait(pre, lambda js: metrics.exists() and len(metrics.read_text().splitlines()) >= 2,
               120, "training (metrics.jsonl has 2 lines)", pre_dir)
    subprocess.run(["scancel", "--signal=USR1", "--batch", pre], check=True, timeout=30)

    (requeued,) = slurm.wait(pre, lambda js: js[0]["JobState"] == "PENDING"
                             and int(js[0]["Restarts"]) >= 1, 120, "requeued", pre_dir)
    # Lift Slurm's ~120 s begin-time hold on requeued jobs, but not at once: slurmd refuses to
    # launch a job within the second its old credential was revoked ("Job credential revoked").
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"JobId={pre}", "StartTime=now"], check=True,
                   timeout=30)
    lines_before_restart = len(metrics.read_text().splitlines())
    (final,) = slurm.wait_finished(pre, timeout_s=240, workdir=pre_dir)
    log = logs(pre_dir)
    lines_after_restart = len(metrics.read_text().splitlines())
    # The signal must have stopped training mid-run: the restarted run still had work to do.
    assert lines_after_restart >= lines_before_restart + 2, \
        f"the resumed run logged {lines_after_restart - lines_before_restart} metrics lines\n{log}"
    assert _completed_ok(final), f"job {pre}: {final['JobState']} {final['ExitCode']}\n{log}"
    assert final["Restarts"] == "1", f"expected exactly one requeue, got {final['Restarts']}\n{log}"
    assert "got SIGUSR1: forwarding it to the job step" in log, log
    assert f"requeueing job {pre}" in log, log
    assert "restart count: 1" in log and "--resume auto" in log, log

    checkpoint_dir = pre_dir / "checkpoints" / f"mpinet-preemptible-{pre}"
    assert any(checkpoint_dir.iterdir()), f"no checkpoint in {checkpoint_dir}\n{log}"
    if name == "toy":  # checkpointed mid-run; the resumed run continues right after that step
        assert len(list(checkpoint_dir.glob("step_*.safetensors"))) == 2, log
        steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
        assert steps == list(range(1, 41)), f"steps logged across the requeue: {steps}"

    (ref_final,) = slurm.wait_finished(ref, timeout_s=240, workdir=ref_dir)
    assert _completed_ok(ref_final), f"reference job {ref}: {ref_final}\n{logs(ref_dir)}"
    assert_same_tensors(final_weights(name, ref_dir, ref_dir / "ckpt"),
                        final_weights(name, pre_dir, checkpoint_dir))


def test_sweep_array_runs_one_learning_rate_per_task(slurm, tmp_path):
    job = slurm.submit("sweep_array.sbatch", tmp_path, ["--steps", "3", "--step-time", "0"],
                       sbatch_args=["--array=0-1"], MPINET_SWEEP_LRS="0.05 0.2",
                       MPINET_SWEEP_DIR="sweep")
    tasks = slurm.wait_finished(job, timeout_s=180, workdir=tmp_path)
    assert len(tasks) == 2 and all(_completed_ok(t) for t in tasks), \
        f"{[(t['JobId'], t['JobState'], t['ExitCode']) for t in tasks]}\n{logs(tmp_path)}"
    runs = {lr: tmp_path / "sweep" / f"lr_{lr}" for lr in ("0.05", "0.2")}
    for lr, run in runs.items():
        assert (run / "metrics.jsonl").stat().st_size > 0, f"lr {lr}: no metrics\n{logs(tmp_path)}"
    from safetensors.numpy import load_file

    w = {lr: load_file(newest_checkpoint(run))["w"] for lr, run in runs.items()}
    assert not (w["0.05"] == w["0.2"]).all(), "different learning rates gave identical weights"


def test_sweep_array_rejects_an_index_without_learning_rate(slurm, tmp_path):
    job = slurm.submit("sweep_array.sbatch", tmp_path, ["--steps", "1"],
                       sbatch_args=["--array=2"], MPINET_SWEEP_LRS="0.05 0.2")
    (task,) = slurm.wait_finished(job, timeout_s=120, workdir=tmp_path)
    assert task["JobState"] == "FAILED", task
    assert "MPINET_SWEEP_LRS has 2 values" in logs(tmp_path)


def test_gpu_job_gives_every_task_all_node_gpus_and_local_ranks_match(slurm, tmp_path):
    """One task per GPU: each task sees all of the node's GPUs (so NCCL sees its peers) and its
    Slurm local rank equals MPI's node-local rank, which mpinet uses to pick its GPU."""
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True,
                          timeout=30).stdout
    if "gpu:" not in gres:
        pytest.skip(f"the test Slurm offers no GPUs (GRES: {gres.strip() or 'none'}); "
                    "tests/slurm/start_slurm.sh makes fake ones where mknod is allowed")
    report = f"{sys.executable} {REPO / 'tests' / 'launch' / 'rank_report.py'}"
    job = slurm.submit("train_1node.sbatch", tmp_path, program=report, MPINET_SLURM_GPUS="2",
                       MPINET_SLURM_TASKS_PER_NODE="", MPINET_SLURM_CPUS_PER_TASK="1")
    (final,) = slurm.wait_finished(job, timeout_s=120, workdir=tmp_path)
    log = logs(tmp_path)
    assert _completed_ok(final), f"{final['JobState']} {final['ExitCode']}\n{log}"
    assert "GPUs per node: 2" in log, log
    for r in range(2):
        assert (f"rank {r}/2 local {r}/2 launcher_local {r} " in log
                and log.count("CUDA_VISIBLE_DEVICES=0,1") == 2), log
