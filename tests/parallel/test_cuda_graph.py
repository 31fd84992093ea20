"""CUDA graphs of the training step (mpinet.training.cuda_graph): refused where a replay would be
wrong (CPU), and on the GPU the replayed steps equal the eager steps: same losses, weights,
batch-norm running statistics and counters, optimizer step counts, with the learning rate
changing every step, with dropout (each replay must draw the masks the eager step draws: a
repeated mask would show), on one GPU and (MPI + GPU) on two ranks through NCCL.
"""
from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from mpinet import Model, backend, nn
from mpinet.comm import create_communicator
from mpinet.nn import init
from mpinet.optim import CosineAnnealing

STEPS, BATCH = 8, 16


def _net(dropout=0.0):
    init.manual_seed(11)  # also restarts dropout's default generator
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
              nn.Flatten(), nn.Linear(8 * 4 * 4, 10)]
    if dropout:
        layers.insert(-1, nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _batches(rank=0, size=1, steps=STEPS, batch=BATCH):
    """The same global batches on every rank; rank r takes its slice of each."""
    rng = np.random.default_rng(5)
    out = []
    for _ in range(steps):
        x = rng.standard_normal((batch * size, 3, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, batch * size).astype(np.int64)
        out.append((x[rank * batch:(rank + 1) * batch], y[rank * batch:(rank + 1) * batch]))
    return out


def test_refused_with_every_reason_on_cpu():
    from mpinet.parallel.sync_batchnorm import convert_sync_batchnorm

    backend.use_cpu()
    comm = create_communicator("mpi", MPI.COMM_SELF)
    model = Model(convert_sync_batchnorm(_net(dropout=0.5), comm), comm)
    with pytest.raises(ValueError) as err:
        model.compile("sgd", lr=0.1, precision="fp16", cuda_graph=True)
    text = str(err.value)
    assert "CPU" in text and "fp16" in text and "SyncBatchNorm layers ['1']" in text, text
    assert "dropout" not in text  # masks come from a device counter: capturable


def _train(comm, optimizer, graph, precision, rank=0, size=1, batches=None, between=None,
           dropout=0.0):
    import cupy as cp

    net = _net(dropout)
    model = Model(net, comm)
    model.compile(optimizer, lr=0.05, momentum=0.9, weight_decay=1e-3, precision=precision,
                  schedule=lambda opt: CosineAnnealing(opt, total_steps=STEPS),
                  cuda_graph=graph)
    if optimizer.startswith("adam"):
        # Adam divides by sqrt(v): for weights whose gradient is ~0 it turns rounding noise
        # (the graph's Linear runs through cuDNN, the eager one through cuBLAS) into steps of
        # size lr. A larger eps keeps such updates proportional to the gradient.
        model.optimizer.eps = 1e-2
    losses = []
    for step, (x, y) in enumerate(batches or _batches(rank, size)):
        sums = model.train_step(cp.asarray(x), cp.asarray(y), BATCH * size)
        losses.append(float(sums["loss"]))
        if between is not None:
            between(model, step)
    state = {k: backend.to_numpy(v).copy() for k, v in net.state_dict().items()}
    return model, np.array(losses), state


def _assert_same(graph_run, eager_run, rtol):
    (gm, gl, gs), (em, el, es) = graph_run, eager_run
    assert gm.trainstep.graphs.replays == STEPS - gm.trainstep.graphs.warmup  # replays did happen
    np.testing.assert_allclose(gl, el, rtol=rtol, err_msg="per-step loss sums")
    assert list(gs) == list(es)
    for k in es:  # weights, running_mean/var and num_batches_tracked
        np.testing.assert_allclose(gs[k], es[k], rtol=rtol, atol=rtol * 1e-1, err_msg=k)
    assert gm.optimizer.steps == em.optimizer.steps
    assert gm.optimizer.lr == em.optimizer.lr  # the schedule moved on identically


@pytest.fixture
def exact_gpu():
    """GPU backend with TF32 off: the graph's Linear runs through cuDNN, the eager one through
    cuBLAS, and both must then compute in full float32."""
    from mpinet.kernels import cudnn

    # One GPU per rank under mpirun (two NCCL ranks on one GPU is invalid usage).
    local = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED, key=MPI.COMM_WORLD.Get_rank())
    backend.select_device(local.Get_rank(), device="gpu")
    local.Free()
    saved = cudnn.allow_tf32
    cudnn.allow_tf32 = False
    yield
    cudnn.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("precision, rtol", [("fp32", 2e-4), ("bf16", 2e-2)])
def test_replayed_steps_equal_eager_steps(exact_gpu, optimizer, precision, rtol):
    comm = create_communicator("nccl", MPI.COMM_SELF)
    graph = _train(comm, optimizer, True, precision)
    eager = _train(comm, optimizer, False, precision)
    _assert_same(graph, eager, rtol)


@pytest.mark.gpu
def test_replays_draw_fresh_dropout_masks_as_eager_steps_do(exact_gpu):
    comm = create_communicator("nccl", MPI.COMM_SELF)
    graph = _train(comm, "sgd", True, "fp32", dropout=0.5)
    eager = _train(comm, "sgd", False, "fp32", dropout=0.5)
    _assert_same(graph, eager, 2e-4)
    from mpinet.ops.dropout import default_generator

    assert default_generator().get_state()["calls"] == STEPS  # one mask per step, both runs


@pytest.mark.gpu
def test_an_odd_batch_runs_eagerly_between_replays(exact_gpu):
    comm = create_communicator("nccl", MPI.COMM_SELF)
    batches = _batches()
    x, y = batches[5]
    batches[5] = (x[:7], y[:7])  # a short last-batch shape: eager, the graph is kept
    graph = _train(comm, "sgd", True, "fp32", batches=batches)
    eager = _train(comm, "sgd", False, "fp32", batches=batches)
    model = graph[0]
    assert model.trainstep.graphs.replays == STEPS - model.trainstep.graphs.warmup - 1
    np.testing.assert_allclose(graph[1], eager[1], rtol=2e-4)
    for k in eager[2]:
        np.testing.assert_allclose(graph[2][k], eager[2][k], rtol=2e-4, atol=2e-5, err_msg=k)


@pytest.mark.gpu
def test_buffers_averaged_in_place_or_replaced_between_replays(exact_gpu):
    """Evaluation averages BN statistics between epochs (in place: the graph keeps them); code
    that replaces a buffer with a new array makes the graphs recapture instead of writing into
    memory the model no longer uses."""
    def between(model, step):
        if step == 4:
            model.dp.average_buffers()
        if step == 5:
            bn = model.network[1]
            bn.set_buffer("running_var", bn.running_var.copy())

    comm = create_communicator("nccl", MPI.COMM_SELF)
    graph = _train(comm, "sgd", True, "fp32", between=between)
    eager = _train(comm, "sgd", False, "fp32", between=between)
    graphs = graph[0].trainstep.graphs
    assert graphs.recaptures == 1 and graphs.replays == 3  # steps 3-5; 6-7 warm up again
    np.testing.assert_allclose(graph[1], eager[1], rtol=2e-4)
    for k in eager[2]:
        np.testing.assert_allclose(graph[2][k], eager[2][k], rtol=2e-4, atol=2e-5, err_msg=k)


@pytest.mark.gpu
@pytest.mark.mpi(min_size=2)
def test_data_parallel_replays_equal_eager_on_every_rank(exact_gpu):
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    comm = create_communicator("nccl", world)
    graph = _train(comm, "sgd", True, "fp32", rank, size, dropout=0.25)
    eager = _train(comm, "sgd", False, "fp32", rank, size, dropout=0.25)
    _assert_same(graph, eager, 2e-4)
    # Every rank holds the same weights (the allreduce ran inside the replays); batch norm's
    # running statistics stay per rank (local batches), as in PyTorch DDP without SyncBN.
    weights = {k: v for k, v in graph[2].items() if "running_" not in k and "batches" not in k}
    gathered = world.allgather(weights)
    for k, v in weights.items():
        for other in gathered:
            np.testing.assert_allclose(other[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
