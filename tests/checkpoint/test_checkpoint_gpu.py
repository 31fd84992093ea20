"""GPU: checkpoints of CuPy state (copied to the host on save, NumPy on load) and a resumed
training run on the GPU that continues where it stopped.

On GPU the resumed run is compared with a tolerance, not bit for bit: the model here has no
dropout (CuPy's device generator state cannot be saved; see mpinet.model._rng_states), and GPU
reductions need not repeat bit for bit between processes.
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
                              tensors={k: cp.asarray(v) for k, v in host["optimizer"]["tensors"].items()})
    loaded = checkpoint.load(checkpoint.save(tmp_path, state, 3, LocalComm()))
    for k, v in host["model"].items():
        assert isinstance(loaded["model"][k], np.ndarray)
        np.testing.assert_array_equal(loaded["model"][k], v, err_msg=k)
    for k, v in host["optimizer"]["tensors"].items():
        np.testing.assert_array_equal(loaded["optimizer"]["tensors"][k], v, err_msg=k)


def test_resume_on_gpu_continues_the_run(tmp_path):
    backend.select_device(device="gpu")
    fit = dict(epochs=2, batch_size=4, verbose=False, log_every=1)
    straight = build_model(dropout=0.0)
    straight.fit(dataset(), **fit)

    first = build_model(dropout=0.0)
    first.fit(dataset(), epochs=1, batch_size=4, verbose=False, log_every=1,
              checkpoint_dir=str(tmp_path), checkpoint_every=5)
    path = checkpoint.latest(tmp_path)
    assert path is not None
    resumed = build_model(dropout=0.0)
    resumed.fit(dataset(), resume=path, **fit)
    assert resumed.global_step == straight.global_step
    a, b = weights(straight), weights(resumed)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
