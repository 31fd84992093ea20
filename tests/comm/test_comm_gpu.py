"""The GPU implementations (nccl; hierarchical on CuPy arrays) on real GPUs, one rank per GPU.

Run on the GPU machine, e.g.
  mpirun --allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE=0 -n 2 \\
      python -m mpi4py -m pytest -q -p no:cacheprovider --with-mpi -m "mpi and gpu" tests/comm
Expected values come from rank and size, checked on the host after the collective.
"""
import ml_dtypes
import numpy as np
import pytest

from helpers import communicator, layout_id, ramp, ramp_sum
from mpinet import backend
from mpinet.comm import wait_all

pytestmark = [pytest.mark.gpu, pytest.mark.mpi(min_size=2)]

BF16 = np.dtype(ml_dtypes.bfloat16)
GPU_LAYOUTS = [("nccl", None), ("hierarchical", None), ("hierarchical", "all"),
               ("hierarchical", 2)]


def _node_local_rank():
    """This rank's real node-local rank: the GPU to use, whatever layout is emulated."""
    from mpi4py import MPI

    local = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED, key=MPI.COMM_WORLD.Get_rank())
    rank = local.Get_rank()
    local.Free()
    return rank


@pytest.fixture(scope="module")
def gpu_index():
    return _node_local_rank()


@pytest.fixture(scope="module", params=GPU_LAYOUTS, ids=layout_id)
def comm(request, gpu_index):
    from mpi4py import MPI

    impl, nodes = request.param
    backend.select_device(gpu_index, device="gpu")  # NCCL binds to the current GPU
    with communicator(impl, nodes, MPI.COMM_WORLD.Get_size()) as c:
        yield c


@pytest.fixture(autouse=True)
def _gpu(gpu_index):
    # tests/conftest.py resets every test to the CPU backend; these run on this rank's GPU.
    backend.select_device(gpu_index, device="gpu")
    yield


def host(a):
    return backend.to_numpy(a).astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16, np.float64, np.int32],
                         ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", [1, 1001, 1 << 20])
def test_allreduce_sum(comm, dtype, n):
    cp = backend.current().xp
    x = ramp(n, comm.rank, dtype, xp=cp)
    out = comm.allreduce(x)
    assert out.dtype == np.dtype(dtype) and out.shape == (n,)
    np.testing.assert_array_equal(host(out), ramp_sum(n, comm.size))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=lambda d: np.dtype(d).name)
def test_allreduce_mean_in_place(comm, dtype):
    cp = backend.current().xp
    x = ramp(4099, comm.rank, dtype, xp=cp)
    assert comm.allreduce(x, op="mean", out=x) is x
    np.testing.assert_allclose(host(x), ramp_sum(4099, comm.size) / comm.size, rtol=1e-2)


