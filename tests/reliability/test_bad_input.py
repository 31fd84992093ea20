"""Bad input: one line, exit code 2, before any training, from rank 0 only (issue #20).

1 rank: mpinet.train.main in this process. 2 ranks: one mpiexec job runs every case on both
ranks (bad_input_job.py); rank 0 must print exactly the one line, rank 1 nothing.
"""
import json
import os
import subprocess
import sys
import tempfile

import pytest

from bad_input_cases import BASE, make_cases

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
with tempfile.TemporaryDirectory() as _names_dir:
    NAMES = sorted(make_cases(_names_dir))


@pytest.fixture
def quiet_main(monkeypatch):
    """train.main without it touching this process's signal and exception hooks."""
    import threading

    from mpinet import train
    from mpinet.training.preemption import PreemptionFlag

    monkeypatch.setattr(PreemptionFlag, "install", lambda self: None)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    return train.main


@pytest.mark.parametrize("name", NAMES)
def test_one_rank(name, tmp_path, quiet_main, capsys):
    argv, expected = make_cases(str(tmp_path))[name]
    try:
        code = quiet_main(BASE + argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("mpinet.train: error") and expected in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-input")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "HYDRA_"))}
    env.update(PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               MPIR_CVAR_ENABLE_HEAVY_YIELD="1", MPINET_COMM_TIMEOUT="30")
    out = str(tmp / "results")
    job = os.path.join(HERE, "bad_input_job.py")
    proc = subprocess.run(["mpiexec", "-n", "2", sys.executable, job, str(tmp), out], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.load(open(f"{out}.{r}")) for r in range(2)]


@pytest.mark.parametrize("name", NAMES + ["gpu-oversubscribed"])
def test_two_ranks(name, two_rank_results):
    rank0, rank1 = two_rank_results
    expected = rank0["expected"][name]
    (code0, err0), (code1, err1) = rank0["results"][name], rank1["results"][name]
    assert code0 == 2 and code1 == 2, (code0, err0, code1, err1)
    lines = err0.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], err0
    assert err1 == "", f"rank 1 printed: {err1}"


def test_checkpoint_load_tensor_file_is_a_directory(tmp_path):
    from mpinet import checkpoint
    from mpinet.checkpoint.format import TENSORS_FILE

    sys.path.insert(0, os.path.join(ROOT, "tests", "checkpoint"))
    from ckpt_helpers import sample_state

    class OneRank:  # checkpoint.save's communicator needs, on one rank
        rank, size = 0, 1

        def allgather_obj(self, obj):
            return [obj]

        def bcast_obj(self, obj, root=0):
            return obj

    path = checkpoint.save(str(tmp_path), sample_state(), 3, OneRank())
    checkpoint.load(path)  # whole: loads
    tensors = os.path.join(path, TENSORS_FILE)
    os.remove(tensors)
    os.mkdir(tensors)
    with pytest.raises(checkpoint.CheckpointError,
                       match="a directory where the checkpoint's tensor file should be"):
        checkpoint.load(path)
