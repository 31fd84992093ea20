"""Allreduce in a loop until killed: the job a host failure must end. argv: impl, seconds."""
import faulthandler
import signal
import socket
import sys
import time

import numpy as np

from mpinet.comm import create_communicator
from mpinet.comm.failure import install_abort_handler

install_abort_handler()
faulthandler.register(signal.SIGUSR2)  # `kill -USR2 PID`: where a stuck rank is, on stderr
comm = create_communicator(sys.argv[1])
x = np.ones(100_000, np.float32)
if comm.rank == 0:  # what mpinet.train prints at start: which ranks run on which host
    print(f"mpinet: {comm.choice}", flush=True)
print(f"rank {comm.rank} on {socket.gethostname()} node {comm.node}/{comm.num_nodes}: looping",
      flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    comm.allreduce(x)
    time.sleep(0.01)
print(f"rank {comm.rank} finished: the test expected the job to be ended", flush=True)
