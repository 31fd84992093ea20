"""One process without mpiexec (CPU training on one machine): every collective is the identity,
and the topology is one node of one rank."""
import numpy as np
import pytest

from helpers import communicator, ramp


@pytest.fixture(scope="module", params=["mpi", "hierarchical"])
def comm(request):
    with communicator(request.param, None, 1) as c:
        yield c


def test_topology_of_one(comm):
    t = comm.topology
    assert (t.rank, t.size, t.local_rank, t.local_size, t.node, t.num_nodes) == (0, 1, 0, 1, 0, 1)


def test_collectives_are_identity(comm):
    x = ramp(10, 0, np.float32)
    np.testing.assert_array_equal(comm.allreduce(x), x)
    np.testing.assert_array_equal(comm.allreduce(x, op="mean"), x)
    np.testing.assert_array_equal(comm.iallreduce(x.copy()).wait(), x)
    assert comm.allgather(x).shape == (1, 10)
    np.testing.assert_array_equal(comm.reduce_scatter(x), x)
    y = x.copy()
    np.testing.assert_array_equal(comm.bcast(y), x)
    assert comm.allgather_obj("a") == ["a"] and comm.allreduce_obj(3, op="max") == 3
    comm.barrier()
