"""GPU: every model of the zoo trains with its step captured as a CUDA graph, and the replayed
steps do what the eager steps do (a layer whose op cannot be captured, or whose replay repeats a
stale value — an input, a dropout mask, a running statistic — fails here).

How close is close: Linear is forced through its cuDNN path in both runs (inside a capture it
must avoid cuBLAS), so graph and eager run the same kernels. What may still differ is what
differs between two eager runs too: kernels that sum with atomics (some cuDNN weight-gradient
plans), which batch norm over 4-8 values per channel and a few SGD steps amplify. So each model
also trains eagerly a second time, and the graph run may differ from the first eager run by at
most a few times what the second one does (plus rounding) — and that noise itself must be small,
or the comparison would prove nothing.
"""
import numpy as np
import pytest
from mpi4py import MPI

from mpinet import Model, backend
from mpinet.comm import create_communicator
from mpinet.models import build_model
from mpinet.nn import init

from test_models_forward import SMALL

STEPS, BATCH = 6, 8
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

    init.manual_seed(5)  # the same weights and dropout masks in every run
    net = build_model(name, **opts)
    model = Model(net, create_communicator("nccl", MPI.COMM_SELF))
    regression, segmentation = name == "linear-regression", name == "unet"
    model.compile("sgd", loss="mse" if regression else "cross_entropy",
                  metrics=() if regression else ("accuracy",), lr=1e-3, momentum=0.9,
                  cuda_graph=graph)
    before = {k: backend.to_numpy(v).astype(np.float64) for k, v in net.state_dict().items()}
    losses = []
    for x, y in _batches(net, regression, segmentation):
        sums = model.train_step(cp.asarray(x), cp.asarray(y), BATCH)
        losses.append(float(sums["loss"]))
    change = {k: backend.to_numpy(v).astype(np.float64) - before[k]
              for k, v in net.state_dict().items()}
    return model, np.array(losses), change


def _change_error(a: dict, b: dict) -> float:
    """The largest relative difference, over parameters and buffers, between two runs' changes
    (a change under 1e-7 per element counts as none: biases ahead of batch norm get no
    gradient, only rounding)."""
    return max(np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(b[k]), 1e-7 * np.sqrt(b[k].size))
               for k in b)


@pytest.mark.parametrize("case", SMALL, ids=[c[0] + "-" + "-".join(f"{k}{v}" for k, v in
                                                               c[1].items()) for c in SMALL])
def test_zoo_model_replays_equal_eager_steps(case, monkeypatch):
    from mpinet.ops import linear
    from mpinet.ops.cuda import cudnn_conv

    name, opts, _ = case
    backend.select_device(device="gpu")
    monkeypatch.setattr(cudnn_conv, "allow_tf32", False)
    monkeypatch.setattr(linear, "_capturing_on_gpu", lambda x, w: backend.is_gpu_array(x))
    graph_model, graph_losses, graph_change = _train(name, opts, True)
    _, eager_losses, eager_change = _train(name, opts, False)
    _, again_losses, again_change = _train(name, opts, False)
    assert graph_model._step_graphs.replays == STEPS - graph_model._step_graphs.warmup

    loss_noise = np.abs(again_losses - eager_losses).max() / np.abs(eager_losses).max()
    loss_error = np.abs(graph_losses - eager_losses).max() / np.abs(eager_losses).max()
    noise, error = _change_error(again_change, eager_change), _change_error(graph_change,
                                                                             eager_change)
    print(f"{name}: loss error {loss_error:.1e} (eager rerun {loss_noise:.1e}); weight-change "
          f"error {error:.1e} (eager rerun {noise:.1e})")
    assert noise < 0.05 and loss_noise < 1e-3, f"{name}: two eager runs differ too much to judge"
    assert loss_error <= 5 * loss_noise + 1e-5, (graph_losses, eager_losses, again_losses)
    assert error <= 5 * noise + 1e-3, f"{name}: replayed steps changed the weights differently"
