"""Every array and object collective of the CPU implementations, blocking and non-blocking,
against values computed from rank and size. Run under mpiexec -n 2 and -n 4; the hierarchical
communicator also runs on emulated nodes (2 nodes, and one node per rank)."""
import ml_dtypes
import numpy as np
import pytest

from helpers import CPU_LAYOUTS, communicator, layout_id, ramp, ramp_sum
from mpinet.comm import Handle, wait_all

pytestmark = pytest.mark.mpi(min_size=2)

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.float32, np.float64, np.float16, BF16, np.int32, np.int64]
SIZES = [1, 5, 8, 1001]  # 1001 and 5: not divisible by size nor by ranks per node


@pytest.fixture(scope="module", params=CPU_LAYOUTS, ids=layout_id)
def comm(request):
    from mpi4py import MPI

    impl, nodes = request.param
    with communicator(impl, nodes, MPI.COMM_WORLD.Get_size()) as c:
        yield c


def as_f64(a):
    return np.asarray(a).astype(np.float64)


def test_topology_is_consistent(comm):
    t = comm.topology
    assert (t.rank, t.size) == (comm.mpi_comm.Get_rank(), comm.mpi_comm.Get_size())
    assert t.num_nodes * t.local_size == t.size  # equal nodes here (real or emulated)
    everyone = comm.allgather_obj((t.node, t.local_rank))
    assert sorted(everyone) == sorted({(n, lr) for n, lr in everyone})  # no two ranks share a slot
    if t.emulated:  # contiguous ranks per emulated node
        assert t.node == t.rank // t.local_size and t.local_rank == t.rank % t.local_size


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", SIZES)
def test_allreduce_sum(comm, dtype, n):
    x = ramp(n, comm.rank, dtype)
    out = comm.allreduce(x)
    assert out is not x and out.dtype == np.dtype(dtype) and out.shape == (n,)
    np.testing.assert_array_equal(as_f64(out), ramp_sum(n, comm.size))
    np.testing.assert_array_equal(as_f64(x), as_f64(ramp(n, comm.rank, dtype)))  # input untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, BF16],
                         ids=lambda d: np.dtype(d).name)
def test_allreduce_mean_in_place(comm, dtype):
    x = ramp(37, comm.rank, dtype)
    out = comm.allreduce(x, op="mean", out=x)
    assert out is x
    np.testing.assert_allclose(as_f64(x), ramp_sum(37, comm.size) / comm.size, rtol=1e-2)


def test_allreduce_into_given_out_and_2d(comm):
    x = np.full((3, 4), comm.rank + 1, np.float32)
    out = np.zeros((3, 4), np.float32)
    assert comm.allreduce(x, out=out) is out
    np.testing.assert_array_equal(out, comm.size * (comm.size + 1) / 2)


def test_many_nonblocking_allreduces_in_flight(comm):
    # 40 handles of different sizes posted before any wait, then completed out of order.
    xs = [np.full(17 * i + 3, (comm.rank + 1) * i, np.float64) for i in range(40)]
    handles = [comm.iallreduce(x, op="sum", out=x) for x in xs]
    assert all(isinstance(h, Handle) for h in handles)
    late = handles[25:]
    handles[30].wait()  # waiting a later one first must also work
    results = wait_all(handles[:25]) + wait_all(late)
    for i, r in enumerate(results):
        assert r is xs[i]
        np.testing.assert_array_equal(r, i * comm.size * (comm.size + 1) / 2)


def test_handle_test_turns_true(comm):
    x = np.full(1000, comm.rank, np.float32)
    h = comm.iallreduce(x)
    for _ in range(100000):
        if h.test():
            break
    assert h.test()
    np.testing.assert_array_equal(h.wait(), comm.size * (comm.size - 1) / 2)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_bcast_from_every_root(comm, dtype):
    for root in range(comm.size):
        x = ramp(9, comm.rank, dtype)
        assert comm.bcast(x, root=root) is x
        np.testing.assert_array_equal(as_f64(x), as_f64(ramp(9, root, dtype)))
        y = np.full((2, 3), comm.rank, dtype)
        assert comm.ibcast(y, root=root).wait() is y
        np.testing.assert_array_equal(as_f64(y), root)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_allgather(comm, dtype):
    x = np.full((2, 3), comm.rank, dtype)
    for out in (comm.allgather(x), comm.iallgather(x).wait()):
        assert out.shape == (comm.size, 2, 3) and out.dtype == np.dtype(dtype)
        for r in range(comm.size):
            np.testing.assert_array_equal(as_f64(out[r]), r)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_reduce_scatter(comm, dtype):
    m = 3
    x = ramp(m * comm.size, comm.rank, dtype)
    full = ramp_sum(m * comm.size, comm.size)
    mine = full[comm.rank * m:(comm.rank + 1) * m]
    for out in (comm.reduce_scatter(x), comm.ireduce_scatter(x).wait()):
        assert out.shape == (m,) and out.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(as_f64(out), mine)


def test_reduce_scatter_mean(comm):
    x = np.full(4 * comm.size, comm.rank, np.float32)
    np.testing.assert_allclose(comm.reduce_scatter(x, op="mean"), (comm.size - 1) / 2)


def test_mixed_collectives_in_flight(comm):
    a = np.full(11, comm.rank + 1, np.float32)
    b = np.full(4, comm.rank, np.int64)
    c = np.arange(2 * comm.size, dtype=np.float64)
    ha, hb, hc, hd = (comm.iallreduce(a), comm.ibcast(b, root=comm.size - 1),
                      comm.ireduce_scatter(c), comm.iallgather(np.array([comm.rank])))
    ra, rb, rc, rd = wait_all([ha, hb, hc, hd])
    np.testing.assert_array_equal(ra, comm.size * (comm.size + 1) / 2)
    np.testing.assert_array_equal(rb, comm.size - 1)
    np.testing.assert_array_equal(rc, comm.size * np.arange(2 * comm.rank, 2 * comm.rank + 2))
    np.testing.assert_array_equal(rd[:, 0], np.arange(comm.size))


def test_object_collectives_and_barrier(comm):
    assert (comm.bcast_obj({"lr": 0.1 * (comm.rank + 1)}, root=comm.size - 1)
            == {"lr": 0.1 * comm.size})
    assert comm.allgather_obj(("r", comm.rank)) == [("r", r) for r in range(comm.size)]
    assert comm.allreduce_obj(comm.rank + 1) == comm.size * (comm.size + 1) // 2
    assert comm.allreduce_obj(comm.rank, op="max") == comm.size - 1
    assert comm.allreduce_obj(comm.rank, op="min") == 0
    assert comm.allreduce_obj(comm.rank == 1, op="lor") is True
    assert comm.allreduce_obj(comm.rank == 1, op="land") is False
    comm.barrier()
