"""What the always-on reliability checks cost: the collective signature check (issue #20
item 2) and the per-window straggler attribution (item 3), each measured on and off in the
same run, in alternating timed windows (so drift on a shared machine hits both sides alike).

    # CPU micro-benchmark: µs per allreduce with the signature check on vs off
    mpiexec -n 2 python benchmarks/reliability_overhead.py micro
    # A training step (ResNet-50 on GPU, one rank per GPU): ms/step, check on vs off, and
    # straggler attribution every --log-every steps vs none
    mpirun -n 2 python benchmarks/reliability_overhead.py step --model resnet50 --batch 64 \\
        --size 224 --precision bf16

Prints one line per measurement (rank 0); --out appends JSON lines.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
from mpi4py import MPI

from mpinet import backend
from mpinet.comm import create_communicator
from mpinet.parallel.straggler import StragglerWatch


def alternate(run_on, run_off, repeats):
    """Median seconds of ``repeats`` windows of each, on/off interleaved."""
    on, off = [], []
    for _ in range(repeats):
        for fn, out in ((run_on, on), (run_off, off)):
            MPI.COMM_WORLD.Barrier()
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return statistics.median(on), statistics.median(off)


def emit(comm, rec, text, out):
    if comm.rank != 0:
        return
    print(text, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")


def micro(a):
    comm = create_communicator("mpi", timeout_s=120)
    for n in a.elements:
        x = np.ones(n, np.float32)

        def window(check, x=x):
            def run():
                comm.check = check
                for _ in range(a.iters):
                    comm.allreduce(x, out=x)
            return run

        window(True)()  # warm-up
        on, off = alternate(window(True), window(False), a.repeats)
        per_on, per_off = on / a.iters * 1e6, off / a.iters * 1e6
        rec = {"bench": "signature_check_micro", "ranks": comm.size, "elements": n,
               "us_per_allreduce_check_on": per_on, "us_per_allreduce_check_off": per_off,
               "us_overhead": per_on - per_off}
        emit(comm, rec, f"allreduce of {n} float32 on {comm.size} ranks: {per_on:.1f} us with "
                        f"the signature check, {per_off:.1f} us without: +{per_on - per_off:.1f} "
                        f"us per collective", a.out)
    comm.check = True
    watch = StragglerWatch(comm)
    t = time.perf_counter()
    for i in range(a.iters):
        watch.window_end(i, i)
    per = (time.perf_counter() - t) / a.iters * 1e6
    emit(comm, {"bench": "straggler_window_micro", "ranks": comm.size, "us_per_window": per},
         f"straggler attribution: {per:.1f} us per logging window on {comm.size} ranks", a.out)
    comm.close()


def step(a):
    import train_bench

    tb = train_bench.parser().parse_args(
        ["--model", a.model, "--batch", str(a.batch), "--size", str(a.size),
         "--precision", a.precision, "--device", a.device, "--comm", a.comm])
    comm, be, model, x, y, global_count = train_bench.setup(tb)
    watch = StragglerWatch(comm)

    def steps(check, stragglers):
        def run():
            comm.check = check
            for i in range(a.steps):
                model.train_step(x, y, global_count)
                if stragglers and (i + 1) % a.log_every == 0:
                    watch.window_end(i, i)
            model.dp.synchronize()
            backend.synchronize()
        return run

    for _ in range(a.warmup):
        model.train_step(x, y, global_count)
    model.dp.synchronize()
    backend.synchronize()
    for name, on_fn, off_fn in (
            ("signature check", steps(True, False), steps(False, False)),
            (f"straggler attribution every {a.log_every} steps", steps(True, True),
             steps(True, False))):
        on, off = alternate(on_fn, off_fn, a.repeats)
        ms_on, ms_off = on / a.steps * 1e3, off / a.steps * 1e3
        rec = {"bench": "reliability_step", "what": name, "model": a.model, "batch": a.batch,
               "size": a.size, "precision": a.precision, "ranks": comm.size, "device": str(be),
               "comm": comm.name, "ms_per_step_on": ms_on, "ms_per_step_off": ms_off,
               "overhead_pct": (ms_on / ms_off - 1) * 100}
        emit(comm, rec, f"{a.model} {a.precision} batch {a.batch} on {comm.size} x {be}: {name}: "
                        f"{ms_on:.2f} ms/step on, {ms_off:.2f} off ({rec['overhead_pct']:+.2f}%)",
             a.out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("micro")
    m.add_argument("--elements", type=int, nargs="+", default=[1, 1024, 262144])
    m.add_argument("--iters", type=int, default=2000)
    m.add_argument("--repeats", type=int, default=7)
    m.add_argument("--out")
    s = sub.add_parser("step")
    s.add_argument("--model", default="resnet50")
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--size", type=int, default=224)
    s.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    s.add_argument("--device", default="auto")
    s.add_argument("--comm", default="auto")
    s.add_argument("--steps", type=int, default=30)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--warmup", type=int, default=10)
    s.add_argument("--log-every", type=int, default=10)
    s.add_argument("--out")
    a = p.parse_args()
    micro(a) if a.mode == "micro" else step(a)


if __name__ == "__main__":
    main()
