"""Shared pieces of the checkpoint tests: a tiny data set, a small MLP Model, weight comparison.

Everything is seeded, so two processes that build the same Model and train the same steps on
the same number of ranks end with bit-identical weights on CPU.
"""
from __future__ import annotations

import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")

# 46 samples, batch 4 per rank: every epoch ends with a short step (2 samples per rank on 1
# rank, 3+3 on 2, 4+4+3+3 on 4: batch norm needs 2 per rank), uneven across ranks on 4.
NUM_SAMPLES, FEATURES, CLASSES = 46, 16, 3


def dataset():
    from mpinet.data.dataset import ArrayDataset

    rng = np.random.default_rng(1234)
    x = rng.standard_normal((NUM_SAMPLES, 1, 4, 4)).astype(np.float32)  # (N, 1, 4, 4)
    y = (x.reshape(NUM_SAMPLES, -1)[:, :CLASSES].argmax(axis=1)).astype(np.int64)
    return ArrayDataset(x, y, num_classes=CLASSES, name="tiny")


def build_model(comm=None, dropout: float = 0.2, cuda_graph: bool = False, arch: str = "mlp"):
    """A seeded MLP (or with ``arch="cnn"`` a small CNN, convolutions included) with batch norm
    (running statistics) and dropout (its generator's state), SGD+momentum and a
    warmup-then-cosine schedule, so every part of the training state matters."""
    from mpinet import Model
    from mpinet.models import build_model as build
    from mpinet.nn import init
    from mpinet.ops import dropout as dropout_ops
    from mpinet.optim.factory import build_schedule

    init.manual_seed(7)
    dropout_ops.manual_seed(11)
    if arch == "cnn":
        net = build("small-cnn", in_channels=1, num_classes=CLASSES, input_size=4, width=4,
                    dropout=dropout)
    else:
        net = build("mlp", in_features=FEATURES, hidden=(12, 8), num_classes=CLASSES,
                    dropout=dropout, batchnorm=True)
    model = Model(net, comm)
    model.compile("sgd", lr=0.05, momentum=0.9, weight_decay=1e-4,
                  schedule=lambda opt: build_schedule("cosine", opt, total_steps=60,
                                                      warmup_steps=5),
                  cuda_graph=cuda_graph)
    return model


def weights(model) -> dict:
    from mpinet import backend

    return {k: backend.to_numpy(v).copy() for k, v in model.network.state_dict().items()}


def assert_bitwise_equal(a: dict, b: dict, what: str = "") -> None:
    assert list(a) == list(b), f"{what}: names differ: {list(a)} vs {list(b)}"
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{what}: {k}"
        assert np.array_equal(a[k], b[k]), (
            f"{what}: {k!r} differs (max abs diff "
            f"{np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))})")


def mpi_env() -> dict:
    """Environment for mpiexec subprocesses: yield when idle, repo importable; threads per rank
    as mpinet chooses them (mpinet/threads.py), as for a user."""
    env = dict(os.environ)
    env.update(MPIR_CVAR_ENABLE_HEAVY_YIELD="1",
               PYTHONPATH=os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p))
    return env


PYTHON = sys.executable


class LocalComm:
    """The communicator surface mpinet.checkpoint uses, for one process without MPI.

    ``steps_seen`` overrides what allgather_obj reports for the other ranks (to test the step
    agreement check); rank 0 of ``size`` ranks otherwise.
    """

    def __init__(self, size: int = 1, others: list | None = None):
        self.rank, self.size = 0, size
        self.others = others or []

    def allgather_obj(self, obj) -> list:
        return [obj] + [dict(obj, **o) if isinstance(obj, dict) else o for o in self.others]

    def bcast_obj(self, obj, root: int = 0):
        return obj

    def barrier(self) -> None:
        pass


def sample_state(step: int = 3, scale: float = 1.0) -> dict:
    """A training-state-shaped dict with every kind of value a checkpoint must carry."""
    from collections import OrderedDict

    rng = np.random.default_rng(step)
    model = OrderedDict()
    model["layer1.0.conv1.weight"] = (rng.standard_normal((4, 3, 3, 3)) * scale).astype(np.float32)
    model["layer1.0.bn1.running_mean"] = rng.standard_normal(4).astype(np.float32)
    model["layer1.0.bn1.num_batches_tracked"] = np.array(step, np.int64)  # 0-d
    model["fc.weight"] = rng.standard_normal((2, 4)).astype(np.float64)
    model["a.half"] = rng.standard_normal(5).astype(np.float16)
    return {
        "model": model,
        "optimizer": {"scalars": {"optimizer": "SGD", "num_params": 2,
                                  "hyper": {"lr": np.float32(0.1), "momentum": 0.9},
                                  "step": {"0": step, "1": step}},
                      "tensors": {"0.momentum_buffer":
                                  rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                                  "1.momentum_buffer": np.zeros((2, 4), np.float64)}},
        "schedule": {"type": "CosineAnnealing", "last_step": step, "base_lr": 0.1,
                     "after": None, "milestones": (1, 2)},
        "scaler": {"scale": float("inf"), "growth_tracker": 0, "enabled": True},
        "sampler": {"seed": 0, "epoch": 1, "consumed": 12},
        "transform": None,
        "global_step": step,
        "world_size": 1,
        "rng": {"init": np.random.default_rng(5).bit_generator.state},
        "config": {"model": "mlp", "lr": 0.1},
    }
