"""Preflight of a multi-rank job: who runs where, on what, with which libraries, and how fast.

    mpirun -n 8 python -m mpinet.comm.check                  # facts, checks, bandwidth
    mpirun -n 8 python -m mpinet.comm.check --comm mpi,hierarchical --size-mb 64
    python -m mpinet.train --preflight ...                    # the same before training

Every rank reports its host, process, GPU (PCI bus id), NCCL / MPI / NumPy / CuPy / Python
versions and network interfaces; rank 0 prints the table and checks it for the classic mistakes:
  * several ranks driving one GPU (a launcher that did not bind GPUs, CUDA_VISIBLE_DEVICES set
    to the same card for every rank);
  * some ranks with a GPU and others without;
  * library versions that differ between ranks (MPI, NCCL, CuPy, NumPy, Python, mpinet);
  * a NCCL_SOCKET_IFNAME naming an interface a host does not have;
  * a rank that cannot reach the others: every pair exchanges a message within a deadline; a
    rank that misses one ends the job naming itself, its host and the silent rank.
Then it times an allreduce per communicator and prints algorithm and bus bandwidth in GB/s
(busbw = 2(n-1)/n x bytes / time, as nccl-tests report it).

Exit status: 0 when every check passed, 1 when one failed (the table says which).
"""
from __future__ import annotations

import argparse
import fcntl
import os
import platform
import socket
import struct
import sys
import time

import numpy as np

from mpinet import backend

SIOCGIFADDR = 0x8915


class PreflightError(RuntimeError):
    """A check failed; the message lists every problem found."""


def interfaces() -> dict[str, str]:
    """This host's network interfaces: name -> IPv4 address ('' when it has none)."""
    out = {}
    for _, name in socket.if_nameindex():
        addr = ""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR,
                                     struct.pack("256s", name.encode()[:15]))
                addr = socket.inet_ntoa(packed[20:24])
            except OSError:
                pass
        out[name] = addr
    return out


