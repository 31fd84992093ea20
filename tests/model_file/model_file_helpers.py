"""Shared by the model-file and predict tests: a small trained model, subprocess runs."""
import json
import os
import subprocess
import sys

import numpy as np
from mpi4py import MPI

from mpinet.comm import create_communicator
from mpinet.data import augment
from mpinet.data.registry import get_dataset
from mpinet.model import Model
from mpinet.models import build_model
from mpinet.nn import init

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
           MPIR_CVAR_ENABLE_HEAVY_YIELD="1", OMPI_MCA_mpi_yield_when_idle="1",
           PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
for _key in [k for k in ENV if k.startswith(("PMI_", "PMIX_", "HYDRA_"))]:
    del ENV[_key]  # a subprocess of an MPI rank must start its own job, not join this one


def self_comm():
    return create_communicator("mpi", MPI.COMM_SELF)


def digits(raw=True):
    return get_dataset("digits", "train", raw=raw), get_dataset("digits", "test", raw=raw)


def trained_digits_model(name="small-cnn", epochs=1, comm=None, precision="fp32", **opts):
    """A model trained briefly on digits with a per-channel normalisation (as --augment uses)."""
    train, _ = digits()
    init.manual_seed(0)
    net = build_model(name, num_classes=10, in_channels=1, input_size=8, **opts)
    model = Model(net, comm or self_comm()).compile("sgd", lr=0.02, momentum=0.9,
                                                   precision=precision)
    mean, std = augment.channel_stats(train.images)
    norm = augment.Augment(mean=mean, std=std)
    model.fit(train, epochs=epochs, batch_size=32, transform=norm, eval_transform=norm,
              verbose=False)
    return model


def run(args, timeout=120, mpi_ranks=None):
    """``python ARGS`` (under ``mpiexec -n mpi_ranks`` if given), from the checkout root."""
    cmd = [sys.executable, *args]
    if mpi_ranks:
        cmd = ["mpiexec", "-n", str(mpi_ranks), *cmd]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def write_digit_pngs(folder, images: np.ndarray) -> list:
    """(N, 1, H, W) uint8 -> folder/digit_<i>.png; returns the paths in order."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        paths.append(os.path.join(folder, f"digit_{i:02d}.png"))
        Image.fromarray(img[0]).save(paths[-1])
    return paths


def rewrite_header(path, out, **changes):
    """The file with its __metadata__ entries changed, tensors untouched."""
    data = open(path, "rb").read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["__metadata__"].update(changes)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    open(out, "wb").write(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
    return out
