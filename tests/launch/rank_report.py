"""Tiny MPI program for the launch/ tests: checks an allreduce of ranks and reports placement.

Rank 0 prints one line per rank (gathered, so launchers cannot interleave them): world rank/size,
node-local rank from Split_type(COMM_TYPE_SHARED)
(what mpinet uses to pick a GPU), and the launcher's own local-rank variable if it sets one.
"""
import os
import sys

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
total = comm.allreduce(rank, op=MPI.SUM)
if total != size * (size - 1) // 2:
    print(f"rank {rank}: allreduce of ranks gave {total}, expected {size * (size - 1) // 2}",
          file=sys.stderr, flush=True)
    comm.Abort(2)
local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
launcher_local = next((os.environ[v] for v in ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                                                "SLURM_LOCALID") if v in os.environ), "-")
line = (f"rank {rank}/{size} local {local.Get_rank()}/{local.Get_size()} "
        f"launcher_local {launcher_local} args {sys.argv[1:]} "
        f"NCCL_NVLS_ENABLE={os.environ.get('NCCL_NVLS_ENABLE')} "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}")
lines = comm.gather(line, root=0)
if rank == 0:
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
