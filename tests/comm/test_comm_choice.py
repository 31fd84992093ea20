"""What ``create_communicator("auto")`` picks, and the layout line printed with it. The GPU cases
fake which ranks have a GPU (no GPU is needed to test the decision)."""
import pytest

from mpinet.comm import choose, create_communicator
from mpinet.comm.topology import Topology, describe


def topo(size=4, nodes=2, hosts=()):
    per = size // nodes
    return Topology(0, size, 0, per, 0, nodes, hosts=tuple(hosts))


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_every_rank_with_a_gpu_is_nccl_on_any_node_count(nodes):
    impl, why = choose(topo(4, nodes), [True] * 4)
    assert impl == "nccl"
    assert why == (f"auto: every rank has a GPU; 4 rank(s) on {nodes} node(s): NCCL inside and "
                   f"across nodes")


@pytest.mark.parametrize("nodes", [1, 2])
def test_no_gpu_anywhere_is_mpi(nodes):
    impl, why = choose(topo(4, nodes), [False] * 4)
    assert impl == "mpi" and why.startswith("auto: no rank has a GPU")


def test_some_ranks_without_a_gpu_is_an_error_naming_them():
    with pytest.raises(ValueError, match=r"ranks \[1, 3\] have no GPU but the others do.*"
                                         r"--device cpu"):
        choose(topo(4, 2), [True, False, True, False])


def test_describe_names_the_ranks_of_each_host():
    assert describe(topo(4, 2, ["node1", "node1", "node2", "node2"])) == \
        "node1: ranks 0-1, node2: ranks 2-3"
    assert describe(topo(3, 3, ["a", "b", "a"])) == "a: rank 0, b: rank 1, a: rank 2"
    assert describe(topo(2, 1)) == "2 rank(s) on 1 node(s)"


def test_auto_on_this_cpu_says_why():
    comm = create_communicator("auto", timeout_s=30)
    try:
        assert comm.name == "mpi"
        assert comm.choice.startswith("comm=mpi (auto: no rank has a GPU; 1 rank(s) on 1 node(s))")
        assert comm.topology.hosts and comm.choice.endswith(f"{comm.topology.hosts[0]}: rank 0")
        explicit = create_communicator("hierarchical", timeout_s=30)
        assert explicit.choice.startswith("comm=hierarchical (asked for)")
        explicit.close()
    finally:
        comm.close()
