"""A training-like loop of collectives in which one rank fails on purpose; run under mpiexec.

    python fault_job.py IMPL FAULT VICTIM WHEN
      FAULT  stop (SIGSTOP) | kill (SIGKILL) | sleep (a long pause, a stand-in for a straggler
             that is alive: its heartbeat keeps moving)
      VICTIM the rank that fails
      WHEN   "call:N"  fail right before the victim's N-th bounded wait (deterministic: every
                       wait point of the loop, object collectives included, can be hit)
             "time:S"  fail S seconds after start, wherever the victim happens to be
             "exit"    fail after the last collective: the others must not hang at exit

Each iteration does what a training step and its logging do: an array allreduce (a gradient
bucket), allreduce_obj of a NumPy array (the metrics window), allgather_obj (the pre-emption
flag) and every few steps a bcast_obj. The survivors must end the job with a report; a
"finished" line means they did not.
"""
import os
import signal
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from mpinet.comm import create_communicator
from mpinet.comm.failure import install_abort_handler

impl, fault, victim, when = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
install_abort_handler()
# MPICH's launcher, run with -disable-auto-cleanup, tells survivors of a dead rank with SIGUSR1,
# whose default action would end them silently. mpinet.train catches it (pre-emption flag);
# do the same here so the survivors live to name the dead rank.
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
comm = create_communicator(impl)
if os.environ.get("FAULT_JOB_AS_IF_REMOTE") == "1":
    # As if every peer ran on another host: no look at its process, only its heartbeat.
    comm._tracker.process_state = lambda rank: ""


def fail():
    if fault == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        time.sleep(3600)


if when == "exit":
    comm.barrier()
    if comm.rank == victim:
        fail()
    print(f"rank {comm.rank} leaving", flush=True)
    sys.exit(0)

if comm.rank == victim:
    kind, _, value = when.partition(":")
    if kind == "call":
        target, calls = int(value), [0]
        original = comm._poll_bounded

        def counting_poll(reqs, info):
            calls[0] += 1
            if calls[0] == target:
                fail()
            return original(reqs, info)

        comm._poll_bounded = counting_poll
    else:
        threading.Timer(float(value), fail).start()

grad = np.ones(1000, np.float32)
deadline = time.monotonic() + 30
step = 0
while time.monotonic() < deadline:
    comm.allreduce(grad, op="mean", out=grad)
    comm.allreduce_obj(np.array([1.0, 2.0]), op="sum")
    comm.allgather_obj(None)
    if step % 3 == 0:
        comm.bcast_obj({"step": step}, root=0)
    step += 1
print(f"rank {comm.rank} finished {step} steps: no fault was detected", flush=True)
