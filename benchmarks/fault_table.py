"""Measure the README's reliability table: inject a fault into a running
``python -m mpinet.train`` job and time how long the job takes to end, and what it prints.

    python benchmarks/fault_table.py --ranks 2 4 --repeats 3 --out fault_table.jsonl

Faults (each once steps are being logged, into the last rank):
  stop          SIGSTOP, --comm-timeout 10 (the issue's setting)
  stop-default  SIGSTOP, default timeout (600 s): the heartbeat watch must end it first
  kill          SIGKILL under plain mpiexec (the launcher tears the job down)
  kill-survive  SIGKILL where the launcher leaves the survivors running (MPICH's
                -disable-auto-cleanup, each rank under a shell): mpinet must name it
  sleep         the rank pauses 1.5 s once per logging window (alive): straggler warning
                (--straggler-warn 0.5; the run is short, its "time to end" is its length)
Time to end = from the fault to the launcher's exit. Needs MPICH's mpiexec (hydra).
"""
import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["-m", "mpinet.train", "--epochs", "1000", "--quiet", "--log-every", "5"]
# A rank that sleeps: the same run with a tiny sitecustomize that delays the last rank.
SLEEPER = """
import os, time
from mpinet import model as _m
_orig = _m.Model.train_step
def _slow(self, *a, **k):
    if self.comm.rank == self.comm.size - 1 and self.global_step % 5 == 0:
        time.sleep(1.5)
    return _orig(self, *a, **k)
_m.Model.train_step = _slow
"""


def _descendants(root: int) -> set:
    """Pids of every process below ``root`` (only this job's ranks: never another job's)."""
    children: dict = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(pid))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def rank_pids(launcher_pid):
    """{rank: pid} of the python ranks below this job's launcher (from PMI_RANK)."""
    found = {}
    for pid in _descendants(launcher_pid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        program = os.path.basename(cmd.split(b"\0")[0])
        if b"mpinet.train" in cmd and b"PMI_RANK" in env and program.startswith(b"python"):
            found[int(env[b"PMI_RANK"])] = pid
    return found


def one(n, fault, workdir):
    metrics = os.path.join(workdir, f"m-{fault}-{n}-{time.monotonic_ns()}.jsonl")
    cmd = [sys.executable, *TRAIN, "--metrics", metrics]
    env = dict(os.environ, OMP_NUM_THREADS="1", MPIR_CVAR_ENABLE_HEAVY_YIELD="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    opts = []
    if fault == "stop":
        cmd += ["--comm-timeout", "10"]
    if fault == "kill-survive":
        opts = ["-disable-auto-cleanup"]
        cmd = ["sh", "-c", shlex.join(cmd)]
    if fault == "sleep":
        site = os.path.join(workdir, "site")
        os.makedirs(site, exist_ok=True)
        with open(os.path.join(site, "sitecustomize.py"), "w") as f:
            f.write(SLEEPER)
        env["PYTHONPATH"] = site + os.pathsep + env["PYTHONPATH"]
        cmd = [*cmd[:2], *TRAIN[1:], "--metrics", metrics, "--straggler-warn", "0.5",
               "--epochs", "1", "--train-samples", "640"]
    proc = subprocess.Popen(["mpiexec", *opts, "-n", str(n), *cmd], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    start = time.monotonic()
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        if proc.poll() is not None or time.monotonic() - start > 120:
            out = proc.communicate()[0]
            return {"error": "job ended or stalled before logging steps", "output": out[-2000:]}
        time.sleep(0.05)
    t_fault = time.monotonic()
    if fault != "sleep":
        pids = rank_pids(proc.pid)
        victim = pids.get(n - 1)
        if victim is None:
            proc.kill()
            return {"error": f"rank pids not found: {pids}"}
        os.kill(victim, signal.SIGSTOP if fault.startswith("stop") else signal.SIGKILL)
    try:
        out = proc.communicate(timeout=900)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        return {"error": "hang: still running after 900 s", "output": out[-2000:]}
    seconds = time.monotonic() - t_fault
    lines = [ln for ln in out.splitlines() if ln.strip()]
    shown = [ln for ln in lines if "[mpinet]" in ln] or lines
    if fault == "sleep":
        with open(metrics) as f:
            steps = [json.loads(ln) for ln in f if '"step"' in ln]
        return {"seconds": round(seconds, 2), "exit_code": proc.returncode,
                "first_line": next((ln for ln in lines if "straggler" in ln), "")[:400],
                "metrics_step_record": {k: steps[-1].get(k) for k in ("step", "slowest_rank",
                                                                       "straggler_s")}}
    return {"seconds": round(seconds, 2), "exit_code": proc.returncode, "first_line": shown[0][:400]
            if shown else "", "lines": len(lines)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    p.add_argument("--faults", nargs="+", default=["stop", "stop-default", "kill",
                                                   "kill-survive", "sleep"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for n in a.ranks:
            for fault in a.faults:
                runs = [one(n, fault, workdir) for _ in range(a.repeats)]
                secs = [r["seconds"] for r in runs if "seconds" in r]
                rec = {"ranks": n, "fault": fault, "runs": runs,
                       "median_s": statistics.median(secs) if secs else None,
                       "max_s": max(secs) if secs else None}
                print(json.dumps({k: v for k, v in rec.items() if k != "runs"}),
                      runs[0].get("first_line", runs[0]), sep="\n  ", flush=True)
                if a.out:
                    with open(a.out, "a") as f:
                        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
