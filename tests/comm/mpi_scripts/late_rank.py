"""Rank 1 arrives late at an allreduce; rank 0 must time out and abort with a report."""
import sys
import time

import numpy as np

from mpinet.comm import create_communicator

comm = create_communicator(sys.argv[1])  # timeout from $MPINET_COMM_TIMEOUT
comm.allreduce(np.ones(4, np.float32))  # one matched collective first: seq #1
if comm.rank == 1:
    time.sleep(float(sys.argv[2]))
comm.allreduce(np.ones(1234, np.float32))
print(f"rank {comm.rank} finished: the test expected rank 0 to time out first", flush=True)
