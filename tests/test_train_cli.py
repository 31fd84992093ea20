"""python -m mpinet.train as users run it: under mpiexec, as a subprocess, bounded in time."""
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The environment a user has: no thread variables (mpinet sizes each rank's BLAS threads itself,
# mpinet/threads.py); ranks yield when idle because CI runs more ranks than cores.
ENV = dict({k: v for k, v in os.environ.items()
            if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
           MPIR_CVAR_ENABLE_HEAVY_YIELD="1", OMPI_MCA_mpi_yield_when_idle="1",
           PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_train(n, *flags, timeout=170):
    cmd = ["mpiexec", "-n", str(n), sys.executable, "-m", "mpinet.train", *flags]
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - t


def test_default_run_on_two_ranks_reaches_95_percent_in_under_two_minutes():
    proc, seconds = run_train(2, "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = [line for line in proc.stdout.splitlines() if line.startswith("final test:")]
    assert len(final) == 1, proc.stdout[-2000:]  # rank 0 alone reports
    accuracy = float(final[0].split("accuracy")[1].split(",")[0])
    print(f"default run: accuracy {accuracy:.4f} in {seconds:.1f} s")
    assert accuracy >= 0.95
    assert seconds < 120


@pytest.mark.parametrize("flags, message", [
    (("--model", "no-such-net"), "--model 'no-such-net' is unknown"),
    (("--dataset", "imagenet-22k"), "--dataset 'imagenet-22k' is unknown"),
    (("--batch-size", "0"), "--batch-size must be > 0"),
    (("--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"), "does not exist"),
    (("--train-samples", "1"), "1 training samples for 2 ranks"),
])
def test_bad_configuration_stops_every_rank_with_one_message(flags, message):
    proc, seconds = run_train(2, "--quiet", *flags, timeout=60)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mpinet.train: error")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert message in errors[0]
    assert "Traceback" not in proc.stderr
    assert seconds < 60


def test_help_lists_the_flags():
    proc = subprocess.run([sys.executable, "-m", "mpinet.train", "--help"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--model", "--dataset", "--data-dir", "--epochs", "--batch-size", "--lr",
                 "--schedule", "--comm", "--precision", "--checkpoint-dir", "--config"):
        assert flag in proc.stdout


def test_config_file_with_command_line_override_and_metrics_plot(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('model = "mlp"\nepochs = 2\nbatch-size = 64\nlr = 0.05\n')
    metrics = tmp_path / "m.jsonl"
    proc, _ = run_train(1, "--config", str(config), "--epochs", "1", "--quiet",
                        "--metrics", str(metrics), "--log-every", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = metrics.read_text().splitlines()
    epochs = [line for line in lines if '"kind": "epoch"' in line]
    assert len(epochs) == 1  # --epochs 1 on the command line beat epochs = 2 in the file
    out = tmp_path / "curves.png"
    plot = subprocess.run([sys.executable, "-m", "mpinet.plot", str(metrics), "-o", str(out)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert plot.returncode == 0, plot.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_config_key_is_one_clear_error(tmp_path):
    config = tmp_path / "run.json"
    config.write_text('{"modle": "mlp"}')
    proc, _ = run_train(2, "--config", str(config), timeout=60)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mpinet.train: error")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "unknown key 'modle'; did you mean 'model'?" in errors[0]


@pytest.mark.parametrize("flag, setting", [("--cudnn-benchmark", "benchmark"),
                                           ("--deterministic", "deterministic")])
def test_cudnn_flags_set_the_convolution_options(monkeypatch, flag, setting):
    from mpinet import train
    from mpinet.kernels import cudnn

    monkeypatch.setattr(cudnn, setting, False)
    train.apply_device_options(train.load_config([]))
    assert getattr(cudnn, setting) is False  # off by default, like PyTorch's
    train.apply_device_options(train.load_config([flag]))
    assert getattr(cudnn, setting) is True
