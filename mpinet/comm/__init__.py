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
                     over MPI (device buffers if MPI is CUDA-aware, else pinned host memory in
                     chunks that overlap the copies with the network) -> allgather inside.
                     On CPU the same algorithm with MPI at both levels.
  * ``auto``         every rank on the CPU -> mpi; every rank with a GPU -> nccl, on any number
                     of nodes (NCCL crosses nodes by itself, over IB or sockets, and its
                     collectives can be captured in CUDA graphs); a mix -> an error naming the
                     ranks without a GPU. ``comm.choice`` says what was chosen and why (the
                     trainer prints it at start). ``hierarchical`` stays an explicit choice.

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

from mpinet import backend
from mpinet.comm import failure, topology
from mpinet.comm.base import CommError, Communicator, Handle, env_timeout_s, wait_all
from mpinet.comm.topology import Topology

IMPLS = ("auto", "mpi", "nccl", "hierarchical")

__all__ = ["create_communicator", "Communicator", "Handle", "wait_all", "Topology", "CommError"]


def create_communicator(impl: str = "auto", mpi_comm=None, timeout_s=None,
                        debug=None) -> Communicator:
    """A Communicator over ``mpi_comm`` (default COMM_WORLD). Collective: call on every rank.

    On GPU call ``backend.select_device(local_rank)`` first: NCCL binds to the current device.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {', '.join(IMPLS)}")
    if mpi_comm is None:
        from mpi4py import MPI

        mpi_comm = MPI.COMM_WORLD
    # Creating MPI communicators blocks with no timeout of its own: a timer bounds it.
    limit = float(timeout_s) if timeout_s is not None else env_timeout_s()
    with failure.deadline("communicator setup", limit, mpi_comm):
        layout = topology.build(mpi_comm)
        # Which ranks have a GPU: the choice must be the same on every rank.
        gpu_ranks = mpi_comm.allgather(bool(backend.current().is_gpu))
        if impl == "auto":
            impl, why = choose(layout[0], gpu_ranks)
        else:
            why = "asked for"
        if impl == "mpi":
            from mpinet.comm.mpi import MpiCommunicator as cls
        elif impl == "nccl":
            from mpinet.comm.nccl import NcclCommunicator as cls
        else:
            from mpinet.comm.hierarchical import HierarchicalCommunicator as cls
        comm = cls(mpi_comm, timeout_s=timeout_s, debug=debug, layout=layout)
    comm.choice = f"comm={impl} ({why}); {topology.describe(layout[0])}"
    return comm


def choose(topo: Topology, gpu_ranks) -> tuple[str, str]:
    """``auto``'s pick and the reason, from whether each rank (index = rank) has a GPU."""
    where = f"{topo.size} rank(s) on {topo.num_nodes} node(s)"
    if not any(gpu_ranks):
        return "mpi", f"auto: no rank has a GPU; {where}"
    if all(gpu_ranks):
        return "nccl", (f"auto: every rank has a GPU; {where}: NCCL inside and across nodes")
    missing = [r for r, g in enumerate(gpu_ranks) if not g]
    raise ValueError(f"comm 'auto': ranks {missing} have no GPU but the others do; every rank "
                     f"must use the same device kind. Give every rank a GPU (one per rank), or "
                     f"run all on the CPU (--device cpu)")
