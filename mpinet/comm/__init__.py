"""The comm layer: collectives on arrays over MPI, NCCL, or NCCL-in-node + MPI-across-nodes.

    comm = create_communicator(impl="auto", mpi_comm=None, timeout_s=None, debug=None)
    h = comm.iallreduce(grad, op="mean", out=grad)   # starts; many may be in flight
    ...                                              # backprop continues meanwhile
    grad = h.wait()                                  # or wait_all([h, ...])

It knows arrays only, never layers. Implementations (``comm.name``):
  * ``mpi``          NumPy host arrays (CPU training, fallback).
  * ``nccl``         CuPy arrays via cupy.cuda.nccl on a dedicated stream ordered after the
                     compute stream with events.
  * ``hierarchical`` reduce-scatter inside the node -> allreduce of this rank's shard across nodes
                     over MPI (through pinned host buffers on GPU) -> allgather inside the node.
                     On CPU the same algorithm with MPI at both levels.
  * ``auto``         CPU -> mpi; GPU on one node -> nccl; GPU on several nodes -> hierarchical,
                     or nccl when $MPINET_NCCL_ACROSS_NODES=1.

No hangs: each wait (object collectives and communicator setup included) is bounded by
``timeout_s`` ($MPINET_COMM_TIMEOUT, or ``--comm-timeout``; default 600 s); past it the job is
aborted with a report naming the op, element count, dtype and the ranks that did not arrive,
with their host and pid. A rank that has not arrived and whose heartbeat has stopped (stopped,
dead, cut off) ends the job sooner: after $MPINET_COMM_HEARTBEAT_TIMEOUT (default 30 s).
No silent mismatch: every collective posts a tiny signature check (op, element count, dtype,
sequence number); a rank that entered a different collective raises ``CommError`` naming both
sides ($MPINET_COMM_CHECK=0 turns it off, for measuring its cost). ``debug``
($MPINET_COMM_DEBUG=1) also compares shapes, before each collective.
"""
from __future__ import annotations

import os

from mpinet import backend
from mpinet.comm import failure, topology
from mpinet.comm.base import CommError, Communicator, Handle, env_timeout_s, wait_all
from mpinet.comm.topology import Topology

IMPLS = ("auto", "mpi", "nccl", "hierarchical")
NCCL_ACROSS_NODES_ENV = "MPINET_NCCL_ACROSS_NODES"

__all__ = ["create_communicator", "Communicator", "Handle", "wait_all", "Topology", "CommError"]


def create_communicator(impl: str = "auto", mpi_comm=None, timeout_s=None,
                        debug=None) -> Communicator:
    """A Communicator over ``mpi_comm`` (default COMM_WORLD). Collective: call on every rank.

    On GPU call ``backend.select_device(local_rank)`` first: NCCL binds to the current device.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {', '.join(IMPLS)}")
    if mpi_comm is None:
        from mpi4py import MPI  # noqa: PLC0415 - importing mpi4py initialises MPI

        mpi_comm = MPI.COMM_WORLD
    # Creating MPI communicators blocks with no timeout of its own: a timer bounds it.
    limit = float(timeout_s) if timeout_s is not None else env_timeout_s()
    with failure.deadline("communicator setup", limit, mpi_comm):
        layout = topology.build(mpi_comm)
        if impl == "auto":
            impl = _choose(layout[0])
        if impl == "mpi":
            from mpinet.comm.mpi import MpiCommunicator as cls  # noqa: PLC0415
        elif impl == "nccl":
            from mpinet.comm.nccl import NcclCommunicator as cls  # noqa: PLC0415
        else:
            from mpinet.comm.hierarchical import HierarchicalCommunicator as cls  # noqa: PLC0415
        return cls(mpi_comm, timeout_s=timeout_s, debug=debug, layout=layout)

def _choose(topo: Topology) -> str:
    if not backend.current().is_gpu:
        return "mpi"
    if topo.num_nodes == 1 or os.environ.get(NCCL_ACROSS_NODES_ENV, "") == "1":
        return "nccl"
    return "hierarchical"
