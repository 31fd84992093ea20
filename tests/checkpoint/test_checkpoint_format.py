"""The checkpoint files: round trip, metadata, atomic replace, pruning, refusal of damaged files,
finding the newest good one, Keras-style weights. One process, no MPI (a stand-in comm)."""
from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict

import numpy as np
import pytest

from ckpt_helpers import LocalComm, sample_state
from mpinet import __version__, checkpoint
from mpinet.checkpoint import CheckpointError


def _assert_same_state(saved: dict, loaded: dict) -> None:
    assert list(loaded["model"]) == list(saved["model"]), "model order must survive"
    assert isinstance(loaded["model"], OrderedDict)
    for k, v in saved["model"].items():
        got = loaded["model"][k]
        assert got.dtype == v.dtype and got.shape == v.shape, k
        assert np.array_equal(got, v), k
    for k, v in saved["optimizer"]["tensors"].items():
        assert np.array_equal(loaded["optimizer"]["tensors"][k], v), k


def test_round_trip_keeps_every_value(tmp_path):
    state = sample_state(step=3)
    path = checkpoint.save(tmp_path, state, 3, LocalComm())
    assert path == os.path.join(tmp_path, "ckpt-3")
    assert sorted(os.listdir(path)) == ["meta.json", "tensors.safetensors"]
    loaded = checkpoint.load(path)
    _assert_same_state(state, loaded)
    assert loaded["model"]["layer1.0.bn1.num_batches_tracked"].shape == ()  # 0-d stays 0-d
    assert loaded["optimizer"]["scalars"] == {"optimizer": "SGD", "num_params": 2,
                                              "hyper": {"lr": pytest.approx(0.1), "momentum": 0.9},
                                              "step": {"0": 3, "1": 3}}
    assert loaded["schedule"]["milestones"] == [1, 2]  # tuples come back as lists
    assert loaded["scaler"]["scale"] == float("inf")
    assert loaded["sampler"] == {"seed": 0, "epoch": 1, "consumed": 12}
    assert loaded["transform"] is None and loaded["global_step"] == 3
    assert loaded["rng"] == state["rng"]


def test_tensor_names_and_metadata(tmp_path):
    from safetensors.numpy import load_file

    path = checkpoint.save(tmp_path, sample_state(step=7), 7, LocalComm(size=1))
    names = set(load_file(os.path.join(path, "tensors.safetensors")))
    assert "model/layer1.0.conv1.weight" in names
    assert "optimizer/tensors/0.momentum_buffer" in names
    meta = json.loads(open(os.path.join(path, "meta.json")).read())
    assert meta["format"] == "mpinet-checkpoint" and meta["format_version"] == 1
    assert meta["step"] == 7 and meta["world_size"] == 1
    assert meta["mpinet_version"] == __version__
    assert meta["config"] == {"model": "mlp", "lr": 0.1}
    assert meta["created"].endswith("+00:00")
    import hashlib

    blob = open(os.path.join(path, "tensors.safetensors"), "rb").read()
    assert meta["files"]["tensors.safetensors"] == {"sha256": hashlib.sha256(blob).hexdigest(),
                                                     "bytes": len(blob)}
    assert meta["state"]["model"]["fc.weight"] == {"$tensor": "model/fc.weight"}


def test_bfloat16_round_trip(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
    state = sample_state()
    bf = np.linspace(-2, 2, 7, dtype=np.float32).astype(ml_dtypes.bfloat16)
    state["model"]["bf16.weight"] = bf
    loaded = checkpoint.load(checkpoint.save(tmp_path, state, 1, LocalComm()))
    got = loaded["model"]["bf16.weight"]
    assert got.dtype == bf.dtype and np.array_equal(got.view(np.uint16), bf.view(np.uint16))


def test_ranks_must_agree_on_the_step(tmp_path):
    comm = LocalComm(size=3, others=[{"step": 3}, {"step": 4}])
    with pytest.raises(CheckpointError, match=r"step 3 on ranks \[0, 1\]; step 4 on ranks \[2\]"):
        checkpoint.save(tmp_path, sample_state(step=3), 3, comm)
    assert not os.path.exists(tmp_path / "ckpt-3")


def test_keep_prunes_to_the_newest(tmp_path):
    for step in (1, 2, 10, 3, 11):
        checkpoint.save(tmp_path, sample_state(step), step, LocalComm(), keep=2)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-10", "ckpt-11"]
    checkpoint.save(tmp_path, sample_state(12), 12, LocalComm(), keep=0)  # 0: keep all
    assert sorted(os.listdir(tmp_path)) == ["ckpt-10", "ckpt-11", "ckpt-12"]


def test_same_step_is_replaced_whole(tmp_path):
    checkpoint.save(tmp_path, sample_state(5, scale=1.0), 5, LocalComm())
    new = sample_state(5, scale=-3.0)
    checkpoint.save(tmp_path, new, 5, LocalComm())
    assert sorted(os.listdir(tmp_path)) == ["ckpt-5"]  # no .old- or .tmp- left behind
    _assert_same_state(new, checkpoint.load(tmp_path / "ckpt-5"))


def test_a_failed_replace_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    old = sample_state(5, scale=1.0)
    checkpoint.save(tmp_path, old, 5, LocalComm())
    real_rename = os.rename

    def rename_fails_for_the_new_one(src, dst):
        if ".tmp-" in os.fspath(src):
            raise OSError("simulated: disk went away")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_fails_for_the_new_one)
    with pytest.raises(CheckpointError, match="OSError: simulated"):
        checkpoint.save(tmp_path, sample_state(5, scale=-3.0), 5, LocalComm())
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ckpt-5"]
    _assert_same_state(old, checkpoint.load(tmp_path / "ckpt-5"))


