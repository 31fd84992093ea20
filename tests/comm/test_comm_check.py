"""The preflight (mpinet.comm.check): the classic mistakes found in every rank's facts (faked
facts, so GPU cases need no GPU), the reachability probe, and a full run under 2 and 4 ranks."""
import copy

import numpy as np
import pytest

from mpinet.comm import check


def fact(rank, host="n1", gpu=None, **kw):
    f = {"rank": rank, "host": host, "pid": 100 + rank, "mpi": "MPICH Version: 5.0.2",
         "python": "3.11.7", "numpy": "2.0", "mpinet": "0.1.0", "gpu": gpu,
         "interfaces": {"lo": "127.0.0.1", "ib0": "10.0.0.1"}, "nccl_socket_ifname": ""}
    f.update(kw)
    return f


def gpu(bus, device=0, nccl="22805", cupy="14.0"):
    return {"device": device, "pci_bus_id": bus, "name": "H100", "nccl": nccl, "cupy": cupy,
            "visible": "(all)"}


def test_a_clean_job_has_no_problem():
    facts = [fact(0, "n1", gpu("0000:01:00.0", 0)), fact(1, "n1", gpu("0000:02:00.0", 1)),
             fact(2, "n2", gpu("0000:01:00.0", 0)), fact(3, "n2", gpu("0000:02:00.0", 1))]
    assert check.problems(facts) == []


def test_two_ranks_on_one_gpu_are_named():
    facts = [fact(0, "n1", gpu("0000:01:00.0")), fact(1, "n1", gpu("0000:01:00.0")),
             fact(2, "n2", gpu("0000:01:00.0"))]  # same bus id on another host is fine
    (p,) = check.problems(facts)
    assert p.startswith("ranks 0, 1 on host n1 all use the GPU at PCI 0000:01:00.0")


def test_ranks_without_gpu_beside_ranks_with_one():
    (p,) = check.problems([fact(0, gpu=gpu("a")), fact(1, host="n2")])
    assert p == "ranks 1 have no GPU while ranks 0 do"


@pytest.mark.parametrize("key, field", [("mpi", None), ("numpy", None), ("nccl", "gpu"),
                                        ("python", None), ("mpinet", None)])
def test_mismatched_versions_are_named_with_their_ranks(key, field):
    facts = [fact(r, gpu=gpu(f"b{r}")) for r in range(3)]
    odd = copy.deepcopy(facts[2])
    if field:
        odd[field][key] = "other"
    else:
        odd[key] = "other"
    facts[2] = odd
    (p,) = check.problems(facts)
    assert p.startswith(f"{key} versions differ between ranks: ")
    assert "'other' on ranks 2" in p and "on ranks 0, 1" in p


def test_nccl_socket_ifname_missing_on_a_host():
    facts = [fact(0, gpu=gpu("a"), nccl_socket_ifname="ib"),
             fact(1, host="n2", gpu=gpu("a"), nccl_socket_ifname="ib",
                  interfaces={"lo": "127.0.0.1", "eth0": "10.1.0.2"})]
    (p,) = check.problems(facts)
    assert p == "NCCL_SOCKET_IFNAME=ib but host n2 (rank 1) has only ['eth0', 'lo']"


def test_interfaces_of_this_host_include_loopback():
    assert check.interfaces().get("lo") == "127.0.0.1"


def test_single_process_run_passes_and_reports_bandwidth(capsys):
    assert check.main(["--comm", "mpi", "--size-mb", "1", "--iters", "2"]) == 0
    out = capsys.readouterr().out
    assert "[preflight] 1 rank(s) on 1 host(s)" in out
    assert "[preflight] mpi allreduce of 1 MiB float32:" in out and "GB/s" in out
    assert "[preflight] all checks passed" in out


class DropsSendsTo:
    """An MPI comm whose sends to one rank are lost (a one-way network failure)."""

    def __init__(self, comm, lost):
        self._comm, self._lost = comm, lost

    def __getattr__(self, name):
        return getattr(self._comm, name)

    def Isend(self, buf, dest, tag):
        from mpi4py import MPI

        if dest == self._lost:
            return MPI.REQUEST_NULL  # never sent
        return self._comm.Isend(buf, dest=dest, tag=tag)


@pytest.mark.mpi(min_size=2)
def test_reachability_names_the_rank_that_never_arrived():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD.Dup()
    rank = comm.Get_rank()
    probe = DropsSendsTo(comm, lost=0) if rank == 1 else comm
    missing = check.reachability(probe, timeout_s=1.0)
    if rank == 0:
        assert len(missing) == 1, missing
        assert missing[0].startswith("rank 0 (host ") and \
            missing[0].endswith("got nothing from rank 1 within 1 s"), missing
    else:
        assert missing == []
    comm.Barrier()
    assert check.reachability(comm, timeout_s=5.0) == []  # the cancelled receive is gone
    comm.Free()


@pytest.mark.mpi(min_size=2)
def test_preflight_on_every_rank(capsys):
    from mpi4py import MPI

    found = check.preflight(MPI.COMM_WORLD, ["mpi", "hierarchical"], size_mb=0.25, iters=2)
    assert found == []
    out = capsys.readouterr().out
    if MPI.COMM_WORLD.Get_rank() == 0:
        assert f"[preflight] {MPI.COMM_WORLD.Get_size()} rank(s) on 1 host(s)" in out
        assert out.count("allreduce of 0.25 MiB float32") == 2
    else:
        assert out == ""
    per, alg, bus = check.bandwidth(_mpi_comm(), 0.25, 1)
    assert per > 0 and alg > 0 and bus >= alg and np.isfinite(bus)


def _mpi_comm():
    from mpinet.comm import create_communicator

    return create_communicator("mpi", timeout_s=60)
