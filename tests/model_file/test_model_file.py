"""The model file: save / load_model round trips, what it records, and how it refuses bad files."""
import json
import os
import sys

import numpy as np
import pytest
from model_file_helpers import digits, rewrite_header, run, self_comm, trained_digits_model

import mpinet
from mpinet import nn
from mpinet.data.preprocess import Preprocess
from mpinet.training import model_file
from mpinet.training.model_file import ModelFileError
from mpinet.model import Model
from mpinet.models import build_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(trained model, path of its model file)."""
    model = trained_digits_model("small-cnn", width=4)
    path = str(tmp_path_factory.mktemp("model") / "digits.mpinet")
    model.save(path)
    return model, path


def test_load_model_reproduces_evaluate_and_predict_exactly(saved):
    model, path = saved
    _, test = digits()
    loaded = mpinet.load_model(path, comm=self_comm())
    assert loaded.evaluate(test) == model.evaluate(test)  # every figure, every bit
    x = test.images[:40].astype(np.float32) / 255.0
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    # the normalisation is what makes it so: without it the same weights score otherwise
    loaded.preprocess = None
    assert loaded.evaluate(test)["loss"] != model.evaluate(test)["loss"]


def test_a_bf16_model_is_reloaded_to_compute_in_bf16(tmp_path):
    """The precision is part of the file: the reload's forward casts as the training one did."""
    model = trained_digits_model("small-cnn", width=4, precision="bf16")
    path = model.save(str(tmp_path / "bf16.mpinet"))
    loaded = mpinet.load_model(path, comm=self_comm())
    assert loaded.precision == "bf16"
    _, test = digits()
    assert loaded.evaluate(test) == model.evaluate(test)
    loaded.precision = "fp32"
    assert loaded.evaluate(test)["loss"] != model.evaluate(test)["loss"]


@pytest.mark.gpu
def test_saved_on_the_gpu_loads_on_the_cpu_and_the_gpu(tmp_path):
    from mpinet import backend

    backend.select_device(0, "gpu")
    try:
        model = trained_digits_model("small-cnn", width=4)
        path = model.save(str(tmp_path / "gpu.mpinet"))
        _, test = digits()
        x = test.images[:64].astype(np.float32) / 255.0
        on_gpu = mpinet.load_model(path, comm=self_comm())
        assert backend.is_gpu_array(on_gpu.network.state_dict()["features.0.weight"])
        np.testing.assert_array_equal(on_gpu.predict(x), model.predict(x))
        assert on_gpu.evaluate(test) == model.evaluate(test)
    finally:
        backend.use_cpu()
    on_cpu = mpinet.load_model(path, comm=self_comm())
    np.testing.assert_allclose(on_cpu.predict(x), model.predict(x), rtol=1e-4, atol=1e-4)


def test_the_file_records_architecture_preprocessing_and_versions(saved):
    model, path = saved
    tensors, meta = model_file.read(path)
    assert meta["architecture"] == {"kind": "zoo", "name": "small-cnn", "options": {
        "num_classes": 10, "in_channels": 1, "input_size": 8, "width": 4}}
    mean, std = model.eval_transform.mean, model.eval_transform.std
    assert meta["preprocess"]["input_shape"] == [1, 8, 8]
    assert meta["preprocess"]["mean"] == [float(mean[0])]  # the exact float64, through JSON
    assert meta["preprocess"]["std"] == [float(std[0])]
    assert meta["precision"] == "fp32"
    assert meta["mpinet_version"] == mpinet.__version__
    assert meta["format_version"] == model_file.FORMAT_VERSION
    assert meta["training"]["metrics"] == ["accuracy"]
    state = model.network.state_dict()
    assert list(tensors) == list(state) == meta["tensors"]  # parameters then buffers, in order
    for name, value in state.items():
        np.testing.assert_array_equal(tensors[name], value)