def test_ordered_after_compute_stream_without_host_sync(comm):
    # x is produced by a kernel on a non-default compute stream and consumed right after wait():
    # only the event ordering makes the result right.
    cp = backend.current().xp
    with cp.cuda.Stream(non_blocking=True) as s:
        xs = [cp.full(1 << 18, float(comm.rank + 1), cp.float32) * (i + 1) for i in range(16)]
        handles = [comm.iallreduce(x, out=x) for x in xs]
        totals = cp.stack([h.wait().sum() for h in handles])  # queued on s after each wait
        got = totals.get()
        s.synchronize()
    expected = [(i + 1) * comm.size * (comm.size + 1) / 2 * (1 << 18) for i in range(16)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_many_handles_then_wait_all(comm):
    cp = backend.current().xp
    xs = [cp.full(1000 + 13 * i, comm.rank * i, cp.float32) for i in range(32)]
    handles = [comm.iallreduce(x) for x in xs]
    for i, r in enumerate(wait_all(handles)):
        np.testing.assert_array_equal(host(r), i * comm.size * (comm.size - 1) / 2)


def test_rank_dependent_polling_keeps_ranks_matched(comm):
    # Only even ranks poll test() between posts, and every rank waits the newest handle first:
    # the order of NCCL calls must still be the same on every rank (hierarchical queues its final
    # allgathers inside wait() only, in post order).
    cp = backend.current().xp
    handles = []
    for i in range(12):
        handles.append(comm.iallreduce(cp.full(777 + i, i + comm.rank, cp.float32)))
        if comm.rank % 2 == 0:
            [h.test() for h in handles]
    last = handles[-1].wait()
    results = wait_all(handles[:-1]) + [last]
    for i, r in enumerate(results):
        np.testing.assert_array_equal(host(r), i * comm.size + comm.size * (comm.size - 1) / 2)


def test_test_turns_true(comm):
    cp = backend.current().xp
    h = comm.iallreduce(cp.ones(1 << 16, cp.float32))
    for _ in range(1_000_000):
        if h.test():
            break
    assert h.test()
    np.testing.assert_array_equal(host(h.wait()), comm.size)


@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=lambda d: np.dtype(d).name)
def test_bcast_allgather_reduce_scatter(comm, dtype):
    cp = backend.current().xp
    x = ramp(6, comm.rank, dtype, xp=cp)
    comm.bcast(x, root=comm.size - 1)
    np.testing.assert_array_equal(host(x), host(ramp(6, comm.size - 1, dtype)))
    g = comm.allgather(cp.full((2, 3), comm.rank, dtype))
    assert g.shape == (comm.size, 2, 3)
    for r in range(comm.size):
        np.testing.assert_array_equal(host(g[r]), r)
    y = ramp(5 * comm.size, comm.rank, dtype, xp=cp)
    part = comm.reduce_scatter(y)
    np.testing.assert_array_equal(host(part), ramp_sum(5 * comm.size, comm.size)
                                  [5 * comm.rank:5 * comm.rank + 5])
    np.testing.assert_allclose(host(comm.reduce_scatter(y, op="mean")),
                               host(part) / comm.size, rtol=1e-2)
    comm.barrier()


def test_host_array_refused_by_nccl(comm):
    if comm.name != "nccl":
        pytest.skip("hierarchical accepts host arrays too")
    with pytest.raises(TypeError, match="NCCL moves GPU arrays only"):
        comm.allreduce(np.ones(3, np.float32))


# auto is nccl on GPUs whatever the node count (hierarchical only when asked for).
@pytest.mark.parametrize("env, expected", [({}, "nccl"), ({"MPINET_EMULATE_NODES": "2"}, "nccl")])
def test_auto_choice_on_gpu(comm, monkeypatch, env, expected):
    from mpinet.comm import create_communicator

    monkeypatch.delenv("MPINET_EMULATE_NODES", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if comm.name != "nccl":
        pytest.skip("checked once, beside the nccl communicator")
    auto = create_communicator("auto")
    try:
        assert auto.name == expected
        assert auto.choice.startswith(f"comm={expected} (auto: every rank has a GPU"), auto.choice
    finally:
        auto.close()


@pytest.mark.parametrize("nodes", [2, "all"], ids=["2nodes", "allnodes"])
def test_hierarchical_staging_in_small_chunks(monkeypatch, gpu_index, nodes):
    """Host staging cut into 10 KiB chunks (several per shard): handles in flight, exact sums."""
    from mpi4py import MPI

    monkeypatch.setenv("MPINET_STAGING_CHUNK_MB", "0.01")
    cp = backend.current().xp
    with communicator("hierarchical", nodes, MPI.COMM_WORLD.Get_size()) as c:
        if c.num_nodes == 1:
            pytest.skip("one node: nothing is staged")
        assert not c.mpi_cuda_aware, c.mpi_cuda_aware_reason  # the machine's MPI is not
        sizes = [1, 2561, 40_003, 1 << 18]
        xs = [ramp(n, c.rank, np.float32, xp=cp) for n in sizes]
        results = wait_all([c.iallreduce(x) for x in xs])
        for n, r in zip(sizes, results, strict=True):
            np.testing.assert_array_equal(host(r), ramp_sum(n, c.size))
        m = ramp(5000, c.rank, np.float32, xp=cp)
        c.allreduce(m, op="mean", out=m)
        np.testing.assert_allclose(host(m), ramp_sum(5000, c.size) / c.size, rtol=1e-6)
