"""A decode worker killed in the middle of a 2-rank training run ends the whole job within
seconds, with an error naming the worker and its signal: no rank is left waiting."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train_cli import ENV, ROOT

sys.path.insert(0, str(Path(__file__).parent / "data"))
from image_tree import write_image_tree


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def _is_decode_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_killed_worker_ends_the_job_naming_it(tmp_path):
    tree = write_image_tree(tmp_path, per_class=(40, 40), size=(8, 8))
    write_image_tree(tmp_path, per_class=(2, 2), size=(8, 8), split="test")
    cmd = ["mpiexec", "-n", "2", sys.executable, "-m", "mpinet.train", "--quiet",
           "--dataset", "image-folder", "--data-dir", str(tree), "--workers", "1",
           "--epochs", "1000", "--batch-size", "4"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        workers = []
        while not workers and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            workers = [p for p in _descendants(proc.pid) if _is_decode_worker(p)]
        assert workers, "no decode worker appeared"
        time.sleep(1.0)  # training under way
        os.kill(workers[0], signal.SIGKILL)
        killed_at = time.monotonic()
        out, err = proc.communicate(timeout=60)
        assert time.monotonic() - killed_at < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "data loader worker 0" in err and "killed by signal SIGKILL" in err, err[-3000:]
