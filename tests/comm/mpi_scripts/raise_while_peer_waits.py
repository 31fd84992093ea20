"""Rank 1 raises while rank 0 waits in an allreduce: the abort handler must end the job."""
import sys
import time

import numpy as np

from mpinet.comm import create_communicator
from mpinet.comm.failure import install_abort_handler

install_abort_handler()
comm = create_communicator(sys.argv[1])
if comm.rank == 1:
    time.sleep(0.5)  # rank 0 is inside the allreduce by now
    raise RuntimeError("deliberate failure on rank 1")
comm.allreduce(np.ones(1000, np.float32))
print("rank 0 finished the allreduce: the test expected the job to be aborted", flush=True)
