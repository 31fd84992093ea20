"""Wall time of the README's default training command, 1 process vs N ranks, in a clean
environment (no OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS: what a new user has),
so the thread budget of mpinet/threads.py is what sizes each rank's BLAS pool.

    python benchmarks/thread_budget.py                        # -n 1 and -n 2, 3 runs each
    python benchmarks/thread_budget.py --ranks 1 2 4 8 --repeats 3 --unbudgeted

--unbudgeted also times each rank count with OMP_NUM_THREADS = all the node's cores per rank,
what BLAS did on its own before the budget (the issue #22 slowdown). Prints min and median wall
seconds per configuration (start-up included: interpreter, MPI, imports, data).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def clean_env(extra=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def time_run(ranks: int, train_args: list[str], env: dict, timeout: float) -> float:
    cmd = [sys.executable, "-m", "mpinet.train", "--quiet", *train_args]
    if ranks > 1:
        cmd = ["mpiexec", "-n", str(ranks), *cmd]
    t = time.perf_counter()
    proc = subprocess.run(
        cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--unbudgeted",
        action="store_true",
        help="also time OMP_NUM_THREADS=<all cores> per rank (the old behaviour)",
    )
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("train_args", nargs="*", help="extra flags for mpinet.train (after --)")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(
        f"{cores} cores; default run `python -m mpinet.train` (+ {args.train_args}); "
        f"{args.repeats} runs each; wall seconds"
    )
    configs = [("budget", {})]
    if args.unbudgeted:
        configs.append((f"OMP_NUM_THREADS={cores}", {"OMP_NUM_THREADS": str(cores)}))
    for label, extra in configs:
        for n in args.ranks:
            times = [
                time_run(n, args.train_args, clean_env(extra), args.timeout)
                for _ in range(args.repeats)
            ]
            print(
                f"-n {n} [{label}]: min {min(times):.2f} s, "
                f"median {statistics.median(times):.2f} s "
                f"({', '.join(f'{t:.2f}' for t in times)})",
                flush=True,
            )


if __name__ == "__main__":
    main()
