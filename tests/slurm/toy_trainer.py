"""A tiny MPI program with the checkpoint/preemption contract of ``python -m mpinet.train``.

The slurm/ scripts are tested with it so that they are checked on their own, independent of the
real trainer (which the tests also run, when it imports). It keeps the parts of the contract the
scripts rely on:

* every rank checks an allreduce of its rank against size*(size-1)/2 (MPI really is wired up);
* ``--checkpoint-dir DIR``: checkpoints are ``DIR/step_XXXXXXXX.safetensors``; one is written at
  the end of training, so the newest file always holds the final weights;
* SIGUSR1 or SIGTERM on any rank: all ranks agree (an allreduce of the flag each step), write a
  checkpoint at the same step and exit 0;
* ``--resume auto``: continue from the newest checkpoint in DIR if there is one, else start fresh;
* ``--metrics FILE``: rank 0 appends one JSON line per step (written after the signal handlers are
  installed, so a non-empty file means the run can be preempted cleanly).

The "model" is a float64 vector updated by a deterministic, rank-dependent gradient averaged over
ranks, so an interrupted-and-resumed run must end bit-identical to an uninterrupted one.
"""
import argparse
import glob
import json
import os
import signal
import sys
import time

import numpy as np
from mpi4py import MPI
from safetensors.numpy import load_file, save_file

_stop_requested = False


def _request_stop(signum, frame):
    global _stop_requested
    _stop_requested = True


def _checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"step_{step:08d}.safetensors")


def _newest_checkpoint(directory: str):
    files = sorted(glob.glob(os.path.join(directory, "step_*.safetensors")))
    return files[-1] if files else None


def _gradient(w: np.ndarray, rank: int, step: int) -> np.ndarray:
    # w: (D,) -> (D,); a pull towards a rank- and step-dependent target.
    target = np.sin(np.arange(w.size) + 0.1 * step + rank)
    return w - target


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--step-time", type=float, default=0.25, help="seconds each step sleeps")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--resume", default=None, help="'auto' or a checkpoint path")
    p.add_argument("--metrics", default=None, help="JSON-lines file rank 0 appends to")
    args = p.parse_args(argv)

    signal.signal(signal.SIGUSR1, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    total = comm.allreduce(rank, op=MPI.SUM)
    if total != size * (size - 1) // 2:
        print(f"[toy rank {rank}] allreduce of ranks gave {total}, expected "
              f"{size * (size - 1) // 2} for {size} ranks", file=sys.stderr, flush=True)
        comm.Abort(2)
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    print(f"[toy rank {rank}/{size}] local rank {local.Get_rank()}/{local.Get_size()} on "
          f"{MPI.Get_processor_name()} allreduce ok", flush=True)

    w = np.random.default_rng(args.seed).standard_normal(16)  # w: (16,), same on every rank
    step = 0
    resume_from = args.resume
    if resume_from == "auto":
        resume_from = _newest_checkpoint(args.checkpoint_dir) if args.checkpoint_dir else None
    if resume_from:
        state = load_file(resume_from)
        w, step = state["w"], int(state["step"][0])
        if rank == 0:
            print(f"[toy] resumed from {resume_from} at step {step}", flush=True)

    def save(at_step: int) -> None:
        if rank == 0 and args.checkpoint_dir:
            os.makedirs(args.checkpoint_dir, exist_ok=True)
            path = _checkpoint_path(args.checkpoint_dir, at_step)
            save_file({"w": w, "step": np.array([at_step], dtype=np.int64)}, path)
            print(f"[toy] checkpoint {path}", flush=True)
        comm.Barrier()

    while step < args.steps:
        # Every rank learns whether any rank was signalled, so all stop at the same step.
        if comm.allreduce(int(_stop_requested), op=MPI.MAX):
            save(step)
            if rank == 0:
                print(f"[toy] stop requested: checkpointed at step {step}, exiting 0", flush=True)
            return 0
        grad = np.empty_like(w)
        comm.Allreduce(_gradient(w, rank, step), grad, op=MPI.SUM)
        w = w - args.lr * grad / size
        step += 1
        if rank == 0 and args.metrics:
            os.makedirs(os.path.dirname(os.path.abspath(args.metrics)), exist_ok=True)
            with open(args.metrics, "a") as f:
                f.write(json.dumps({"step": step,
                                    "loss": float(np.sum((grad / size) ** 2))}) + "\n")
        time.sleep(args.step_time)
    save(step)
    if rank == 0:
        print(f"[toy] finished {step} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