def test_class_names_and_an_explicit_preprocess_are_recorded(tmp_path, saved):
    model, _ = saved
    path = str(tmp_path / "named.mpinet")
    pre = Preprocess((1, 8, 8), mean=[0.25], std=[0.5])
    model.save(path, class_names=[f"digit {i}" for i in range(10)], preprocess=pre)
    loaded = mpinet.load_model(path, comm=self_comm())
    assert loaded.class_names == [f"digit {i}" for i in range(10)]
    assert loaded.preprocess == pre


def test_predict_works_without_compile():
    """The issue's example: Model(net).load_weights(p); predict(x) raised AttributeError."""
    net = build_model("mlp", num_classes=10, in_channels=1, input_size=8)
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    plain = Model(net, self_comm())
    compiled = Model(net, self_comm()).compile("sgd", lr=0.1)
    np.testing.assert_array_equal(plain.predict(x), compiled.predict(x))


@mpinet.register_model
class TinyNet(nn.Module):
    def __init__(self, num_classes=3, width=4, scale=None):
        super().__init__()
        self.fc1 = nn.Linear(6, width)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(width, num_classes)
        self.input_shape = (6,)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@mpinet.register_model(name="tests.tiny_builder")
def tiny_builder(width: int = 5):
    return TinyNet(num_classes=2, width=width)


def test_registered_class_and_builder_round_trip(tmp_path):
    x = np.random.default_rng(1).random((4, 6), dtype=np.float32)
    tiny = {"kind": "registered", "name": f"{__name__}.TinyNet",
            "arguments": {"num_classes": 3, "width": 7, "scale": None}}
    for net, arch in [(TinyNet(width=7), tiny),
                      (tiny_builder(width=3), {"kind": "registered", "name": "tests.tiny_builder",
                                               "arguments": {"width": 3}})]:
        path = str(tmp_path / "tiny.mpinet")
        Model(net, self_comm()).save(path)
        loaded = mpinet.load_model(path, comm=self_comm())
        assert loaded.metadata["architecture"] == arch
        assert loaded.preprocess.input_shape == (6,)
        np.testing.assert_array_equal(loaded.predict(x), Model(net, self_comm()).predict(x))