def _gpu_facts() -> dict | None:
    be = backend.current()
    if not be.is_gpu:
        return None
    cp = be.xp
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    try:
        from cupy.cuda import nccl

        nccl_version = str(nccl.get_version())
    except Exception:  # CuPy without NCCL: reported, checked for consistency
        nccl_version = "none"
    return {"device": dev.id, "pci_bus_id": dev.pci_bus_id, "name": name,
            "nccl": nccl_version, "cupy": cp.__version__,
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES", "(all)")}


def local_facts(rank: int) -> dict:
    """What this rank can say about itself."""
    from mpi4py import MPI

    from mpinet import __version__

    return {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(),
            "mpi": " ".join(MPI.Get_library_version().splitlines()[0].split()),
            "python": platform.python_version(), "numpy": np.__version__, "mpinet": __version__,
            "gpu": _gpu_facts(), "interfaces": interfaces(),
            "nccl_socket_ifname": os.environ.get("NCCL_SOCKET_IFNAME", "")}


def _ranks(rs) -> str:
    return ", ".join(str(r) for r in rs)


def problems(facts: list[dict]) -> list[str]:
    """The classic mistakes found in every rank's facts (index = rank); [] when none."""
    found = []
    with_gpu = [f["rank"] for f in facts if f["gpu"]]
    if with_gpu and len(with_gpu) != len(facts):
        without = [f["rank"] for f in facts if not f["gpu"]]
        found.append(f"ranks {_ranks(without)} have no GPU while ranks {_ranks(with_gpu)} do")
    shared: dict[tuple, list[int]] = {}
    for f in facts:
        if f["gpu"]:
            shared.setdefault((f["host"], f["gpu"]["pci_bus_id"]), []).append(f["rank"])
    for (host, bus), rs in sorted(shared.items()):
        if len(rs) > 1:
            found.append(f"ranks {_ranks(rs)} on host {host} all use the GPU at PCI {bus}: bind "
                         f"one GPU per rank (mpinet picks GPU = node-local rank; do not set "
                         f"CUDA_VISIBLE_DEVICES to one card for every rank)")
    keys = [("mpi", lambda f: f["mpi"]), ("python", lambda f: f["python"]),
            ("numpy", lambda f: f["numpy"]), ("mpinet", lambda f: f["mpinet"]),
            ("nccl", lambda f: f["gpu"]["nccl"] if f["gpu"] else None),
            ("cupy", lambda f: f["gpu"]["cupy"] if f["gpu"] else None)]
    for what, get in keys:
        by_value: dict[str, list[int]] = {}
        for f in facts:
            v = get(f)
            if v is not None:
                by_value.setdefault(v, []).append(f["rank"])
        if len(by_value) > 1:
            parts = "; ".join(f"{v!r} on ranks {_ranks(rs)}" for v, rs in by_value.items())
            found.append(f"{what} versions differ between ranks: {parts}; install the same "
                         f"environment on every host")
    for f in facts:
        want = f["nccl_socket_ifname"]
        if want and f["gpu"]:
            names = [n for n in want.lstrip("^=").split(",") if n]
            if not want.startswith("^") and not any(
                    i == n or i.startswith(n) for n in names for i in f["interfaces"]):
                found.append(f"NCCL_SOCKET_IFNAME={want} but host {f['host']} (rank {f['rank']})"
                             f" has only {sorted(f['interfaces'])}")
    return found


REACH_TAG = 7


def reachability(mpi_comm, timeout_s: float = 10.0) -> list[str]:
    """Every rank sends one message to every other; returns the ones this rank did not receive
    within ``timeout_s`` (point to point only: nothing here can hang on an unreachable peer).
    Receives still open at the deadline are cancelled."""
    from mpi4py import MPI

    rank, size = mpi_comm.Get_rank(), mpi_comm.Get_size()
    out = np.full(1, rank, np.int64)
    got = {r: np.full(1, -1, np.int64) for r in range(size) if r != rank}
    recvs = {r: mpi_comm.Irecv(buf, source=r, tag=REACH_TAG) for r, buf in got.items()}
    sends = [mpi_comm.Isend(out, dest=r, tag=REACH_TAG) for r in range(size) if r != rank]
    reqs = list(recvs.values()) + sends
    deadline = time.monotonic() + timeout_s
    while not MPI.Request.Testall(reqs) and time.monotonic() < deadline:
        time.sleep(0.001)
    missing = [r for r, req in recvs.items() if got[r][0] != r]
    for r in missing:
        recvs[r].Cancel()
        recvs[r].Wait()
    host = socket.gethostname()
    return [f"rank {rank} (host {host}) got nothing from rank {r} within {timeout_s:g} s"
            for r in missing]


def bandwidth(comm, size_mb: float, iters: int, dtype=np.float32) -> tuple[float, float, float]:
    """(seconds per allreduce, algbw GB/s, busbw GB/s) of an in-place allreduce of size_mb MiB."""
    xp = backend.current().xp
    n = max(1, int(size_mb * (1 << 20)) // np.dtype(dtype).itemsize)
    x = xp.ones(n, dtype=dtype)
    comm.allreduce(x, out=x)  # warm-up: connections, buffers, NCCL channels
    comm.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        comm.allreduce(x, out=x)
    comm.barrier()
    per = (time.perf_counter() - start) / iters
    # The slowest rank decides.
    per = comm.allreduce_obj(per, op="max")
    nbytes = x.nbytes
    alg = nbytes / per / 1e9
    bus = alg * 2 * (comm.size - 1) / comm.size if comm.size > 1 else alg
    return per, alg, bus


def format_table(facts: list[dict]) -> str:
    lines = ["rank  host             pid      GPU                         NCCL      MPI"]
    for f in facts:
        g = f["gpu"]
        gpu = f"{g['device']} {g['pci_bus_id']}" if g else "-"
        lines.append(f"{f['rank']:<5} {f['host']:<16} {f['pid']:<8} {gpu:<27} "
                     f"{g['nccl'] if g else '-':<9} {f['mpi'][:40]}")
    hosts = {}
    for f in facts:
        hosts.setdefault(f["host"], f["interfaces"])
    for h, ifs in hosts.items():
        lines.append(f"host {h}: interfaces " + ", ".join(f"{n} {a or '(no IPv4)'}"
                                                           for n, a in sorted(ifs.items())))
    return "\n".join(lines)


def preflight(mpi_comm, comm_names=(), size_mb: float = 16.0, iters: int = 5,
              reach_timeout_s: float = 10.0, out=print) -> list[str]:
    """Run every check on all ranks (collective); rank 0 prints with ``out``. Returns the
    problems found (the same list on every rank). Bandwidth for each name in ``comm_names``."""
    from mpinet.comm import create_communicator

    from mpinet.comm import failure

    rank = mpi_comm.Get_rank()
    # Point to point first: every collective below would hang on a rank that cannot be reached,
    # so a rank that misses a peer ends the job here, naming both.
    unreachable = reachability(mpi_comm, reach_timeout_s)
    if unreachable:
        failure.abort("preflight: " + "; ".join(unreachable) + ". The ranks cannot reach each "
                      "other: check the interface MPI and NCCL use (FI_TCP_IFACE, "
                      "UCX_NET_DEVICES, NCCL_SOCKET_IFNAME in slurm/config.sh) and firewalls",
                      mpi_comm=mpi_comm)
    facts = mpi_comm.allgather(local_facts(rank))
    found = problems(facts)
    if rank == 0:
        out(f"[preflight] {len(facts)} rank(s) on {len({f['host'] for f in facts})} host(s)")
        out(format_table(facts))
    for name in comm_names:
        comm = create_communicator(name, mpi_comm)
        per, alg, bus = bandwidth(comm, size_mb, iters)
        if rank == 0:
            out(f"[preflight] {comm.name} allreduce of {size_mb:g} MiB float32: "
                f"{per * 1e3:.2f} ms, algbw {alg:.3f} GB/s, busbw {bus:.3f} GB/s "
                f"({comm.size} ranks, {comm.num_nodes} node(s))")
        comm.close()
    if rank == 0:
        for p in found:
            out(f"[preflight] PROBLEM: {p}")
        out("[preflight] all checks passed" if not found else
            f"[preflight] {len(found)} problem(s) found")
    return found


def default_comms() -> list[str]:
    return ["nccl", "hierarchical"] if backend.current().is_gpu else ["mpi", "hierarchical"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mpinet.comm.check",
                                description=__doc__.split("\n")[0])
    p.add_argument("--comm", default=None,
                   help="comma list of communicators to time (default: nccl,hierarchical on "
                        "GPU; mpi,hierarchical on CPU); 'none' skips the bandwidth test")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    p.add_argument("--size-mb", type=float, default=64.0, help="allreduce size in MiB")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--reach-timeout", type=float, default=10.0,
                   help="seconds each rank waits for a message from every other rank")
    args = p.parse_args(argv)
    from mpi4py import MPI

    from mpinet.comm import IMPLS, topology
    from mpinet.comm.failure import install_abort_handler

    world = MPI.COMM_WORLD
    install_abort_handler(world)
    topo, local, cross = topology.build(world)
    local.Free()
    cross.Free()
    backend.select_device(topo.local_rank, args.device)
    names = default_comms() if args.comm is None else \
        [] if args.comm == "none" else [c.strip() for c in args.comm.split(",") if c.strip()]
    bad = [c for c in names if c not in IMPLS]
    if bad:
        if world.Get_rank() == 0:
            print(f"mpinet.comm.check: --comm {bad} unknown; use {', '.join(IMPLS)}",
                  file=sys.stderr)
        return 2
    found = preflight(world, names, args.size_mb, args.iters, args.reach_timeout,
                      out=lambda s: print(s, flush=True))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
