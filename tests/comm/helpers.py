"""Shared pieces of the comm tests: communicators under test and rank-derived inputs."""
import contextlib
import os

import numpy as np
import pytest

# (impl, emulated nodes): None = real topology; "all" = one emulated node per rank.
CPU_LAYOUTS = [("mpi", None), ("hierarchical", None), ("hierarchical", 2), ("hierarchical", "all")]


def layout_id(layout):
    impl, nodes = layout
    return impl if nodes is None else f"{impl}-{nodes}nodes"


@contextlib.contextmanager
def communicator(impl, nodes, size, **kwargs):
    """A communicator with MPINET_EMULATE_NODES set only while it is built; closed afterwards."""
    from mpinet.comm import create_communicator

    if nodes == "all":
        nodes = size
    if nodes is not None and size % nodes:
        pytest.skip(f"{size} ranks do not split into {nodes} emulated nodes")
    with pytest.MonkeyPatch.context() as mp:
        if nodes is None:
            mp.delenv("MPINET_EMULATE_NODES", raising=False)
        else:
            mp.setenv("MPINET_EMULATE_NODES", str(nodes))
        comm = create_communicator(impl, timeout_s=kwargs.pop("timeout_s", 60), **kwargs)
    try:
        yield comm
    finally:
        comm.close()


def ramp(n, rank, dtype, xp=np):
    """x[i] = (rank + 1) * (i % 7 + 1): small integers, exact in every tested dtype."""
    return ((rank + 1) * (xp.arange(n) % 7 + 1)).astype(dtype)


def ramp_sum(n, size, dtype=np.float64):
    """The sum over ranks of ramp(n, rank): size(size+1)/2 * (i % 7 + 1)."""
    return (size * (size + 1) // 2 * (np.arange(n) % 7 + 1)).astype(dtype)


def mpi_env():
    """The environment for a child mpiexec: our own, minus the PMI variables of any parent."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "MPIR_CVAR_CH", "OMPI_COMM_WORLD"))}