def test_what_cannot_be_recorded_is_refused_when_saving(tmp_path):
    class Unregistered(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

    path = str(tmp_path / "x.mpinet")
    with pytest.raises(ModelFileError, match="register_model"):
        Model(Unregistered(), self_comm()).save(path, preprocess=Preprocess((2,)))
    with pytest.raises(ModelFileError, match="argument 'scale' is a function"):
        Model(TinyNet(scale=lambda v: v), self_comm()).save(path)
    assert not os.path.exists(path)  # nothing half-written


def test_a_class_not_registered_in_the_loading_process_is_named(tmp_path):
    path = str(tmp_path / "tiny.mpinet")
    Model(TinyNet(), self_comm()).save(path)
    from mpinet.nn import registry

    entry = registry._REGISTRY.pop(f"{__name__}.TinyNet")
    try:
        with pytest.raises(ModelFileError) as err:
            mpinet.load_model(path, comm=self_comm())
        assert str(err.value).startswith(
            f"{path}: cannot rebuild the architecture: the model class '{__name__}.TinyNet' is "
            f"not registered in this process")
    finally:
        registry._REGISTRY[f"{__name__}.TinyNet"] = entry


def test_checkpoints_carry_the_preprocessing(tmp_path, saved):
    """--resume restores Model.preprocess from the checkpoint."""
    model, _ = saved
    model.preprocess = Preprocess((1, 8, 8), mean=[0.125], std=[0.75])
    try:
        path = model.save_checkpoint(str(tmp_path / "ckpt"))
    finally:
        model.preprocess = None
    from mpinet import checkpoint

    resumed = Model(build_model("small-cnn", num_classes=10, in_channels=1, input_size=8,
                                width=4), self_comm()).compile("sgd", lr=0.02, momentum=0.9)
    resumed.load_training_state(checkpoint.load(path))
    assert resumed.preprocess == Preprocess((1, 8, 8), mean=[0.125], std=[0.75])


# ---- damaged and foreign files ----------------------------------------------------------
def _damaged(tmp_path, path, how) -> str:
    data = bytearray(open(path, "rb").read())
    header_end = 8 + int.from_bytes(data[:8], "little")
    if how == "truncated in the header":
        data = data[:header_end // 2]
    elif how == "truncated in the tensors":
        data = data[:header_end + (len(data) - header_end) // 2]
    elif how == "a weight changed":
        data[-3] ^= 0x01
    elif how == "the metadata changed":  # one digit of a stored float, header still valid JSON
        at = data.index(b'"mean\\":[0.') + len(b'"mean\\":[0.')
        data[at] = ord("1") if data[at] != ord("1") else ord("2")
    out = str(tmp_path / f"{how.replace(' ', '_')}.mpinet")
    open(out, "wb").write(bytes(data))
    return out


@pytest.mark.parametrize("how, problem", [
    ("truncated in the header", "truncated: the header needs"),
    ("truncated in the tensors", "truncated:"),
    ("a weight changed", "checksum mismatch"),
    ("the metadata changed", "checksum mismatch"),
])
def test_damaged_files_are_refused_naming_the_file(tmp_path, saved, how, problem):
    bad = _damaged(tmp_path, saved[1], how)
    with pytest.raises(ModelFileError) as err:
        mpinet.load_model(bad, comm=self_comm())
    message = str(err.value)
    assert message.startswith(f"{bad}: ") and problem in message and "\n" not in message


def test_a_newer_format_version_is_refused_saying_so(tmp_path, saved):
    newer = rewrite_header(saved[1], str(tmp_path / "v2.mpinet"), format_version="2")
    with pytest.raises(ModelFileError, match=r"format version 2 is newer than this mpinet .* "
                                             r"upgrade mpinet"):
        mpinet.load_model(newer, comm=self_comm())
    # the same header rewrite at the current version still loads: only the version was wrong
    same = rewrite_header(saved[1], str(tmp_path / "v1.mpinet"), format_version="1")
    mpinet.load_model(same, comm=self_comm())


def test_foreign_and_missing_files_are_named(tmp_path, saved):
    model, _ = saved
    weights = str(tmp_path / "w.safetensors")
    model.save_weights(weights)
    junk = tmp_path / "junk.mpinet"
    junk.write_bytes(b"\x00" * 100)
    for path, problem in [(weights, "not an mpinet model file"), (str(junk), "not an mpinet "
                          "model file"), (str(tmp_path / "none.mpinet"), "no such model file"),
                          (str(tmp_path), "is a directory")]:
        with pytest.raises(ModelFileError, match=problem):
            mpinet.load_model(path, comm=self_comm())


def test_describe_command_verifies_and_summarises(tmp_path, saved, capsys):
    assert model_file.main([saved[1]]) == 0
    out = capsys.readouterr().out
    assert f"{saved[1]}: mpinet model file, format version 1" in out
    assert 'architecture: zoo small-cnn {"in_channels": 1' in out and "precision: fp32" in out
    assert model_file.main([saved[1], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["preprocess"]["input_shape"] == [1, 8, 8]
    cut = tmp_path / "cut.mpinet"
    cut.write_bytes(open(saved[1], "rb").read()[:-10])
    assert model_file.main([str(cut)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mpinet.training.model_file: error: {cut}: truncated")


def test_importing_mpinet_for_the_model_file_starts_no_mpi():
    proc = run(["-c", "import sys, mpinet; mpinet.load_model; mpinet.register_model; "
                      "import mpinet.training.model_file; assert 'mpi4py.MPI' not in sys.modules, "
                      "'MPI imported'; assert not any('cupy' in m for m in sys.modules)"],
               timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---- the trainer writes it; a fresh process reproduces the run's evaluation ---------------
EVALUATE = """
import json, sys
import mpinet
from mpinet.data import get_dataset
model = mpinet.load_model(sys.argv[1])
e = model.metadata["evaluation"]
test = get_dataset(e["dataset"], e["split"], data_dir=e["data_dir"], **e["options"])
figures = model.evaluate(test)
model.preprocess = None  # as a reload that lost the normalisation would score
plain = model.evaluate(test)
if model.comm.rank == 0:
    print(json.dumps({"figures": figures, "recorded": e["figures"], "plain": plain}))
"""


def _final_line(stdout: str) -> dict:
    line = [s for s in stdout.splitlines() if s.startswith("final test:")][0]
    return {k: v for k, v in (part.split() for part in line[len("final test:"):].split(","))}


@pytest.mark.slow
def test_augment_run_on_two_ranks_is_reproduced_from_the_model_file(tmp_path):
    path = str(tmp_path / "m.mpinet")
    proc = run(["-m", "mpinet.train", "--quiet", "--model", "small-cnn", "--model-opt",
                "width=8", "--epochs", "2", "--augment", "--save-model", path], mpi_ranks=2,
               timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = _final_line(proc.stdout)

    fresh = run(["-c", EVALUATE, path], timeout=120)  # one process, nothing but the file
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    out = json.loads(fresh.stdout.splitlines()[-1])
    print("2-rank run printed", printed, "recorded", out["recorded"], "fresh 1 process",
          out["figures"], "without normalisation", out["plain"])
    assert out["figures"]["accuracy"] == out["recorded"]["accuracy"]  # to the last bit
    assert f"{out['figures']['accuracy']:.4f}" == printed["accuracy"]
    # the loss sums over other batch groupings on 1 rank than on 2: equal to float32 rounding
    assert out["figures"]["loss"] == pytest.approx(out["recorded"]["loss"], rel=1e-6)
    assert out["plain"]["accuracy"] != out["figures"]["accuracy"]  # the normalisation matters

    fresh2 = run(["-c", EVALUATE, path], mpi_ranks=2, timeout=120)  # as the run evaluated
    assert fresh2.returncode == 0, fresh2.stderr[-3000:]
    out2 = json.loads(fresh2.stdout.splitlines()[-1])
    assert out2["figures"] == out2["recorded"]  # loss and accuracy, every bit


def test_trainer_writes_the_model_file_into_the_checkpoint_dir_by_default(tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = run(["-m", "mpinet.train", "--epochs", "1", "--augment", "photo", "--checkpoint-dir",
                str(ckpt)], timeout=120)  # photo: crop + flip (digits' own preset only normalizes)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = str(ckpt / "model.mpinet")
    assert f"model file: {path}" in proc.stdout
    printed = _final_line(proc.stdout)
    fresh = run(["-c", EVALUATE, path], timeout=120)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    out = json.loads(fresh.stdout.splitlines()[-1])
    assert out["figures"] == out["recorded"]  # one rank both times: every figure, every bit
    assert {k: f"{v:.4f}" for k, v in out["figures"].items()} == printed
    meta = model_file.read(path)[1]
    assert meta["training"]["transform"] == {"type": "Augment", "crop_padding": 2, "flip": True,
                                             "seed": 0, "labels_too": False}
    assert meta["training"]["config"]["augment"] == "photo"
    assert meta["class_names"] == [str(d) for d in range(10)]


def test_trainer_refuses_an_unwritable_model_path_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for path, problem in [(blocker / "m.mpinet", "is not a directory"),
                          (tmp_path, "is a directory; give a file name")]:
        proc = run(["-m", "mpinet.train", "--quiet", "--save-model", str(path)], timeout=120)
        assert proc.returncode == 2
        errors = [s for s in proc.stderr.splitlines() if s.startswith("mpinet.train: error")]
        assert len(errors) == 1 and str(path) in errors[0] and problem in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr and "epoch" not in proc.stdout


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
