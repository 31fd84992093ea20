"""Allreduce bus bandwidth of mpinet's communicators per message size (1 MiB .. 1 GiB).

busbw = 2(n-1)/n * bytes / time, the figure nccl-tests and benchmarks/anchors/nccl_allreduce_bw.py
report. Timed with the blocking ``comm.allreduce(x, out=x)``, the GPU stream synchronized at the
end of each timed loop. On GPU a raw cupy.cuda.nccl allreduce runs first in the same job, so
each row also shows the share of raw NCCL bandwidth it reaches.

GPU machine (one rank per GPU; hierarchical on 2 emulated nodes of 1 GPU each):
  mpirun --allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE=0 -n 2 \\
      python benchmarks/allreduce_bw.py --impls nccl,hierarchical --emulate-nodes 2
CPU smoke run:
  mpiexec -n 2 python benchmarks/allreduce_bw.py --impls mpi --max-mib 16
"""
import argparse
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from mpi4py import MPI

from mpinet import backend
from mpinet.comm import create_communicator


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impls", default=None,
                   help="comma list of mpi,nccl,hierarchical (default: nccl,hierarchical on GPU, "
                        "mpi on CPU)")
    p.add_argument("--min-mib", type=int, default=1)
    p.add_argument("--max-mib", type=int, default=1024)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--emulate-nodes", default=os.environ.get("MPINET_EMULATE_NODES"),
                   help="MPINET_EMULATE_NODES for the hierarchical communicator only "
                        "(default: the environment's)")
    p.add_argument("--seconds", type=float, default=1.0, help="target timed seconds per size")
    p.add_argument("--no-raw", action="store_true", help="skip the raw cupy.cuda.nccl reference")
    return p.parse_args()


def sizes_mib(lo, hi):
    """lo, 4 lo, 16 lo, ... up to hi: the sizes the raw NCCL reference prints."""
    s = lo
    while s <= hi:
        yield s
        s *= 4


@contextlib.contextmanager
def emulated_nodes(value):
    """$MPINET_EMULATE_NODES set to ``value`` (None: unset) while a communicator is built."""
    saved = os.environ.pop("MPINET_EMULATE_NODES", None)
    if value:
        os.environ["MPINET_EMULATE_NODES"] = str(value)
    try:
        yield
    finally:
        os.environ.pop("MPINET_EMULATE_NODES", None)
        if saved is not None:
            os.environ["MPINET_EMULATE_NODES"] = saved


def timed(run, sync, world, seconds):
    """Seconds per call of ``run``: 2 warm-ups, an iteration count agreed by all ranks."""
    for _ in range(2):
        run()
    sync()
    world.Barrier()
    t = time.perf_counter()
    run()
    sync()
    est = world.allreduce(time.perf_counter() - t, op=MPI.MAX)
    iters = max(3, min(50, int(seconds / max(est, 1e-6))))
    world.Barrier()
    t = time.perf_counter()
    for _ in range(iters):
        run()
    sync()
    return world.allreduce((time.perf_counter() - t) / iters, op=MPI.MAX)


def raw_nccl(world, xp, dtype):
    """The reference: cupy.cuda.nccl allreduce on its own stream, as in
    benchmarks/anchors/nccl_allreduce_bw.py."""
    from cupy.cuda import nccl

    from mpinet.comm.nccl import NCCL_TYPES

    r, n = world.Get_rank(), world.Get_size()
    nc = nccl.NcclCommunicator(n, world.bcast(nccl.get_unique_id() if r == 0 else None), r)
    s = xp.cuda.Stream(non_blocking=True)
    t = NCCL_TYPES[dtype]

    def make(x):
        return lambda: nc.allReduce(x.data.ptr, x.data.ptr, x.size, t, 0, s.ptr)

    return make, s.synchronize


def main():
    args = parse_args()
    world = MPI.COMM_WORLD
    local = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
    be = backend.select_device(local.Get_rank())
    xp, n, rank = be.xp, world.Get_size(), world.Get_rank()
    impls = (args.impls or ("nccl,hierarchical" if be.is_gpu else "mpi")).split(",")
    dtype = backend.bfloat16() if args.dtype == "bfloat16" else np.dtype(args.dtype)
    itemsize = dtype.itemsize

    rows = {}  # (impl, MiB) -> seconds
    mibs = list(sizes_mib(args.min_mib, args.max_mib))
    if be.is_gpu and not args.no_raw:
        make, sync = raw_nccl(world, xp, args.dtype)
        for mib in mibs:
            x = xp.ones(mib * 2**20 // itemsize, dtype=dtype)
            rows["raw-nccl", mib] = timed(make(x), sync, world, args.seconds)
            del x
    for impl in impls:
        with emulated_nodes(args.emulate_nodes if impl == "hierarchical" else None):
            comm = create_communicator(impl)
        if rank == 0:
            t = comm.topology
            print(f"# {impl}: {t.size} ranks, {t.num_nodes} node(s) x {t.local_size}"
                  f"{' (emulated)' if t.emulated else ''}", flush=True)
        for mib in mibs:
            x = xp.ones(mib * 2**20 // itemsize, dtype=dtype)
            rows[impl, mib] = timed(lambda comm=comm, x=x: comm.allreduce(x, out=x),
                                    backend.synchronize, world, args.seconds)
            del x
        comm.close()

    if rank == 0:
        dev = f"{n} x {xp.cuda.runtime.getDeviceProperties(0)['name'].decode()}" if be.is_gpu \
            else f"{n} CPU ranks"
        print(f"# allreduce {args.dtype}, {dev}; busbw = 2(n-1)/n * bytes / time")
        print(f"{'impl':>14} {'size':>9} {'time ms':>10} {'busbw GB/s':>11} {'% raw':>7}")
        for (impl, mib), sec in rows.items():
            nbytes = mib * 2**20
            bw = 2 * (n - 1) / n * nbytes / sec / 1e9
            raw = rows.get(("raw-nccl", mib))
            share = f"{100 * raw / sec:6.1f}%" if raw and impl != "raw-nccl" else ""
            print(f"{impl:>14} {mib:>5} MiB {sec * 1e3:10.3f} {bw:11.1f} {share:>7}")


if __name__ == "__main__":
    main()
