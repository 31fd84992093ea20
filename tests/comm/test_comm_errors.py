"""Bad input is refused with a message naming op, shape, dtype and the fix; debug mode names
the first rank whose collective differs; bad MPINET_EMULATE_NODES values are refused."""
import numpy as np
import pytest

from helpers import CPU_LAYOUTS, communicator, layout_id
from mpinet.comm import CommError, create_communicator

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture(scope="module", params=CPU_LAYOUTS[:2], ids=layout_id)
def comm(request):
    from mpi4py import MPI

    with communicator(*request.param, MPI.COMM_WORLD.Get_size()) as c:
        yield c


def test_non_contiguous_is_refused(comm):
    x = np.zeros((4, 6), np.float32)[:, ::2]
    with pytest.raises(ValueError, match=r"allreduce.*\(4, 3\).*float32.*not "
                                         r"C-contiguous.*ascontiguousarray"):
        comm.allreduce(x)
    with pytest.raises(ValueError, match="bcast.*not C-contiguous"):
        comm.bcast(x)


@pytest.mark.parametrize("dtype", [np.complex64, np.uint8, np.bool_])
def test_unsupported_dtype_is_refused(comm, dtype):
    with pytest.raises(TypeError, match=rf"allreduce.*\(3,\).*{np.dtype(dtype).name}.*cast it to"):
        comm.allreduce(np.zeros(3, dtype))


def test_out_mismatch_is_refused(comm):
    x = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match=r"out has shape \(4,\).*expected shape \(5,\) and dtype "
                                         r"float32"):
        comm.allreduce(x, out=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="dtype float64, expected shape"):
        comm.iallreduce(x, out=np.zeros(5, np.float64))


def test_bad_reduce_op_and_integer_mean(comm):
    with pytest.raises(ValueError, match="op='max' is not supported"):
        comm.allreduce(np.zeros(2, np.float32), op="max")
    with pytest.raises(TypeError, match="op='mean' on integer dtype int32"):
        comm.allreduce(np.zeros(2, np.int32), op="mean")
    with pytest.raises(ValueError, match="allreduce_obj: op='prod'"):
        comm.allreduce_obj(1, op="prod")


def test_reduce_scatter_shape_is_checked(comm):
    with pytest.raises(ValueError, match=rf"reduce_scatter.*\({comm.size * 2 + 1},\).*divisible "
                                         rf"by the {comm.size} ranks"):
        comm.reduce_scatter(np.zeros(comm.size * 2 + 1, np.float32))
    with pytest.raises(ValueError, match="must be 1-D"):
        comm.reduce_scatter(np.zeros((comm.size, 2), np.float32))


def test_bad_root_and_non_array(comm):
    with pytest.raises(ValueError, match=f"root={comm.size} is not a rank"):
        comm.bcast(np.zeros(2), root=comm.size)
    with pytest.raises(TypeError, match="must be a NumPy or CuPy array, got list"):
        comm.allreduce([1.0, 2.0])


def test_still_usable_after_refusals(comm):
    # Refusals happen before any communication, so the ranks stay matched.
    np.testing.assert_array_equal(comm.allreduce(np.ones(3)), comm.size)


def test_bad_impl_name():
    with pytest.raises(ValueError, match="impl='gloo' is not one of auto, mpi, nccl, hierarchical"):
        create_communicator("gloo")


def test_auto_on_cpu_is_mpi():
    from mpi4py import MPI

    with communicator("auto", None, MPI.COMM_WORLD.Get_size()) as c:
        assert c.name == "mpi"


@pytest.mark.parametrize("value, message", [("3x", "not an integer"), ("0", "does not divide"),
                                            ("7", "does not divide")])
def test_bad_emulated_node_count(monkeypatch, value, message):
    monkeypatch.setenv("MPINET_EMULATE_NODES", value)
    with pytest.raises(ValueError, match=f"MPINET_EMULATE_NODES.*{message}"):
        create_communicator("mpi")


@pytest.mark.parametrize("layout", CPU_LAYOUTS[:2], ids=layout_id)
def test_debug_mode_names_first_mismatching_rank(layout):
    from mpi4py import MPI

    with communicator(*layout, MPI.COMM_WORLD.Get_size(), debug=True) as c:
        c.allreduce(np.ones(3, np.float32))  # matched: passes the check
        n = 4 if c.rank == 1 else 3  # rank 1 disagrees on the shape
        with pytest.raises(CommError, match=r"collective #\d+: rank 0 calls "
                                            r"allreduce\(shape=\(3,\), "
                                            r"dtype=float32, op=sum\).* but rank 1 calls "
                                            r"allreduce\(shape=\(4,\)"):
            c.allreduce(np.ones(n, np.float32))
        if c.rank == 0:
            with pytest.raises(CommError, match="rank 0 calls bcast.*rank 1 calls allreduce"):
                c.bcast(np.ones(2, np.float32))
        else:
            with pytest.raises(CommError, match="rank 0 calls bcast"):
                c.allreduce(np.ones(2, np.float32))
