"""The Keras-like Model on one process: fit / evaluate / predict / callbacks."""
import numpy as np
import pytest
from mpi4py import MPI

from mpinet import callbacks
from mpinet.comm import create_communicator
from mpinet.data import augment
from mpinet.data.registry import get_dataset
from mpinet.training import Model
from mpinet.models import build_model
from mpinet.nn import init


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits", "train"), get_dataset("digits", "test")


def _model(lr=0.05):
    init.manual_seed(0)
    m = Model(build_model("mlp", num_classes=10, in_channels=1, input_size=8),
              create_communicator("mpi", MPI.COMM_SELF))
    return m.compile("sgd", lr=lr, momentum=0.9)


def test_evaluation_applies_the_training_normalization(digits):
    """Trained on normalized inputs, the model must be evaluated on normalized inputs: by
    default evaluate() uses fit's eval_transform, which gives other numbers than raw pixels."""
    train, test = digits
    norm = augment.Augment(mean=np.array([0.5]), std=np.array([0.1]))
    model = _model(lr=0.005)  # inputs span [-5, 5]: a gentler rate
    model.fit(train, epochs=4, batch_size=32, transform=norm, eval_transform=norm, verbose=False)
    default = model.evaluate(test)
    assert default == model.evaluate(test, transform=norm)
    assert default["accuracy"] > 0.9
    raw = model.evaluate(test, transform=augment.Augment())  # identity transform
    assert abs(raw["loss"] - default["loss"]) > 0.1
    pred = model.predict(test.images.astype(np.float32) / 255.0 if test.is_raw else test.images)
    assert (pred.argmax(1) == test.labels).mean() == pytest.approx(default["accuracy"])


def test_fit_history_evaluate_and_early_stopping(digits):
    train, test = digits
    model = _model()
    stopper = callbacks.EarlyStopping("val_accuracy", patience=1, min_delta=1.0)  # never improves
    history = model.fit(train, epochs=10, batch_size=32, validation_data=test,
                        callbacks=[stopper], verbose=False)
    assert stopper.stopped_epoch == 1  # epoch 0 sets best; epoch 1 fails to beat it by 1.0
    assert len(history.history["val_accuracy"]) == 2
    result = model.evaluate(test)
    assert set(result) == {"loss", "accuracy"} and 0.0 <= result["accuracy"] <= 1.0


def test_compile_and_fit_refuse_bad_input(digits):
    train, _ = digits
    model = _model()
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        model.fit(train, batch_size=0)
    with pytest.raises(ValueError, match="unknown metrics"):
        model.compile("sgd", metrics=("f1",))
    fresh = Model(build_model("mlp", num_classes=10, in_channels=1, input_size=8),
                  create_communicator("mpi", MPI.COMM_SELF))
    with pytest.raises(RuntimeError, match="compile"):
        fresh.fit(train)
    # evaluate and predict need no optimizer: a loaded model runs them without compile()
    assert set(fresh.evaluate(train)) == {"loss", "accuracy"}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_keeps_fp32_master_weights(digits, precision):
    """bf16: autocast with fp32 master weights; fp16: plus dynamic loss scaling."""
    train, test = digits
    init.manual_seed(0)
    net = build_model("mlp", num_classes=10, in_channels=1, input_size=8)
    model = Model(net, create_communicator("mpi", MPI.COMM_SELF))
    model.compile("sgd", lr=0.05, momentum=0.9, precision=precision)
    model.fit(train, epochs=3, batch_size=32, verbose=False)
    assert all(p.dtype == np.float32 for p in net.parameters())
    assert model.evaluate(test)["accuracy"] > 0.9
    if precision == "fp16":
        assert model.scaler is not None and model.scaler.get_scale() > 0


def test_error_on_one_rank_of_a_user_script_ends_the_job(tmp_path):
    """A plain user script (no mpinet.train): Model installs the abort handler under MPI."""
    import os
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "user.py"
    script.write_text(
        "import mpinet\n"
        "from mpinet.models import build_model\n"
        "from mpinet.data import get_dataset\n"
        "m = mpinet.Model(build_model('mlp', num_classes=10, in_channels=1, input_size=8))\n"
        "m.compile('sgd')\n"
        "if m.comm.rank == 1:\n"
        "    raise RuntimeError('deliberate failure on rank 1')\n"
        "m.fit(get_dataset('digits', 'train'), epochs=100, verbose=False)\n"
        "print('rank', m.comm.rank, 'finished')\n")
    env = dict(os.environ, PYTHONPATH=root,  # threads: mpinet.Model sizes them (mpinet/threads.py)
               MPIR_CVAR_ENABLE_HEAVY_YIELD="1", MPINET_COMM_TIMEOUT="600")
    t = time.monotonic()
    proc = subprocess.run(["mpiexec", "-n", "2", sys.executable, str(script)], env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "[mpinet] rank 1/2 failed" in out and "deliberate failure on rank 1" in out, out
    assert "finished" not in out
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end"


def test_old_import_paths_still_name_the_training_package():
    """mpinet.Model, mpinet.model.Model and mpinet.callbacks keep working as aliases."""
    import mpinet
    import mpinet.model
    from mpinet import training
    from mpinet.training import callbacks as training_callbacks

    assert mpinet.Model is mpinet.model.Model is training.Model is Model
    assert callbacks.EarlyStopping is training_callbacks.EarlyStopping
