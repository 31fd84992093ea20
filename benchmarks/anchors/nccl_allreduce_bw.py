"""Anchor: raw allreduce bus bandwidth through cupy.cuda.nccl, one MPI rank per GPU.

  mpirun --allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE=0 -n 2 python3 benchmarks/anchors/nccl_allreduce_bw.py
busbw = 2(n-1)/n * bytes / time, the figure nccl-tests reports.
"""
import time
import cupy as cp, numpy as np
from cupy.cuda import nccl
from mpi4py import MPI

comm = MPI.COMM_WORLD; r, n = comm.rank, comm.size
cp.cuda.Device(r % cp.cuda.runtime.getDeviceCount()).use()
nc = nccl.NcclCommunicator(n, comm.bcast(nccl.get_unique_id() if r == 0 else None), r)
s = cp.cuda.Stream(non_blocking=True)
for mib in [1, 4, 16, 64, 256, 1024]:
    x = cp.ones(mib * 2**20 // 4, dtype=cp.float32)
    run = lambda: nc.allReduce(x.data.ptr, x.data.ptr, x.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, s.ptr)
    for _ in range(3): run()
    s.synchronize(); comm.Barrier(); it = 20; t = time.perf_counter()
    for _ in range(it): run()
    s.synchronize(); dt = (time.perf_counter() - t) / it
    if r == 0:
        print(f"raw-nccl allreduce {mib:5d} MiB {dt * 1e3:8.3f} ms busbw {2 * (n - 1) / n * x.nbytes / dt / 1e9:7.1f} GB/s")
