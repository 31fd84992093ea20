"""Under mpiexec (2 and 4 ranks): a rank that enters a different collective (element count,
dtype, op) makes every rank raise CommError naming both sides, with the check always on (no
debug mode); a rank that sleeps is named as the straggler, with how far behind it runs."""
import time

import numpy as np
import pytest

from mpinet.comm import CommError, create_communicator
from mpinet.parallel.straggler import StragglerWatch

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture
def comm():
    # A fresh communicator per test: a mismatched data collective stays posted on the old one.
    c = create_communicator("mpi", timeout_s=30, debug=False)
    assert c.check  # always on by default
    yield c
    c.close()


def test_matched_collectives_pass(comm):
    x = np.ones(6, np.float32)
    np.testing.assert_array_equal(comm.allreduce(x), np.full(6, comm.size, np.float32))
    assert comm.allreduce_obj(np.array([1.0, 2.0])).tolist() == [comm.size, 2.0 * comm.size]


def test_count_mismatch_is_caught(comm):
    last = comm.size - 1
    n = 3 if comm.rank == last else 6
    with pytest.raises(CommError, match=rf"collective #1: rank 0 called allreduce of 6 elements "
                                        rf"of float32, op=sum .* but rank {last} called "
                                        rf"allreduce of 3 elements of float32"):
        comm.allreduce(np.ones(n, np.float32))


def test_dtype_mismatch_is_caught(comm):
    dtype = np.float64 if comm.rank == 1 else np.float32
    with pytest.raises(CommError, match=r"rank 0 called allreduce of 6 elements of float32.* but "
                                        r"rank 1 called allreduce of 6 elements of float64"):
        comm.allreduce(np.ones(6, dtype))


def test_op_mismatch_between_object_collectives_is_caught(comm):
    with pytest.raises(CommError, match=r"rank 0 called allgather_obj .* but rank 1 called "
                                        r"allreduce_obj"):
        if comm.rank == 1:
            comm.allreduce_obj(1.0)
        else:
            comm.allgather_obj(1.0)


def test_sleeping_rank_is_named_as_straggler(comm, capsys):
    watch = StragglerWatch(comm, warn_s=0.1)
    slow = comm.size - 1
    x = np.ones(4, np.float32)
    for _ in range(3):
        if comm.rank == slow:
            time.sleep(0.1)
        comm.allreduce(x)
    info = watch.window_end(1, 3)
    assert info["slowest_rank"] == slow
    assert 0.2 <= info["straggler_s"] < 1.0, info
    err = capsys.readouterr().err
    if comm.rank == 0:
        assert f"[mpinet] straggler: rank {slow} (host " in err and "over steps 1-3" in err, err
    else:
        assert "straggler" not in err
    # A window with no sleeper: the lag is small and no warning.
    for _ in range(3):
        comm.allreduce(x)
    assert watch.window_end(4, 6)["straggler_s"] < 0.1
