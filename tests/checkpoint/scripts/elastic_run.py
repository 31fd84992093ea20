"""Train the checkpoint tests' MLP under mpiexec, resuming from DIR if it holds a checkpoint,
and record which samples each rank was handed (for the elastic-resume test).

    mpiexec -n 4 python elastic_run.py DIR OUT.json --stop-at 4   # SIGTERM on the last rank
    mpiexec -n 2 python elastic_run.py DIR OUT.json               # resume auto, finish

Rank 0 writes OUT.json: world size, final step, whether preempted, a weight checksum, and every
batch handed out as [rank, epoch, offset, indices]. Batches are recorded by the transform, which
the loader calls ahead of training (prefetch): the test keeps those the checkpoint says were
trained.
"""
import argparse
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from ckpt_helpers import build_model, dataset, weights
from mpinet.training.callbacks import Callback


class RecordBatches:
    """A loader transform that changes nothing and notes each batch's indices."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, y, batch):
        self.batches.append([int(batch.epoch), int(batch.offset), batch.indices.tolist()])
        return x, y


class SignalAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_batch_end(self, step: int, logs: dict) -> None:
        if step == self.step and self.model.comm.rank == self.model.comm.size - 1:
            os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("directory")
    p.add_argument("out")
    p.add_argument("--stop-at", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()

    model = build_model()
    record = RecordBatches()
    callbacks = [SignalAt(args.stop_at)] if args.stop_at else []
    model.fit(dataset(), epochs=args.epochs, batch_size=4, verbose=False, log_every=1,
              transform=record, callbacks=callbacks, checkpoint_dir=args.directory,
              resume="auto")
    comm = model.comm
    gathered = comm.allgather_obj(record.batches)
    if comm.rank == 0:
        w = weights(model)
        report = {
            "world_size": comm.size,
            "global_step": model.global_step,
            "preempted": model.preempted,
            "finite": bool(all(np.all(np.isfinite(v)) for v in w.values())),
            "weights_sum": float(sum(np.abs(v.astype(np.float64)).sum() for v in w.values())),
            "batches": [[r] + b for r, batches in enumerate(gathered) for b in batches],
        }
        with open(args.out, "w") as f:
            json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
