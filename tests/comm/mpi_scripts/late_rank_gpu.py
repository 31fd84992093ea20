"""GPU: rank 1 arrives late; rank 0 blocks on the GPU (stream sync) inside an NCCL collective.
The watchdog (nccl) or the staged wait (hierarchical) must abort the job with a report."""
import sys
import time

from mpi4py import MPI

from mpinet import backend
from mpinet.comm import create_communicator

local = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED, key=MPI.COMM_WORLD.Get_rank())
cp = backend.select_device(local.Get_rank(), device="gpu").xp
comm = create_communicator(sys.argv[1])  # timeout from $MPINET_COMM_TIMEOUT
comm.allreduce(cp.ones(4, cp.float32))
cp.cuda.get_current_stream().synchronize()
if comm.rank == 1:
    time.sleep(float(sys.argv[2]))
y = comm.allreduce(cp.ones(1234, cp.float32))
cp.cuda.get_current_stream().synchronize()  # rank 0 blocks here until the GPU finishes
print(f"rank {comm.rank} finished: the test expected rank 0 to time out first", flush=True)
