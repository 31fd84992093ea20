"""Run every bad-input case through mpinet.train.main on each rank of one job (under
mpiexec), recording per rank the exit code and what it printed to stderr, as JSON in argv[2].
argv[1]: a directory for the cases' files (made by rank 0). Also one fake-GPU case: this node
claims 1 GPU, so 2 ranks oversubscribe it."""
import contextlib
import io
import json
import os
import sys

from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bad_input_cases import BASE, make_cases

from mpinet import backend, train
from mpinet.training.preemption import PreemptionFlag

world = MPI.COMM_WORLD
tmp, out_path = sys.argv[1], sys.argv[2]
cases = make_cases(tmp) if world.Get_rank() == 0 else None
cases = world.bcast(cases, root=0)
PreemptionFlag.install = lambda self: None  # leave this process's signal handlers alone
cases["gpu-oversubscribed"] = (["--device", "auto"], "2 ranks on host")


def run(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = train.main(BASE + argv)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


results = {}
for name, (argv, _) in cases.items():
    if name == "gpu-oversubscribed":
        real = backend.gpu_count, backend.gpu_identity
        backend.gpu_count = lambda: 1  # this node "has" one GPU, which both ranks would use
        backend.gpu_identity = lambda local_rank: "0000:3B:00.0"
        results[name] = run(argv)
        backend.gpu_count, backend.gpu_identity = real
    else:
        results[name] = run(argv)
with open(f"{out_path}.{world.Get_rank()}", "w") as f:
    json.dump({"expected": {k: v[1] for k, v in cases.items()}, "results": results}, f)
