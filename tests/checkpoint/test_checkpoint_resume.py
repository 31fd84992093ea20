"""Stop and resume with mpinet.Model: N steps straight == k steps, stop mid-epoch, resume, N-k
more — bit for bit on CPU at the same world size. The stop is a real preemption: a SIGTERM sent
to one rank (the last) from inside training, which all ranks must agree on.

Runs alone (1 rank) under plain pytest and on 2+ ranks under
``mpiexec -n 2 python -m mpi4py -m pytest --with-mpi -m mpi tests/checkpoint``.
"""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from ckpt_helpers import NUM_SAMPLES, assert_bitwise_equal, build_model, dataset, weights
from mpinet import checkpoint
from mpinet.training.callbacks import Callback

EPOCHS, BATCH, EVERY = 3, 4, 5


class SignalAt(Callback):
    """Send SIGTERM to this process at ``step`` if this is rank ``rank`` (as Slurm or a user
    would); the training loop must then stop every rank at this same step."""

    def __init__(self, step: int, rank: int):
        self.step, self.rank = step, rank

    def on_batch_end(self, step: int, logs: dict) -> None:
        if step == self.step and self.model.comm.rank == self.rank:
            os.kill(os.getpid(), signal.SIGTERM)


def _fit(model, **kw):
    # log_every=1: callbacks see every step, so checkpoint_every counts every step.
    return model.fit(dataset(), epochs=EPOCHS, batch_size=BATCH, verbose=False, log_every=1,
                     **kw)


def _stop_step(size: int) -> int:
    """A step in the middle of epoch 1, not a multiple of EVERY."""
    steps_per_epoch = -(-NUM_SAMPLES // (BATCH * size))
    step = steps_per_epoch + steps_per_epoch // 2
    return step + 1 if step % EVERY == 0 else step


def _straight():
    model = build_model()
    _fit(model)
    return model


def _preempted_run(directory) -> tuple:
    """Train until a SIGTERM on the last rank; return (model, the checkpoint it wrote)."""
    model = build_model()
    stop = _stop_step(model.comm.size)
    _fit(model, callbacks=[SignalAt(stop, rank=model.comm.size - 1)], checkpoint_dir=directory,
         checkpoint_every=EVERY, keep_checkpoints=10)
    assert model.preempted == "SIGTERM", "the signal on the last rank stopped every rank"
    assert model.global_step == stop
    path = os.path.join(directory, f"ckpt-{stop}")
    assert checkpoint.latest(directory) == path
    saved = checkpoint.load(path)
    assert 0 < saved["sampler"]["consumed"] < NUM_SAMPLES and saved["sampler"]["epoch"] == 1, \
        f"the stop must be mid-epoch, got sampler state {saved['sampler']}"
    assert saved["global_step"] == stop and saved["world_size"] == model.comm.size
    return model, path


def _check_resume_equals_straight(directory, resume) -> None:
    straight = _straight()
    _preempted_run(directory)
    resumed = build_model()  # fresh weights, optimizer, RNGs: everything comes from the file
    _fit(resumed, checkpoint_dir=directory, checkpoint_every=EVERY, resume=resume(directory))
    assert resumed.preempted is None
    assert resumed.global_step == straight.global_step
    assert_bitwise_equal(weights(straight), weights(resumed), "resumed vs straight")
    np.testing.assert_array_equal(straight.optimizer.state[0]["momentum_buffer"],
                                  resumed.optimizer.state[0]["momentum_buffer"])
    assert resumed.optimizer.lr == straight.optimizer.lr


@pytest.mark.parametrize("how", ["auto", "path"])
def test_resume_is_bitwise_identical(tmp_path, how):
    _check_resume_equals_straight(
        tmp_path, (lambda d: "auto") if how == "auto" else checkpoint.latest)


@pytest.mark.mpi(min_size=2)
def test_resume_is_bitwise_identical_mpi(mpi_tmp_path):
    _check_resume_equals_straight(mpi_tmp_path, lambda d: "auto")


def test_the_check_can_fail_without_rng_state(tmp_path):
    """Resuming without dropout's generator state must give other weights, so the bitwise
    test above really covers the RNG part of the state."""
    from ckpt_helpers import LocalComm

    straight = _straight()
    _, path = _preempted_run(tmp_path / "run")
    state = checkpoint.load(path)
    del state["rng"]
    bad = checkpoint.save(tmp_path / "no_rng", state, state["global_step"], LocalComm())
    resumed = build_model()
    from mpinet.ops import dropout

    dropout.manual_seed(12345)  # what a fresh process might have
    _fit(resumed, resume=bad)
    a, b = weights(straight), weights(resumed)
    assert any(not np.array_equal(a[k], b[k]) for k in a)


def test_auto_resume_skips_a_damaged_newest_checkpoint(tmp_path):
    straight = _straight()
    _, newest = _preempted_run(tmp_path)
    with open(os.path.join(newest, "tensors.safetensors"), "r+b") as f:
        f.seek(-4, os.SEEK_END)
        byte = f.read(1)
        f.seek(-4, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    resumed = build_model()
    with pytest.warns(UserWarning, match=rf"skipping .*{os.path.basename(newest)}: .*sha256"):
        _fit(resumed, checkpoint_dir=tmp_path, resume="auto")
    assert_bitwise_equal(weights(straight), weights(resumed), "resumed from the older checkpoint")


def test_save_and_load_weights_through_model(tmp_path):
    model = _straight()
    model.save_weights(str(tmp_path / "final.safetensors"))
    other = build_model()
    other.load_weights(str(tmp_path / "final.safetensors"))
    assert_bitwise_equal(weights(model), weights(other), "load_weights")


@pytest.mark.mpi(min_size=2)
def test_per_rank_statistics_and_rng_come_back_to_their_rank(mpi_tmp_path):
    """Batch-norm running statistics and dropout's generator differ between ranks (each sees
    its own batches); each rank must get its own back, and rank 0's view is the default."""
    from mpinet import backend

    model = build_model()
    model.fit(dataset(), epochs=1, batch_size=BATCH, verbose=False)
    comm = model.comm
    mine = backend.to_numpy(model.network.state_dict()["2.running_mean"]).copy()
    everyone = comm.allgather_obj(mine)
    assert not np.array_equal(everyone[0], everyone[1]), "ranks saw different batches"
    path = model.save_checkpoint(str(mpi_tmp_path / "ck"))
    np.testing.assert_array_equal(checkpoint.load(path, rank=comm.rank)["model"]["2.running_mean"],
                                  mine)
    np.testing.assert_array_equal(checkpoint.load(path, rank=0)["model"]["2.running_mean"],
                                  everyone[0])
    from mpinet.random import rng_states

    assert checkpoint.load(path, rank=comm.rank)["rng"] == rng_states()
    # Default: this process's COMM_WORLD rank, as the world size matches.
    np.testing.assert_array_equal(checkpoint.load(path)["model"]["2.running_mean"], mine)
