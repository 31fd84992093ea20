"""The model file and predict under real MPI (2 and 4 ranks): a collective save that averages
per-rank batch-norm statistics, load_model on every rank, predict sharded in input order."""
import csv
import shutil
import sys
import tempfile
import threading

import numpy as np
import pytest
from model_file_helpers import digits, self_comm

import mpinet
from mpinet import predict
from mpinet.comm import create_communicator
from mpinet.data.preprocess import Preprocess
from mpinet.training import model_file
from mpinet.model import Model
from mpinet.models import build_model
from mpinet.nn import init


def _world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


@pytest.fixture
def shared_dir():
    """One temporary folder for all ranks (rank 0 makes it, removes it after)."""
    world = _world()
    path = world.bcast(tempfile.mkdtemp() if world.Get_rank() == 0 else None, root=0)
    yield path
    world.Barrier()
    if world.Get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)


def _small_cnn():
    init.manual_seed(0)  # same weights on every rank
    return build_model("small-cnn", num_classes=10, in_channels=1, input_size=8, width=4)


@pytest.mark.mpi(min_size=2)
def test_save_averages_batchnorm_statistics_that_differ_between_ranks(shared_dir):
    world = _world()
    rank, size = world.Get_rank(), world.Get_size()
    comm = create_communicator("mpi", world)
    model = Model(_small_cnn(), comm).compile("sgd", lr=0.1)
    bn = model.network.features[1]
    bn.running_mean[...] = rank + 1.0  # each rank saw other batches
    path = model.save(f"{shared_dir}/bn.mpinet")
    tensors, _ = model_file.read(path)
    expected = sum(r + 1.0 for r in range(size)) / size  # (size + 1) / 2
    np.testing.assert_allclose(tensors["features.1.running_mean"], expected, rtol=1e-6)
    # every rank now holds what was saved, so evaluate numbers match the file's
    np.testing.assert_array_equal(bn.running_mean, tensors["features.1.running_mean"])


@pytest.mark.mpi(min_size=2)
def test_load_model_on_every_rank_evaluates_as_one_process(shared_dir):
    world = _world()
    _, test = digits()
    path = f"{shared_dir}/m.mpinet"
    if world.Get_rank() == 0:
        Model(_small_cnn(), self_comm()).save(path, preprocess=Preprocess((1, 8, 8), mean=[0.3],
                                                                          std=[0.4]))
    world.Barrier()
    everywhere = mpinet.load_model(path)  # all ranks
    figures = everywhere.evaluate(test)
    alone = mpinet.load_model(path, comm=self_comm()).evaluate(test)
    assert figures["accuracy"] == alone["accuracy"]  # counts: exact at any rank count
    assert figures["loss"] == pytest.approx(alone["loss"], rel=1e-6)  # summed in other groups
    assert world.allgather(figures) == [figures] * world.Get_size()


@pytest.mark.mpi(min_size=2)
def test_predict_cli_gathers_in_input_order(shared_dir, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    world = _world()
    rank = world.Get_rank()
    _, test = digits()
    path, npy, out = f"{shared_dir}/m.mpinet", f"{shared_dir}/x.npy", f"{shared_dir}/p.csv"
    if rank == 0:
        Model(_small_cnn(), self_comm()).save(path)
        np.save(npy, test.images[:23])
    world.Barrier()
    assert predict.main([path, npy, "--batch-size", "3", "--top-k", "1", "--output", out]) == 0
    world.Barrier()
    if rank == 0:
        rows = list(csv.DictReader(open(out)))
        assert [r["input"] for r in rows] == [f"{npy}[{i}]" for i in range(23)]
        # the reference: one process, the same global batches of 3
        model = mpinet.load_model(path, comm=self_comm())
        x = test.images[:23].astype(np.float32) / np.float32(255.0)
        probs = predict._softmax(model.predict(x, batch_size=3))
        assert [int(r["class_id"]) for r in rows] == probs.argmax(axis=1).tolist()
        assert [r["probability"] for r in rows] == [f"{p:.6f}" for p in probs.max(axis=1)]
