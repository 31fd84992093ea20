"""GPU: every model of the zoo trains with its step captured as a CUDA graph, and the replayed
steps do what the eager steps do (a layer whose op cannot be captured, or whose replay repeats a
stale value — an input, a dropout mask, a running statistic — fails here).

Compared: per-step losses, and the weight change of the whole run by relative norm (GPU graph
and eager runs differ only in rounding: Linear runs through cuDNN inside a capture and cuBLAS
outside; a broken replay gives errors of order 1).
"""
import numpy as np
import pytest
from mpi4py import MPI

from mpinet import Model, backend
from mpinet.comm import create_communicator
from mpinet.models import build_model
from mpinet.nn import init

from test_models_forward import SMALL

STEPS, BATCH = 6, 4
pytestmark = pytest.mark.gpu


def _batches(model, regression: bool, segmentation: bool):
    rng = np.random.default_rng(3)
    out = []
    for _ in range(STEPS):
        x = rng.standard_normal((BATCH,) + tuple(model.input_shape)).astype(np.float32)
        if regression:
            y = rng.standard_normal((BATCH, 1)).astype(np.float32)
        elif segmentation:
            y = rng.integers(0, 3, (BATCH,) + x.shape[2:]).astype(np.int64)
        else:
            y = rng.integers(0, 4, BATCH).astype(np.int64)
        out.append((x, y))
    return out


def _train(name, opts, graph: bool):
    import cupy as cp

    init.manual_seed(5)  # the same weights and dropout masks in both runs
    net = build_model(name, **opts)
    model = Model(net, create_communicator("nccl", MPI.COMM_SELF))
    regression, segmentation = name == "linear-regression", name == "unet"
    model.compile("sgd", loss="mse" if regression else "cross_entropy",
                  metrics=() if regression else ("accuracy",), lr=0.002, momentum=0.9,
                  cuda_graph=graph)
    before = {k: backend.to_numpy(v).copy() for k, v in net.state_dict().items()}
    losses = []
    for x, y in _batches(net, regression, segmentation):
        sums = model.train_step(cp.asarray(x), cp.asarray(y), BATCH)
        losses.append(float(sums["loss"]))
    after = {k: backend.to_numpy(v).copy() for k, v in net.state_dict().items()}
    return model, np.array(losses), before, after


@pytest.mark.parametrize("case", SMALL, ids=[c[0] + "-" + "-".join(f"{k}{v}" for k, v in
                                                               c[1].items()) for c in SMALL])
def test_zoo_model_replays_equal_eager_steps(case):
    from mpinet.ops.cuda import cudnn_conv

    name, opts, _ = case
    backend.select_device(device="gpu")
    tf32, cudnn_conv.allow_tf32 = cudnn_conv.allow_tf32, False
    try:
        graph_model, graph_losses, before, graph_after = _train(name, opts, True)
        _, eager_losses, _, eager_after = _train(name, opts, False)
    finally:
        cudnn_conv.allow_tf32 = tf32
    assert graph_model._step_graphs.replays == STEPS - graph_model._step_graphs.warmup
    np.testing.assert_allclose(graph_losses, eager_losses, rtol=1e-3, err_msg=name)
    for k in before:
        if not np.issubdtype(before[k].dtype, np.floating):
            np.testing.assert_array_equal(graph_after[k], eager_after[k], err_msg=k)
            continue
        d_graph = graph_after[k].astype(np.float64) - before[k]
        d_eager = eager_after[k].astype(np.float64) - before[k]
        err = np.linalg.norm(d_graph - d_eager) / max(np.linalg.norm(d_eager), 1e-12)
        assert err < 1e-2, f"{name} {k}: graph vs eager weight change differs by {err:.2e}"