def test_next_save_removes_leftovers_of_a_crashed_one(tmp_path):
    checkpoint.save(tmp_path, sample_state(1), 1, LocalComm())
    os.mkdir(tmp_path / "ckpt-2.tmp-deadbeef")
    with pytest.warns(UserWarning, match=r"ckpt-2\.tmp-deadbeef, an unfinished"):
        assert checkpoint.latest(tmp_path) == os.path.join(tmp_path, "ckpt-1")
    checkpoint.save(tmp_path, sample_state(3), 3, LocalComm())
    assert sorted(os.listdir(tmp_path)) == ["ckpt-1", "ckpt-3"]


def test_unstorable_values_are_refused_by_name(tmp_path):
    state = sample_state()
    state["schedule"] = {"fn": object()}
    with pytest.raises(CheckpointError, match=r"cannot store a object at schedule/fn"):
        checkpoint.save(tmp_path, state, 1, LocalComm())
    state["schedule"] = {1: "int key"}
    with pytest.raises(CheckpointError, match=r"key 1 under schedule is a int"):
        checkpoint.save(tmp_path, state, 1, LocalComm())


def test_write_failure_is_raised_with_the_cause(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the checkpoint folder should go")
    with pytest.raises(CheckpointError, match=r"failed on rank 0: "
                                              r"(FileExistsError|NotADirectoryError)"):
        checkpoint.save(blocker, sample_state(), 1, LocalComm())


# ---- damaged checkpoints ------------------------------------------------------------------
def _flip_byte(path, offset: int) -> None:
    data = bytearray(open(path, "rb").read())
    data[offset % len(data)] ^= 0x01
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("name, where", [
    ("tensors.safetensors", "data"),     # a weight's bit
    ("tensors.safetensors", "header"),   # safetensors' JSON header
    ("meta.json", "value"),              # a number in the metadata
])
def test_one_flipped_byte_is_refused(tmp_path, name, where):
    path = checkpoint.save(tmp_path, sample_state(), 1, LocalComm())
    file_path = os.path.join(path, name)
    size = os.path.getsize(file_path)
    if where == "data":
        offset = size - 5
    elif where == "header":
        offset = 20
    else:  # the digit of "consumed": 12 -> 13 keeps the JSON valid; only the checksum sees it
        offset = open(file_path, "rb").read().index(b'"consumed": 12') + len(b'"consumed": 1')
    _flip_byte(file_path, offset)
    with pytest.raises(CheckpointError, match=rf"{name}: .*(sha256|checksum)"):
        checkpoint.load(path)
    with pytest.raises(CheckpointError):
        checkpoint.verify(path)


@pytest.mark.parametrize("name", ["tensors.safetensors", "meta.json"])
def test_truncated_file_is_refused(tmp_path, name):
    path = checkpoint.save(tmp_path, sample_state(), 1, LocalComm())
    file_path = os.path.join(path, name)
    data = open(file_path, "rb").read()
    open(file_path, "wb").write(data[: len(data) // 2])
    expected = r"truncated" if name == "tensors.safetensors" else r"not valid JSON"
    with pytest.raises(CheckpointError, match=rf"{name}: .*{expected}"):
        checkpoint.load(path)


def test_missing_or_foreign_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        checkpoint.load(tmp_path / "nope")
    checkpoint.save(tmp_path, sample_state(), 1, LocalComm())
    with pytest.raises(CheckpointError, match="holds checkpoints: pass one of them"):
        checkpoint.load(tmp_path)  # the parent folder, not a checkpoint
    os.remove(tmp_path / "ckpt-1" / "tensors.safetensors")
    with pytest.raises(CheckpointError, match="tensors.safetensors: missing"):
        checkpoint.load(tmp_path / "ckpt-1")


def test_newer_format_is_refused(tmp_path):
    path = checkpoint.save(tmp_path, sample_state(), 1, LocalComm())
    meta_path = os.path.join(path, "meta.json")
    meta = json.loads(open(meta_path).read())
    meta["format_version"] = 99
    meta["meta_sha256"] = checkpoint.format.meta_digest(meta)
    open(meta_path, "w").write(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 99.*upgrade mpinet"):
        checkpoint.load(path)


@pytest.mark.parametrize("key, value", [("per_rank", "x"), ("files", {"tensors.safetensors": 1}),
                                        ("step", "3"), ("tensors", [])])
def test_malformed_metadata_with_a_valid_checksum_is_refused(tmp_path, key, value):
    """A crafted meta.json (checksum recomputed) still gets a CheckpointError, not a crash."""
    path = checkpoint.save(tmp_path, sample_state(), 1, LocalComm())
    meta_path = os.path.join(path, "meta.json")
    meta = json.loads(open(meta_path).read())
    meta[key] = value
    meta["meta_sha256"] = checkpoint.format.meta_digest(meta)
    open(meta_path, "w").write(json.dumps(meta))
    with pytest.raises(CheckpointError, match="meta.json: "):
        checkpoint.load(path)


# ---- latest / resolve_resume --------------------------------------------------------------
def test_latest_falls_back_to_the_newest_good_one(tmp_path):
    assert checkpoint.latest(tmp_path / "missing") is None
    assert checkpoint.latest(tmp_path) is None
    for step in (4, 8, 12):
        checkpoint.save(tmp_path, sample_state(step), step, LocalComm(), keep=5)
    _flip_byte(tmp_path / "ckpt-12" / "tensors.safetensors", -3)
    with pytest.warns(UserWarning, match=r"skipping .*ckpt-12: .*sha256"):
        assert checkpoint.latest(tmp_path) == os.path.join(tmp_path, "ckpt-8")
    with pytest.warns(UserWarning, match=r"ckpt-12"):
        assert checkpoint.resolve_resume("auto", tmp_path, LocalComm()) == os.path.join(tmp_path,
                                                                                      "ckpt-8")


def test_resolve_resume(tmp_path):
    comm = LocalComm()
    assert checkpoint.resolve_resume(None, tmp_path, comm) is None
    assert checkpoint.resolve_resume("auto", tmp_path / "empty", comm) is None  # start fresh
    with pytest.raises(CheckpointError, match="needs a checkpoint directory"):
        checkpoint.resolve_resume("auto", None, comm)
    path = checkpoint.save(tmp_path, sample_state(), 2, comm)
    assert checkpoint.resolve_resume(path, None, comm) == path
    _flip_byte(os.path.join(path, "tensors.safetensors"), -1)
    with pytest.raises(CheckpointError, match=r"cannot resume from .*ckpt-2.*sha256"):
        checkpoint.resolve_resume(path, None, comm)


# ---- weights alone ------------------------------------------------------------------------
def _tiny_net(seed: int = 3):
    from mpinet.models import build_model
    from mpinet.nn import init

    init.manual_seed(seed)
    return build_model("mlp", in_features=6, hidden=(5,), num_classes=2, batchnorm=True)


def test_weights_round_trip_and_atomic_write(tmp_path):
    net = _tiny_net()
    path = tmp_path / "sub" / "weights.safetensors"
    checkpoint.save_weights(path, net, LocalComm())
    assert os.listdir(tmp_path / "sub") == ["weights.safetensors"]  # no temporary left
    loaded = checkpoint.load_weights(path)
    assert list(loaded) == list(net.state_dict())  # saved order, not name order
    for k, v in net.state_dict().items():
        assert loaded[k].dtype == v.dtype and np.array_equal(loaded[k], v), k
    fresh = _tiny_net(seed=99)
    assert not np.array_equal(fresh.state_dict()["1.weight"], net.state_dict()["1.weight"])
    fresh.load_state_dict(loaded)
    for k, v in net.state_dict().items():
        assert np.array_equal(fresh.state_dict()[k], v), k


def test_damaged_weights_are_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    checkpoint.save_weights(path, _tiny_net(), LocalComm())
    _flip_byte(path, -2)
    with pytest.raises(CheckpointError, match=r"w.safetensors: sha256 of the tensors"):
        checkpoint.load_weights(path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:40])
    with pytest.raises(CheckpointError, match=r"w.safetensors: not a valid safetensors file"):
        checkpoint.load_weights(path)
    with pytest.raises(CheckpointError, match="no such weights file"):
        checkpoint.load_weights(tmp_path / "none.safetensors")


def test_foreign_safetensors_weights_load_in_name_order(tmp_path):
    from safetensors.numpy import save_file

    save_file({"b": np.ones(2, np.float32), "a": np.zeros((1, 2), np.float64)},
              str(tmp_path / "f.safetensors"))
    loaded = checkpoint.load_weights(tmp_path / "f.safetensors")
    assert list(loaded) == ["a", "b"] and loaded["a"].dtype == np.float64


def test_copying_a_checkpoint_keeps_it_valid(tmp_path):
    """Nothing in a checkpoint depends on its folder's name or place (users copy them)."""
    path = checkpoint.save(tmp_path / "a", sample_state(), 6, LocalComm())
    shutil.copytree(path, tmp_path / "b" / "ckpt-6")
    assert checkpoint.latest(tmp_path / "b") == os.path.join(tmp_path, "b", "ckpt-6")
