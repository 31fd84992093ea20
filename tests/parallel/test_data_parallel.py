"""Exactness of data parallelism: k steps on N ranks == k steps on one rank, same global batch.

The single-rank reference runs on every rank over COMM_SELF with the whole global batch; the
data-parallel run uses COMM_WORLD with each rank's share. Under plain pytest (1 process) the
same tests compare COMM_WORLD (size 1) with COMM_SELF, which checks the plumbing too.
"""
import numpy as np
import pytest
from mpi4py import MPI

from mpinet import nn
from mpinet.comm import create_communicator
from mpinet.data.dataset import ArrayDataset
from mpinet.training import Model
from mpinet.nn import init


def _data(n=44, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, 2, 2)).astype(np.float32)
    y = (x.reshape(n, -1).sum(1) > 0).astype(np.int64) + (x[:, 0, 0, 0] > 1)
    return ArrayDataset(x, y, num_classes=3)


def _net(batchnorm=False, sync_comm=None, fuse_relu=False):
    init.manual_seed(7)
    layers = [nn.Flatten(), nn.Linear(12, 16)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(16, fuse_relu=fuse_relu))
    # fused: the ReLU runs inside the batch norm; Identity keeps the layer names the same
    layers += [nn.Identity() if fuse_relu else nn.ReLU(), nn.Linear(16, 3)]
    net = nn.Sequential(*layers)
    if sync_comm is not None:
        from mpinet.parallel import convert_sync_batchnorm
        net = convert_sync_batchnorm(net, sync_comm)
    return net


def _train(comm, per_rank_batch, *, mode="backward", accumulation=1, batchnorm=False,
           sync_bn=False, epochs=2, optimizer="sgd", data=None, fuse_relu=False):
    net = _net(batchnorm, comm if sync_bn else None, fuse_relu)
    model = Model(net, comm)
    model.compile(optimizer, lr=0.1, momentum=0.9, dp_mode=mode, bucket_mb=0.0001)
    model.fit(data or _data(), epochs=epochs, batch_size=per_rank_batch, verbose=False,
              accumulation_steps=accumulation, seed=3)
    return {k: np.array(v) for k, v in net.state_dict().items()}


def _assert_same(got, want, rtol=2e-5, atol=2e-6):
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


def _world_and_self():
    world = create_communicator("mpi", MPI.COMM_WORLD)
    alone = create_communicator("mpi", MPI.COMM_SELF)
    return world, alone


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("mode", ["backward", "forward", "sync"])
def test_data_parallel_equals_one_rank(mode):
    world, alone = _world_and_self()
    b = 4  # per rank; the global batch is 4 * size, and 44 samples leave an uneven last step
    want = _train(alone, b * world.size, mode="sync")
    got = _train(world, b, mode=mode)
    _assert_same(got, want)


@pytest.mark.mpi(min_size=2)
def test_gradient_accumulation_equals_one_rank():
    world, alone = _world_and_self()
    want = _train(alone, 6 * world.size)
    got = _train(world, 6, accumulation=3)
    _assert_same(got, want)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("fuse_relu", [False, True])
def test_sync_batchnorm_equals_one_rank_batchnorm(fuse_relu):
    world, alone = _world_and_self()
    want = _train(alone, 4 * world.size, batchnorm=True)  # BN, then a separate ReLU
    got = _train(world, 4, batchnorm=True, sync_bn=True, fuse_relu=fuse_relu)
    _assert_same(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.mpi(min_size=2)
def test_rank_with_empty_last_batch_does_not_deadlock():
    world, alone = _world_and_self()
    # 2*size*2 + 1 samples: the last global step has one sample, so all ranks but one are empty.
    data = _data(n=4 * world.size + 1)
    want = _train(alone, 2 * world.size, data=data)
    got = _train(world, 2, data=data)
    _assert_same(got, want)


@pytest.mark.mpi(min_size=2)
def test_adam_forward_mode_equals_one_rank():
    world, alone = _world_and_self()
    want = _train(alone, 4 * world.size, optimizer="adam", mode="sync")
    got = _train(world, 4, optimizer="adam", mode="forward")
    _assert_same(got, want, rtol=1e-4, atol=1e-5)


def test_single_process_modes_agree():
    """Without mpiexec: the three modes and accumulation give identical weights."""
    alone = create_communicator("mpi", MPI.COMM_SELF)
    want = _train(alone, 8, mode="sync")
    for mode in ("backward", "forward"):
        _assert_same(_train(alone, 8, mode=mode), want)
    _assert_same(_train(alone, 8, accumulation=2), want)


def test_weights_change_and_differ_from_init():
    """Guard against a vacuous comparison: training must move the weights."""
    alone = create_communicator("mpi", MPI.COMM_SELF)
    before = {k: np.array(v) for k, v in _net().state_dict().items()}
    after = _train(alone, 8)
    assert any(not np.allclose(before[k], after[k]) for k in before)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("grad_dtype, rtol", [("bf16", 3e-2), ("fp16", 3e-3)])
def test_compressed_gradients_match_fp32_within_their_precision(grad_dtype, rtol):
    world, alone = _world_and_self()
    want = _train(alone, 4 * world.size, epochs=1)
    net = _net()
    model = Model(net, world)
    model.compile("sgd", lr=0.1, momentum=0.9, bucket_mb=0.0001, grad_dtype=grad_dtype)
    model.fit(_data(), epochs=1, batch_size=4, verbose=False, seed=3)
    got = {k: np.array(v) for k, v in net.state_dict().items()}
    _assert_same(got, want, rtol=rtol, atol=rtol * 0.1)
    assert not model.trainstep.found_inf


@pytest.mark.mpi(min_size=2)
def test_evaluate_counts_every_sample_once_at_any_world_size():
    world, alone = _world_and_self()
    data = _data(n=4 * world.size + 3)  # not divisible: no padding may count a sample twice
    results = []
    for comm in (alone, world):
        init.manual_seed(7)
        model = Model(_net(), comm).compile("sgd", lr=0.1)
        results.append(model.evaluate(data, batch_size=3))
    assert results[0].keys() == results[1].keys()
    for k in results[0]:
        assert results[1][k] == pytest.approx(results[0][k], rel=1e-6), k
