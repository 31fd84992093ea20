"""slurm/ scripts on a Slurm whose nodes are the emulated hosts (tests/multihost/slurm.sh):
slurmctld on head, one slurmd per host, so `--nodes=2` puts 2 ranks on each of two hosts.

Preemption is triggered as in tests/slurm: SIGUSR1 to the batch shell, and the ~120 s begin-time
hold Slurm puts on a requeued job is lifted with `scontrol update StartTime=now`."""
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from bed import HERE, REPO, run, slurm_env

pytestmark = [pytest.mark.usefixtures("bed_slurm"), pytest.mark.slow]

FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
TRAIN = f"{sys.executable} -m mpinet.train"


def on_head(cmd, timeout_s=60, **env):
    return run([str(HERE / "hosts.sh"), "exec", "head", *map(str, cmd)], timeout_s,
               env=slurm_env(**env))


def submit(script, workdir, args, sbatch_args=(), time_min=5, program=TRAIN):
    workdir.mkdir(parents=True, exist_ok=True)
    proc, _ = on_head([REPO / "slurm" / "submit.sh", "--parsable", f"--chdir={workdir}",
                       f"--time={time_min}", *sbatch_args, REPO / "slurm" / script, *args],
                      MPINET_SLURM_GPUS=0, MPINET_SLURM_TASKS_PER_NODE=2,
                      MPINET_SLURM_CPUS_PER_TASK=1, MPINET_PROGRAM=program,
                      PYTHON=sys.executable)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout.strip().splitlines()[-1].split(";")[0]


def job(job_id):
    proc, _ = on_head(["scontrol", "-o", "show", "job", job_id])
    assert proc.returncode == 0, proc.stdout
    return dict(re.findall(r"(\w+)=(\S*)", proc.stdout.splitlines()[0]))


def logs(workdir):
    return "\n".join(f"----- {p.name}\n{p.read_text(errors='replace')}"
                     for p in sorted(workdir.glob("*.out")))


def wait(job_id, condition, timeout_s, what, workdir):
    deadline = time.monotonic() + timeout_s
    while True:
        j = job(job_id)
        if condition(j):
            return j
        if time.monotonic() > deadline:
            on_head(["scancel", job_id])
            pytest.fail(f"job {job_id} not {what} after {timeout_s} s ({j.get('JobState')})\n"
                        f"{logs(workdir)}")
        time.sleep(0.5)


def wait_finished(job_id, timeout_s, workdir):
    return wait(job_id, lambda j: j["JobState"] in FINISHED, timeout_s, "finished", workdir)


def same_weights(path_a, path_b):
    from safetensors.numpy import load_file

    a, b = load_file(path_a), load_file(path_b)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_multinode_job_ranks_talk_tcp_between_the_hosts(tmp_path):
    """srun's ranks on two slurmd hosts: separate hostnames and addresses, node-local ranks
    grouped per host, and the allreduce's data over TCP to the other host's address."""
    program = f"{sys.executable} {HERE / 'scripts' / 'topology_check.py'}"
    jid = submit("train_multinode.sbatch", tmp_path, ["hierarchical"], ["--nodes=2"],
                 program=program)
    final = wait_finished(jid, 120, tmp_path)
    log = logs(tmp_path)
    assert final["JobState"] == "COMPLETED" and final["ExitCode"] == "0:0", log
    found = sorted(re.findall(r"ok rank (\d) (node\d) \['([\d.]+)'\] node (\d)/2", log))
    assert found == [("0", "node1", "10.213.0.1", "0"), ("1", "node1", "10.213.0.1", "0"),
                     ("2", "node2", "10.213.0.2", "1"), ("3", "node2", "10.213.0.2", "1")], log


