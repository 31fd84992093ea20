"""GPU: every model of the zoo trains with its step captured as a CUDA graph, and the replayed
steps do what the eager steps do (a layer whose op cannot be captured, or whose replay repeats a
stale value — an input, a dropout mask, a running statistic — fails here).

How close is close: Linear is forced through its cuDNN path in both runs (inside a capture it
must avoid cuBLAS), so graph and eager run the same kernels. What may still differ is what
differs between two eager runs too: kernels that sum with atomics (some cuDNN weight-gradient
plans), which deep batch-norm networks on random data amplify a lot (on the CPU a 1e-6
perturbation of the weights changed ResNet-34's loss by 1% and single batch-norm parameters'
6-step change by 50%). So each model also trains eagerly a second time, and the graph run may
differ from the first eager run by at most 10x what the second one does (plus 1e-3), in
the losses and in the weight change of the whole network; that noise must itself stay under
5%, or the comparison would prove nothing (hence the CIFAR stem for the deep ResNets here:
with the ImageNet stem their last blocks normalise 1x1 maps of 8 samples, and the loss of a
rerun moved by 14% on an H200; with the CIFAR stem, batch 8 and 6 steps ResNet-50's rerun still
differed by 5.1%, so the runs are 5 steps of batch 16). A stale replay (input, dropout mask,
statistics) or a missing update changes the weights by tens of percent.
"""
import numpy as np
import pytest
from mpi4py import MPI

from mpinet import Model, backend
from mpinet.comm import create_communicator
from mpinet.models import build_model
from mpinet.nn import init

from zoo_cases import SMALL

STEPS, BATCH = 5, 16  # 3 eager steps, then the capture and 2 more replays
CASES = [(name, dict(opts, stem="cifar") if name in ("resnet34", "resnet50") else opts)
         for name, opts, _ in SMALL]
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


def _relative(a: dict, b: dict) -> float:
    """|a - b| / |b| over every float entry of two runs' weight changes taken together."""
    keys = [k for k in b if np.issubdtype(b[k].dtype, np.floating)]
    diff = np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in keys))
    return diff / max(np.sqrt(sum(np.sum(b[k] ** 2) for k in keys)), 1e-30)


@pytest.mark.parametrize("name, opts", CASES, ids=[n + "-" + "-".join(f"{k}{v}" for k, v in
                                                                     o.items()) for n, o in CASES])
def test_zoo_model_replays_equal_eager_steps(name, opts, monkeypatch):
    from mpinet.ops import linear
    from mpinet.kernels import cudnn

    backend.select_device(device="gpu")
    monkeypatch.setattr(cudnn, "allow_tf32", False)
    monkeypatch.setattr(linear, "_capturing_on_gpu", lambda x, w: backend.is_gpu_array(x))
    graph_model, graph_losses, graph_change = _train(name, opts, True)
    _, eager_losses, eager_change = _train(name, opts, False)
    _, again_losses, again_change = _train(name, opts, False)
    assert graph_model.trainstep.graphs.replays == STEPS - graph_model.trainstep.graphs.warmup
    for k in eager_change:  # counters (num_batches_tracked) exactly
        if not np.issubdtype(eager_change[k].dtype, np.floating):
            np.testing.assert_array_equal(graph_change[k], eager_change[k], err_msg=k)

    loss_noise = np.abs(again_losses - eager_losses).max() / np.abs(eager_losses).max()
    loss_error = np.abs(graph_losses - eager_losses).max() / np.abs(eager_losses).max()
    noise, error = _relative(again_change, eager_change), _relative(graph_change, eager_change)
    print(f"{name}: loss error {loss_error:.1e} (eager rerun {loss_noise:.1e}); weight-change "
          f"error {error:.1e} (eager rerun {noise:.1e})")
    assert loss_noise < 0.05 and noise < 0.05, f"{name}: two eager runs differ too much to judge"
    assert loss_error <= 10 * loss_noise + 1e-3, (graph_losses, eager_losses, again_losses)
    assert error <= 10 * noise + 1e-3, f"{name}: replayed steps changed the weights differently"
