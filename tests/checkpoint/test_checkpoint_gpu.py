"""GPU: checkpoints of CuPy state (copied to the host on save, NumPy on load) and a resumed
training run on the GPU that continues where it stopped, eagerly and with the step as a CUDA
graph, with dropout (the device generator's state is saved and restored: a resume that drew
other masks would not match).

By default the resumed run is compared with a tolerance: cuDNN may choose engines that
accumulate with atomics. With ``cudnn.deterministic`` (``--deterministic``) the eager
resume must equal the straight run bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

from ckpt_helpers import LocalComm, build_model, dataset, sample_state, weights
from mpinet import backend, checkpoint

pytestmark = pytest.mark.gpu


def test_cupy_state_round_trip(tmp_path):
    import cupy as cp

    backend.select_device(device="gpu")
    host = sample_state()
    state = dict(host)
    state["model"] = {k: cp.asarray(v) for k, v in host["model"].items()}
    state["optimizer"] = dict(host["optimizer"],
                              tensors={k: cp.asarray(v)
                                       for k, v in host["optimizer"]["tensors"].items()})
    loaded = checkpoint.load(checkpoint.save(tmp_path, state, 3, LocalComm()))
    for k, v in host["model"].items():
        assert isinstance(loaded["model"][k], np.ndarray)
        np.testing.assert_array_equal(loaded["model"][k], v, err_msg=k)
    for k, v in host["optimizer"]["tensors"].items():
        np.testing.assert_array_equal(loaded["optimizer"]["tensors"][k], v, err_msg=k)


def _straight_and_resumed(tmp_path, **build):
    """Weights after 3 epochs straight, and after 2 epochs checkpointed at step 17 (mid-epoch 2,
    12 steps an epoch, after any CUDA graph was replayed) then resumed to 3 epochs."""
    fit = dict(epochs=3, batch_size=4, verbose=False, log_every=1)
    straight = build_model(**build)
    straight.fit(dataset(), **fit)
    first = build_model(**build)
    first.fit(dataset(), epochs=2, batch_size=4, verbose=False, log_every=1,
              checkpoint_dir=str(tmp_path), checkpoint_every=17, keep_checkpoints=10)
    path = tmp_path / "ckpt-17"
    assert checkpoint.load(path)["global_step"] == 17
    if build.get("cuda_graph"):
        assert first.trainstep.graphs.replays > 0
    resumed = build_model(**build)
    resumed.fit(dataset(), resume=str(path), **fit)
    assert resumed.global_step == straight.global_step
    a, b = weights(straight), weights(resumed)
    assert any(np.any(v != 0) for v in a.values())
    return a, b


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_resume_on_gpu_continues_the_run(tmp_path, cuda_graph, monkeypatch):
    from mpinet.kernels import cudnn

    backend.select_device(device="gpu")
    # Full float32 in cuDNN: with graphs, Linear runs through cuDNN inside a capture and cuBLAS
    # in the eager steps, and the resumed run's eager warm-up falls on steps that the straight
    # run replayed; TF32 there differed by ~1e-3 relative (seen on an H200).
    monkeypatch.setattr(cudnn, "allow_tf32", False)
    a, b = _straight_and_resumed(tmp_path, cuda_graph=cuda_graph)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_resume_on_gpu_is_bit_exact_with_deterministic_engines(tmp_path, monkeypatch, arch):
    from mpinet.kernels import cudnn

    backend.select_device(device="gpu")
    monkeypatch.setattr(cudnn, "deterministic", True)
    a, b = _straight_and_resumed(tmp_path, arch=arch)
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
