"""Where each rank sits: world rank, node-local rank, node index; and the comms that follow.

The node-local group comes from ``Split_type(COMM_TYPE_SHARED)``, which every MPI (Open MPI,
MPICH, under mpirun or srun) answers from shared-memory reachability, so it needs no launcher
variables (OMPI_COMM_WORLD_LOCAL_RANK was seen to lie under oversubscription).

``MPINET_EMULATE_NODES=K`` instead cuts the world into K "nodes" of contiguous ranks, so the
multi-node code paths (hierarchical allreduce) run in tests on one machine. It is read each time
a topology is built, so a test can set it (monkeypatch) before creating a communicator.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

EMULATE_ENV = "MPINET_EMULATE_NODES"


@dataclass(frozen=True)
class Topology:
    rank: int  # rank in the world communicator
    size: int
    local_rank: int  # rank among the ranks of this node
    local_size: int
    node: int  # node index, 0..num_nodes-1, ordered by the lowest world rank on each node
    num_nodes: int
    emulated: bool = False  # True when MPINET_EMULATE_NODES drew the nodes
    hosts: tuple[str, ...] = ()  # host name of every rank (index = world rank)


def describe(topo: Topology) -> str:
    """Which ranks run where, e.g. "node1: ranks 0-1, node2: ranks 2-3" (contiguous runs)."""
    if not topo.hosts:
        return f"{topo.size} rank(s) on {topo.num_nodes} node(s)"
    runs: list[list] = []  # [host, first rank, last rank]
    for r, h in enumerate(topo.hosts):
        if runs and runs[-1][0] == h and runs[-1][2] == r - 1:
            runs[-1][2] = r
        else:
            runs.append([h, r, r])
    parts = [f"{h}: rank {a}" if a == b else f"{h}: ranks {a}-{b}" for h, a, b in runs]
    return ", ".join(parts)


def _emulated_nodes(size: int) -> int | None:
    raw = os.environ.get(EMULATE_ENV, "").strip()
    if not raw:
        return None
    try:
        k = int(raw)
    except ValueError:
        raise ValueError(f"${EMULATE_ENV}={raw!r} is not an integer; set it to a node count "
                         f"that divides the number of ranks ({size}), or unset it") from None
    if k < 1 or size % k:
        raise ValueError(f"${EMULATE_ENV}={k} does not divide the {size} ranks into equal "
                         f"emulated nodes; use a divisor of {size} or unset it")
    return k


def build(mpi_comm):
    """Topology plus the node-local comm and the cross-node comm (same local rank on each node).

    Collective over ``mpi_comm``. Returns ``(Topology, local_comm, cross_comm)``; the caller owns
    (and frees) both comms.
    """
    rank, size = mpi_comm.Get_rank(), mpi_comm.Get_size()
    k = _emulated_nodes(size)
    if k is not None:
        per_node = size // k
        local = mpi_comm.Split(color=rank // per_node, key=rank)
    else:
        from mpi4py import MPI

        local = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    local_rank, local_size = local.Get_rank(), local.Get_size()
    # A node is named by its lowest world rank; sorting those names numbers the nodes the same
    # way on every rank.
    leader = local.bcast(rank, root=0)
    leaders = sorted(set(mpi_comm.allgather(leader)))
    node = leaders.index(leader)
    cross = mpi_comm.Split(color=local_rank, key=node)
    hosts = tuple(mpi_comm.allgather(socket.gethostname()))
    topo = Topology(rank, size, local_rank, local_size, node, len(leaders), emulated=k is not None,
                    hosts=hosts)
    return topo, local, cross
