"""The loss scaler's split API across ranks: one rank's overflow makes every rank skip and back
off, so the replicas stay identical (the data-parallel layer does this allreduce)."""
import numpy as np
import pytest

from mpinet.autograd import Parameter
from mpinet.flat import FlatParameters
from mpinet.optim import SGD, LossScaler


@pytest.mark.mpi(min_size=2)
def test_overflow_on_one_rank_skips_the_step_everywhere():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    params = [Parameter(np.zeros(4, np.float32)), Parameter(np.zeros(2, np.float32))]
    flat = FlatParameters(params)
    opt = SGD(flat, lr=1.0)
    scaler = LossScaler(init_scale=8.0, growth_interval=2)
    for step in range(4):
        opt.zero_grad()
        flat.grad[...] = scaler.get_scale()  # a scaled gradient of 1
        if step == 1 and rank == size - 1:
            flat.grad[3] = np.inf  # only the last rank overflows
        local = scaler.unscale_(flat)
        found_inf = comm.allreduce(local, op=MPI.LOR)
        assert found_inf == (step == 1)
        scaler.step(opt, found_inf)
        scaler.update(found_inf)
    # Steps 0, 2, 3 applied (grad 1, lr 1); step 1 skipped on every rank.
    np.testing.assert_array_equal(flat.data, -3.0)
    # 8 -> 4 after the overflow, -> 8 after two clean steps.
    assert scaler.get_scale() == 8.0
    everyone = comm.allgather((flat.data.tobytes(), scaler.state_dict()))
    assert all(e == everyone[0] for e in everyone)