def test_killing_the_ranks_of_one_host_ends_the_job_naming_them(tmp_path):
    """The ranks of node2 die (slurmstepd lives on, as after a crash or an OOM kill): srun's
    --kill-on-bad-exit ends the step at once and names host and tasks."""
    program = f"{sys.executable} {HERE / 'scripts' / 'allreduce_loop.py'}"
    jid = submit("train_multinode.sbatch", tmp_path, ["mpi", "120"], ["--nodes=2"],
                 program=program)
    wait(jid, lambda j: logs(tmp_path).count("looping") == 4, 60, "looping", tmp_path)
    victims = _ranks_on("node2")
    assert len(victims) == 2, victims
    start = time.monotonic()
    for pid in victims:
        subprocess.run(["kill", "-9", str(pid)], check=False)
    final = wait_finished(jid, 30, tmp_path)
    elapsed = time.monotonic() - start
    log = logs(tmp_path)
    assert elapsed < 10, f"the job took {elapsed:.1f} s to end\n{log}"
    assert final["JobState"] != "COMPLETED", final
    assert "node2: tasks 2-3: Killed" in log, log
    assert "node1: ranks 0-1, node2: ranks 2-3" in log, log


def _ranks_on(host):
    pids = subprocess.run(["ip", "netns", "pids", f"mpinet-{host}"], capture_output=True,
                          text=True, check=False).stdout.split()
    found = []
    for p in pids:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if b"allreduce_loop" in f.read():
                    found.append(int(p))
        except OSError:
            pass
    return found


def test_preempted_job_on_two_hosts_requeues_and_resumes_to_same_weights(tmp_path):
    """Also the plain case: the uninterrupted reference is slurm/train_multinode.sbatch with
    --nodes=2, which must train on both hosts and exit 0."""
    # 6 short epochs (640 samples, 5 steps of 4 x 32) with a metrics line every 2 steps: the
    # signal lands mid-run, and the test stays short.
    args = ["--epochs", "6", "--train-samples", "640", "--log-every", "2", "--quiet", "--seed",
            "0", "--save-weights", "final.safetensors", "--preflight"]
    ref_dir, pre_dir = tmp_path / "uninterrupted", tmp_path / "preempted"
    ref = submit("train_multinode.sbatch", ref_dir, args + ["--checkpoint-dir", "ckpt"],
                 ["--nodes=2"])
    pre = submit("train_preemptible.sbatch", pre_dir, args + ["--metrics", "metrics.jsonl"],
                 ["--nodes=2", "--signal=B:USR1@10"])
    metrics = pre_dir / "metrics.jsonl"
    wait(pre, lambda j: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, 120,
         "training (2 metrics lines)", pre_dir)
    proc, _ = on_head(["scancel", "--signal=USR1", "--batch", pre])
    assert proc.returncode == 0, proc.stdout
    wait(pre, lambda j: j["JobState"] == "PENDING" and int(j["Restarts"]) >= 1, 120, "requeued",
         pre_dir)
    time.sleep(3)  # slurmd refuses a launch in the second its old credential was revoked
    on_head(["scontrol", "update", f"JobId={pre}", "StartTime=now"])
    lines_before = len(metrics.read_text().splitlines())
    final = wait_finished(pre, 240, pre_dir)
    log = logs(pre_dir)
    assert final["JobState"] == "COMPLETED" and final["ExitCode"] == "0:0", log
    assert final["Restarts"] == "1" and final["NodeList"] == "node[1-2]", final
    assert len(metrics.read_text().splitlines()) >= lines_before + 2, log
    assert "restart count: 1" in log and "--resume auto" in log, log
    ref_final = wait_finished(ref, 240, ref_dir)
    ref_log = logs(ref_dir)
    assert ref_final["JobState"] == "COMPLETED" and ref_final["ExitCode"] == "0:0", ref_log
    assert ref_final["NodeList"] == "node[1-2]", ref_final
    assert "on 2 node(s) (node[1-2]): 4 tasks" in ref_log, ref_log
    assert "node1: ranks 0-1, node2: ranks 2-3" in ref_log, ref_log  # printed by rank 0
    assert "[preflight] 4 rank(s) on 2 host(s)" in ref_log, ref_log
    assert "[preflight] all checks passed" in ref_log and "final test:" in ref_log, ref_log
    same_weights(ref_dir / "final.safetensors", pre_dir / "final.safetensors")
