"""Checkpoints across processes: elastic resume (saved on 4 ranks, resumed on 2), SIGKILL in the
middle of a save, SIGTERM to ``python -m mpinet.train`` and ``--resume auto``.

Each test starts its programs with ``timeout``; mpiexec ranks run with the threads mpinet chooses
and MPICH's heavy yield so oversubscribed ranks on a 2-core machine do not spin.
"""
from __future__ import annotations

import collections
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from ckpt_helpers import NUM_SAMPLES, PYTHON, REPO, SCRIPTS, mpi_env
from mpinet import checkpoint

MPIEXEC = shutil.which("mpiexec")
needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec (pip install mpich)")


def _run(cmd, timeout_s: int, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(["timeout", "-k", "5", str(timeout_s)] + cmd, capture_output=True,
                         text=True, env=mpi_env(), cwd=REPO, **kw)
    assert out.returncode == 0, (f"{' '.join(cmd)} exited {out.returncode}\n"
                                 f"stdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}")
    return out


# ---- elastic: 4 ranks -> 2 ranks ----------------------------------------------------------
@needs_mpiexec
def test_resume_on_fewer_ranks_sees_each_remaining_sample_once(tmp_path):
    from mpinet.data.sampler import DistributedSampler

    ckpt_dir, first, second = tmp_path / "ckpt", tmp_path / "first.json", tmp_path / "second.json"
    script = os.path.join(SCRIPTS, "elastic_run.py")
    # 46 samples, 4 per rank: 3 steps per epoch on 4 ranks; step 4 is the first of epoch 1.
    _run([MPIEXEC, "-n", "4", PYTHON, script, str(ckpt_dir), str(first), "--stop-at", "4"], 90)
    _run([MPIEXEC, "-n", "2", PYTHON, script, str(ckpt_dir), str(second)], 90)
    a, b = json.loads(first.read_text()), json.loads(second.read_text())

    assert a["preempted"] == "SIGTERM" and a["global_step"] == 4 and a["world_size"] == 4
    saved = checkpoint.load(ckpt_dir / "ckpt-4", rank=0)
    assert saved["world_size"] == 4
    epoch, consumed = saved["sampler"]["epoch"], saved["sampler"]["consumed"]
    assert (epoch, consumed) == (1, 16), "stopped after the first step of epoch 1 (mid-epoch)"

    def samples(report, keep):
        return [i for _, e, off, idx in report["batches"] if keep(e, off) for i in idx]

    trained_before = samples(a, lambda e, off: e == epoch and off < consumed)
    trained_after = samples(b, lambda e, off: e == epoch)
    counts = collections.Counter(trained_before + trained_after)
    assert sorted(counts) == list(range(NUM_SAMPLES)), "every sample of the epoch was trained"
    assert set(counts.values()) == {1}, \
        f"samples trained twice: {sorted(i for i, c in counts.items() if c > 1)}"
    # The 2-rank run continued the same epoch order where the 4-rank run stopped.
    order = DistributedSampler(NUM_SAMPLES, 4, 0, 2,
                               seed=saved["sampler"]["seed"]).epoch_order(epoch)
    resumed = sorted((off, r, idx) for r, e, off, idx in b["batches"] if e == epoch)
    assert resumed[0][0] == consumed
    assert [i for _, _, idx in resumed for i in idx] == order[consumed:].tolist()
    # And training went on: the rest of epoch 1 (30 samples / 8 = 4 steps) and epoch 2 (6 steps).
    assert b["world_size"] == 2 and b["preempted"] is None and b["finite"]
    assert b["global_step"] == 4 + 4 + 6
    assert sorted(samples(b, lambda e, off: e == epoch + 1)) == list(range(NUM_SAMPLES))


# ---- SIGKILL while saving -----------------------------------------------------------------
def test_sigkill_during_save_leaves_the_previous_checkpoint(tmp_path):
    sys.path.insert(0, SCRIPTS)
    from save_loop import expected_array

    megabytes = 48
    proc = subprocess.Popen(["timeout", "-k", "5", "60", PYTHON,
                             os.path.join(SCRIPTS, "save_loop.py"), str(tmp_path), str(megabytes)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env(), cwd=REPO)
    deadline = time.monotonic() + 45
    tmp_seen = None
    try:
        python_pid = int(proc.stdout.readline().split()[1])  # "pid <n>"
        # Wait until a big save (step >= 2) is being written, then kill at once.
        while time.monotonic() < deadline and tmp_seen is None:
            assert proc.poll() is None, f"save loop died: {proc.stderr.read()}"
            for name in os.listdir(tmp_path):
                m = re.match(r"ckpt-(\d+)\.tmp-", name)
                if m and int(m.group(1)) >= 3:
                    tmp_seen = name
                    break
            time.sleep(0.002)
        assert tmp_seen, "no save in progress seen within 45 s"
        os.kill(python_pid, signal.SIGKILL)  # the python process itself (`timeout` is its parent)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = [int(s) for s in re.findall(r"saved (\d+)", out)]
    assert saved, "the loop reported no finished save"
    in_flight = int(re.match(r"ckpt-(\d+)", tmp_seen).group(1))
    leftover = os.path.isdir(tmp_path / tmp_seen)
    # If the folder is still there the kill hit mid-save: the newest good one is the last
    # reported. (Otherwise the rename won the race and the in-flight one is complete.)
    expected_step = saved[-1] if leftover else in_flight
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = checkpoint.latest(tmp_path)
    assert any("unfinished" in str(w.message) for w in caught) == leftover
    assert path == os.path.join(tmp_path, f"ckpt-{expected_step}")
    state = checkpoint.load(path)
    assert state["global_step"] == expected_step
    np.testing.assert_array_equal(state["model"]["big"], expected_array(expected_step, megabytes))


# ---- SIGTERM to python -m mpinet.train, then --resume auto --------------------------------
def _train_cmd(ckpt_dir, weights, resume=False):
    # The built-in synthetic set needs no scikit-learn import (seconds on a busy machine):
    # 1024 samples / 16 = 64 steps per epoch, 192 in all; the first checkpoint is at step 25.
    cmd = [PYTHON, "-m", "mpinet.train", "--model", "mlp", "--dataset", "synthetic",
           "--epochs", "3", "--batch-size", "16", "--seed", "3", "--quiet", "--log-every", "1",
           "--checkpoint-dir", str(ckpt_dir), "--checkpoint-every", "25",
           "--save-weights", str(weights)]
    return cmd + (["--resume", "auto"] if resume else [])


def _timeout(cmd, seconds: int = 90) -> list:
    # GNU timeout passes a SIGTERM it receives on to the command (and returns its exit code).
    return ["timeout", "-k", "5", str(seconds)] + cmd


def test_sigterm_checkpoints_and_resume_auto_finishes_identically(tmp_path):
    ref_weights = tmp_path / "ref.safetensors"
    # The uninterrupted reference runs alongside the interrupted run.
    ref = subprocess.Popen(_timeout(_train_cmd(tmp_path / "ref_ckpt", ref_weights)),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=mpi_env(), cwd=REPO)
    ckpt_dir, weights = tmp_path / "ckpt", tmp_path / "final.safetensors"
    proc = subprocess.Popen(_timeout(_train_cmd(ckpt_dir, weights)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=mpi_env(), cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not glob.glob(str(ckpt_dir / "ckpt-*[0-9]")):
            assert proc.poll() is None, f"training ended before a checkpoint: {proc.communicate()}"
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        ref_out, _ = ref.communicate(timeout=90)
    finally:
        for p in (proc, ref):
            if p.poll() is None:
                p.kill()
    assert ref.returncode == 0, ref_out
    assert proc.returncode == 0, f"exit {proc.returncode} after SIGTERM\n{out}\n{err}"
    m = re.search(r"SIGTERM received: checkpointing at step (\d+)", out)
    assert m, f"no preemption message:\n{out}\n{err}"
    stop = int(m.group(1))
    assert 25 <= stop < 192, f"stopped at step {stop}: not during training"
    assert checkpoint.latest(ckpt_dir) == os.path.join(ckpt_dir, f"ckpt-{stop}")
    assert not weights.exists(), "a preempted run must not write final weights"

    out = _run(_train_cmd(ckpt_dir, weights, resume=True), 90).stdout
    assert re.search(rf"resumed from .*ckpt-{stop} at step {stop}", out), out
    ref_w, got = checkpoint.load_weights(ref_weights), checkpoint.load_weights(weights)
    assert list(ref_w) == list(got)
    for k in ref_w:
        assert np.array_equal(ref_w[k], got[k]), f"{k} differs from the uninterrupted run"
