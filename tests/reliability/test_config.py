"""The typed training configuration (mpinet/training/config.py) and the start-up device check."""
import dataclasses
import json

import pytest

from mpinet.training.config import DEFAULTS, ConfigError, TrainConfig
from mpinet.training.preflight import check_gpu_sharing


def test_defaults_typed_frozen_and_dict_like():
    cfg = TrainConfig()
    assert cfg.lr == 0.05 and cfg["epochs"] == 30 and dict(cfg) == DEFAULTS
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0
    assert cfg.replace(lr=0.1).lr == 0.1 and cfg.lr == 0.05


@pytest.mark.parametrize("changes, message", [
    ({"lr": float("nan")}, "--lr must be a finite number, got nan"),
    ({"epochs": 0}, "--epochs must be > 0, got 0"),
    ({"epochs": True}, "--epochs: True is not an integer"),
    ({"momentum": -0.5}, "--momentum must be >= 0, got -0.5"),
    ({"optimizer": "lion"}, "--optimizer: 'lion' is not one of sgd, adam, adamw"),
    ({"augment": "yes"}, "--augment: 'yes' is not true, false or one of auto, digits, photo"),
    ({"straggler_warn": float("inf")}, "--straggler-warn must be a finite number"),
])
def test_each_key_is_checked(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**changes)


def test_file_then_flags(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"batch-size": 64, "lr": 1}))
    cfg = TrainConfig.from_args({"config": str(path), "lr": 0.2, "epochs": None})
    assert (cfg.batch_size, cfg.lr, cfg.epochs) == (64, 0.2, 30)
    assert isinstance(TrainConfig.from_args({"config": str(path)}).lr, float)  # 1 -> 1.0


def test_unknown_key_names_the_closest(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"bacth_size": 64}))
    with pytest.raises(ConfigError, match="unknown key 'bacth_size'; did you mean 'batch_size'"):
        TrainConfig.from_file(str(path))


@pytest.mark.parametrize("placements, message", [
    ([("n1", "A"), ("n1", "B"), ("n2", "A"), ("n2", "B")], None),  # one GPU per rank
    ([("n1", "A"), ("n1", "A")], "2 ranks on host n1 but it has only 1 GPU(s): ranks 0, 1 would "
                                 "share GPU A"),
    ([("n1", "A"), ("n1", "B"), ("n1", "A"), ("n1", "B")], "4 ranks on host n1 but it has only "
                                                           "2 GPU(s): ranks 0, 2 would share"),
    ([("n1", None), ("n1", None)], None),  # no GPU: the CPU is shared by design
])
def test_ranks_sharing_a_gpu_is_one_clear_message(placements, message):
    cfg = TrainConfig()  # --device auto
    if message is None:
        check_gpu_sharing(cfg, placements)
    else:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_gpu_sharing(cfg, placements)
    check_gpu_sharing(TrainConfig(device="cpu"), placements)  # --device cpu: never refused


def test_object_collective_wire_format_round_trips_without_pickle():
    import numpy as np

    from mpinet import backend
    from mpinet.comm import wire

    value = {"a": [1, 2.5, float("nan"), None, True, "x"], (1, "k"): (b"\x00\xff", np.int64(7)),
             3: np.arange(6, dtype=np.float32).reshape(2, 3),
             "bf16": np.ones(2, backend.bfloat16()), "nested": {"d": {"l": []}}}
    back = wire.decode(wire.encode(value))
    assert back["a"][:2] == [1, 2.5] and np.isnan(back["a"][2])
    assert back["a"][3:] == [None, True, "x"]
    assert back[(1, "k")] == (b"\x00\xff", 7) and back[(1, "k")][1].dtype == np.int64
    np.testing.assert_array_equal(back[3], value[3])
    assert back["bf16"].dtype == value["bf16"].dtype and back["nested"] == {"d": {"l": []}}
    import pytest

    with pytest.raises(TypeError, match="object collectives carry .* got builtins.set"):
        wire.encode({1, 2})


def test_gpu_tests_skip_with_the_reason_on_a_smaller_machine(monkeypatch):
    """conftest's rule for @pytest.mark.requires_gpus(n) and MPI GPU tests (one GPU per rank),
    with the machine's GPU count faked (this CPU machine has none)."""
    import importlib.util
    import os

    import pytest

    from mpinet import backend

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conftest.py")
    spec = importlib.util.spec_from_file_location("tests_conftest_copy", path)
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)

    class Item:
        def __init__(self, markers):
            self.markers, self.added = markers, []

        def get_closest_marker(self, name):
            return self.markers.get(name)

        def add_marker(self, marker):
            self.added.append(marker)

    monkeypatch.setattr(backend, "gpu_available", lambda: True)
    monkeypatch.setattr(backend, "gpu_count", lambda: 1)
    monkeypatch.setattr(conftest, "_ranks_on_this_node", lambda: 2)
    two = Item({"requires_gpus": pytest.mark.requires_gpus(2).mark})
    mpi_gpu = Item({"gpu": pytest.mark.gpu.mark})  # 2 ranks on this node, 1 GPU
    one = Item({"requires_gpus": pytest.mark.requires_gpus(1).mark})
    conftest.pytest_collection_modifyitems(None, [two, mpi_gpu, one])
    assert [m.kwargs["reason"] for m in two.added] == ["needs 2 GPU(s) on this node, it has 1"]
    assert [m.kwargs["reason"] for m in mpi_gpu.added] == ["needs 2 GPU(s) on this node, it has 1"]
    assert one.added == []


def test_a_peer_process_is_recognised_by_its_start_time_not_its_pid_alone():
    import os
    import subprocess
    import sys

    from mpinet.comm.arrival import _process_identity

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        alive = _process_identity(child.pid)
        assert alive is not None and alive[2] in "RS"  # running or sleeping
        assert alive[0] == _process_identity(os.getpid())[0]  # same boot and pid namespace
    finally:
        child.kill()
        child.wait()
    assert _process_identity(child.pid) is None  # gone: a peer with this pid has exited
