"""python -m mpinet.predict: top-k output, masks, input order on 1, 2 and 4 ranks, bad inputs."""
import csv
import json
import os
import sys
import threading

import numpy as np
import pytest
from model_file_helpers import (digits, rewrite_header, run, self_comm, trained_digits_model,
                                write_digit_pngs)

import mpinet
from mpinet import predict
from mpinet.model import Model
from mpinet.models import build_model
from mpinet.nn import init


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A trained digits model file, 6 PNGs in a folder and a .npy of 30 more test images."""
    root = tmp_path_factory.mktemp("predict")
    model = trained_digits_model("small-cnn", width=4)
    path = str(root / "digits.mpinet")
    model.save(path)
    _, test = digits()
    pngs = write_digit_pngs(str(root / "pngs"), test.images[:6])
    npy = str(root / "more.npy")
    np.save(npy, test.images[6:36])
    return {"root": root, "model": path, "pngs": pngs, "folder": str(root / "pngs"), "npy": npy,
            "images": test.images[:36], "trained": model}


@pytest.fixture
def cli(monkeypatch, capsys):
    """predict.main in this process: (exit code, stdout, stderr)."""
    # main installs the abort-on-error hooks for MPI jobs; keep them out of pytest
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)

    def call(*argv):
        code = predict.main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def _expected_probabilities(setup) -> np.ndarray:
    x = setup["images"].astype(np.float32) / 255.0
    return predict._softmax(setup["trained"].predict(x))


def test_top_k_csv_in_input_order_with_the_models_probabilities(setup, cli, tmp_path):
    out = tmp_path / "p.csv"
    code, stdout, stderr = cli(setup["model"], setup["folder"], setup["npy"], "--top-k", 3,
                               "--batch-size", 5, "--output", out)
    assert code == 0, stderr
    rows = list(csv.DictReader(open(out)))
    names = setup["pngs"] + [f"{setup['npy']}[{i}]" for i in range(30)]
    assert [r["input"] for r in rows[::3]] == names
    assert [int(r["k"]) for r in rows[:3]] == [1, 2, 3]
    probs = _expected_probabilities(setup)
    ids = np.array([int(r["class_id"]) for r in rows]).reshape(36, 3)
    np.testing.assert_array_equal(ids, np.argsort(-probs, axis=1, kind="stable")[:, :3])
    got = np.array([float(r["probability"]) for r in rows]).reshape(36, 3)
    np.testing.assert_allclose(got, np.take_along_axis(probs, ids, 1), atol=1e-6)


def test_printed_and_json_outputs_agree(setup, cli, tmp_path):
    code, stdout, _ = cli(setup["model"], setup["pngs"][0], setup["pngs"][1], "--top-k", 2)
    assert code == 0
    lines = stdout.strip().splitlines()
    assert [s.split(":")[0] for s in lines] == setup["pngs"][:2]
    code, _, _ = cli(setup["model"], setup["pngs"][0], setup["pngs"][1], "--top-k", 2,
                     "--output", tmp_path / "p.json")
    data = json.load(open(tmp_path / "p.json"))
    for line, entry in zip(lines, data, strict=True):
        shown = ", ".join(f"{t['class_name']} {t['probability']:.4f}" for t in entry["top_k"])
        assert line == f"{entry['input']}: {shown}"


def _write_image(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)
    return str(path)


def test_bad_inputs_stop_with_one_line_naming_the_file(setup, cli, tmp_path):
    wrong_size = _write_image(tmp_path / "big.png", np.zeros((9, 8), np.uint8))
    rgb = _write_image(tmp_path / "rgb.png", np.zeros((8, 8, 3), np.uint8))
    text = tmp_path / "notes.txt"
    text.write_text("x")
    wrong_shape = str(tmp_path / "wrong.npy")
    np.save(wrong_shape, np.zeros((2, 3, 8, 8), np.uint8))
    out_of_range = str(tmp_path / "range.npy")
    np.save(out_of_range, np.full((2, 1, 8, 8), 255.0, np.float32))
    missing = str(tmp_path / "missing.png")
    pickled = str(tmp_path / "objects.npy")
    np.save(pickled, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    cases = [
        ([wrong_size], f"{wrong_size}: the model expects 8x8 pixels (WxH), the image is 8x9"),
        ([rgb], f"{rgb}: the model expects 1 channel(s) (L), the image has 3 (mode RGB)"),
        ([missing], f"{missing}: no such file or folder"),
        ([str(text)], f"{text}: not an image"),
        ([wrong_shape],
         f"{wrong_shape}: array of shape (2, 3, 8, 8); the model expects (N, 1, 8, 8)"),
        ([out_of_range], f"{out_of_range}: sample 0 spans [255, 255]; expected pixels in [0, 1]"),
        ([pickled], f"{pickled}: not a readable .npy array"),  # never unpickled
        # a good input first: the bad one is still found before anything is predicted
        ([setup["pngs"][0], rgb], f"{rgb}: the model expects 1 channel(s)"),
    ]
    for inputs, message in cases:
        code, stdout, stderr = cli(setup["model"], *inputs)
        assert code == 2 and stdout == "", (inputs, stdout)
        assert stderr.count("\n") == 1 and stderr.startswith(f"mpinet.predict: error: {message}"), \
            (message, stderr)


def test_resize_accepts_an_image_of_another_size(setup, cli, tmp_path):
    big = _write_image(tmp_path / "big.png", np.kron(setup["images"][0, 0], np.ones((2, 2),
                                                                                   np.uint8)))
    code, stdout, stderr = cli(setup["model"], big, "--resize", "--top-k", 1)
    assert code == 0, stderr
    assert stdout.startswith(f"{big}: ")


def test_bad_model_files_and_arguments_exit_2(setup, cli, tmp_path):
    data = open(setup["model"], "rb").read()
    truncated = tmp_path / "cut.mpinet"
    truncated.write_bytes(data[:len(data) - 100])
    flipped = bytearray(data)
    flipped[-5] ^= 0x10
    tampered = tmp_path / "tampered.mpinet"
    tampered.write_bytes(bytes(flipped))
    newer = rewrite_header(setup["model"], str(tmp_path / "v9.mpinet"), format_version="9")
    for model, message in [(truncated, f"{truncated}: truncated: "),
                           (tampered, f"{tampered}: checksum mismatch"),
                           (newer, f"{newer}: model-file format version 9 is newer than this "
                                   f"mpinet"),
                           (tmp_path / "none.mpinet", "none.mpinet: no such model file")]:
        code, _, stderr = cli(model, setup["npy"])
        assert code == 2 and stderr.count("\n") == 1 and message in stderr, stderr
    code, _, stderr = cli(setup["model"], setup["npy"], "--top-k", 0)
    assert code == 2 and "--top-k must be >= 1" in stderr
    code, _, stderr = cli(setup["model"], setup["npy"], "--output", tmp_path / "p.txt")
    assert code == 2 and "must end in .csv or .json" in stderr


@pytest.fixture(scope="module")
def unet_file(tmp_path_factory):
    """An untrained U-Net (random weights: its masks still mix classes), inputs, its masks."""
    init.manual_seed(3)
    net = build_model("unet", num_classes=3, in_channels=1, input_size=16, base_width=4, depth=2)
    model = Model(net, self_comm())
    path = str(tmp_path_factory.mktemp("unet") / "unet.mpinet")
    model.save(path)
    x = np.random.default_rng(0).integers(0, 256, (7, 1, 16, 16), dtype=np.uint8)
    npy = str(tmp_path_factory.mktemp("unet_in") / "scans.npy")
    np.save(npy, x)
    return path, npy, model.predict(x.astype(np.float32) / 255.0).argmax(axis=1)


def test_segmentation_masks_as_png(unet_file, cli, tmp_path):
    from PIL import Image

    path, npy, expected = unet_file
    code, stdout, stderr = cli(path, npy, "--output", tmp_path / "masks", "--batch-size", 3)
    assert code == 0, stderr
    for i in range(7):
        mask = np.asarray(Image.open(tmp_path / "masks" / f"scans_{i}.png"))
        np.testing.assert_array_equal(mask, expected[i])
    assert len(set(expected.reshape(-1).tolist())) > 1  # the comparison can tell masks apart
    code, _, stderr = cli(path, npy)
    assert code == 2 and "pass --output FOLDER" in stderr


@pytest.mark.slow
def test_two_and_four_ranks_write_the_same_files_as_one(setup, unet_file, tmp_path):
    """The CLI as users run it: the same CSV (input order) and masks on 1, 2 and 4 ranks."""
    outputs = {}
    for ranks in (1, 2, 4):
        csv_path = tmp_path / f"p{ranks}.csv"
        proc = run(["-m", "mpinet.predict", setup["model"], setup["folder"], setup["npy"],
                    "--batch-size", "4", "--top-k", "3", "--output", str(csv_path)],
                   mpi_ranks=ranks if ranks > 1 else None, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[ranks] = csv_path.read_bytes()
    assert outputs[2] == outputs[1] and outputs[4] == outputs[1]
    assert outputs[1].count(b"\n") == 1 + 36 * 3

    masks = {}
    for ranks in (1, 2):
        folder = tmp_path / f"masks{ranks}"
        proc = run(["-m", "mpinet.predict", unet_file[0], unet_file[1], "--batch-size", "2",
                    "--output", str(folder)], mpi_ranks=ranks if ranks > 1 else None,
                   timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        masks[ranks] = {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder))}
    assert masks[2] == masks[1] and len(masks[1]) == 7


def test_bad_input_under_two_ranks_is_one_line_and_exit_2(setup, tmp_path):
    rgb = _write_image(tmp_path / "rgb.png", np.zeros((8, 8, 3), np.uint8))
    # the bad file is the last input, so it falls in rank 1's share
    proc = run(["-m", "mpinet.predict", setup["model"], setup["npy"], rgb, "--batch-size", "4"],
               mpi_ranks=2, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"mpinet.predict: error: {rgb}: the model expects 1 channel(s) (L), the image has 3 "
        f"(mode RGB)"]
    assert proc.stdout == ""


def test_load_model_then_predict_matches_the_cli(setup):
    loaded = mpinet.load_model(setup["model"], comm=self_comm())
    x = setup["images"].astype(np.float32) / 255.0
    np.testing.assert_array_equal(loaded.predict(x, batch_size=4),
                                  setup["trained"].predict(x, batch_size=4))


@pytest.mark.gpu
def test_device_gpu_predicts_what_the_cpu_does(setup, tmp_path):
    files = {}
    for device in ("cpu", "gpu"):
        files[device] = tmp_path / f"{device}.csv"
        proc = run(["-m", "mpinet.predict", setup["model"], setup["npy"], "--device", device,
                    "--top-k", "1", "--output", str(files[device])], timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
    cpu, gpu = (list(csv.DictReader(open(files[d]))) for d in ("cpu", "gpu"))
    assert [r["class_id"] for r in gpu] == [r["class_id"] for r in cpu]
    np.testing.assert_allclose([float(r["probability"]) for r in gpu],
                               [float(r["probability"]) for r in cpu], atol=1e-4)


@pytest.mark.parametrize("n, batch, size", [(36, 4, 4), (10, 3, 4), (2, 5, 4), (7, 7, 2)])
def test_shares_are_whole_batches_covering_every_input_once(n, batch, size):
    shares = [predict.my_share(n, batch, rank, size) for rank in range(size)]
    assert [i for s in shares for i in s] == list(range(n))  # in order, each once
    assert all(s.start % batch == 0 for s in shares if len(s))  # whole global batches


@mpinet.register_model(name="tests.predict.vector_net")
def vector_net(features: int = 6):
    net = build_model("mlp", in_features=features, hidden=(8,), num_classes=3)
    net.input_shape = (features,)
    return net


def test_a_feature_vector_model_takes_any_finite_floats(cli, tmp_path):
    init.manual_seed(5)
    model = Model(vector_net(), self_comm())
    path = model.save(str(tmp_path / "vec.mpinet"))
    x = np.random.default_rng(2).normal(0.0, 3.0, (5, 6)).astype(np.float32)  # not pixels
    npy = str(tmp_path / "x.npy")
    np.save(npy, x)
    code, _, stderr = cli(path, npy, "--top-k", 3, "--output", tmp_path / "p.json")
    assert code == 0, stderr
    got = [[t["probability"] for t in e["top_k"]] for e in json.load(open(tmp_path / "p.json"))]
    expected = np.sort(predict._softmax(model.predict(x)), axis=1)[:, ::-1]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    x[1, 2] = np.nan
    np.save(npy, x)
    code, _, stderr = cli(path, npy)
    assert code == 2 and f"{npy}: sample 1 holds NaN or infinite values" in stderr
