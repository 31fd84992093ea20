"""Keras-style callbacks for ``Model.fit``. They run on every rank with the same (globally
reduced) logs, so decisions such as early stopping are identical everywhere and no rank is left
waiting in a collective the others skipped."""
from __future__ import annotations

import json
import math
import os


class Callback:
    model = None  # set by Model.fit

    def on_train_begin(self, logs: dict) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict) -> None: ...
    def on_batch_end(self, step: int, logs: dict) -> None:
        """After every optimizer step; ``logs`` are the latest logging window's figures."""
    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...
    def on_train_end(self, logs: dict) -> None: ...


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0,
                 mode: str = "auto"):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping mode must be auto, min or max, got {mode!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, abs(min_delta)
        self.mode = (("max" if "acc" in monitor or "iou" in monitor else "min")
                     if mode == "auto" else mode)
        self.best = -math.inf if self.mode == "max" else math.inf
        self.wait = 0
        self.stopped_epoch = None

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r} but the epoch logs have "
                           f"{sorted(logs)}; pass validation_data or monitor one of those")
        value = logs[self.monitor]
        better = (value > self.best + self.min_delta) if self.mode == "max" else \
                 (value < self.best - self.min_delta)
        if better:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                self.model.stop_training = True


class LearningRateScheduler(Callback):
    """Set the learning rate at each epoch start from ``schedule(epoch, lr) -> lr``."""

    def __init__(self, schedule):
        self.schedule = schedule

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        self.model.optimizer.lr = float(self.schedule(epoch, self.model.optimizer.lr))


class ModelCheckpoint(Callback):
    """Save a full training checkpoint every ``every_steps`` steps and at each epoch end."""

    def __init__(self, directory: str, every_steps: int = 0, keep: int = 3):
        self.directory, self.every_steps, self.keep = directory, int(every_steps), int(keep)

    def on_batch_end(self, step: int, logs: dict) -> None:
        if self.every_steps and step % self.every_steps == 0:
            self.model.save_checkpoint(self.directory, keep=self.keep)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self.model.save_checkpoint(self.directory, keep=self.keep)


class MetricsLogger(Callback):
    """Append one JSON line per logged step and per epoch to ``path`` (rank 0 writes)."""

    def __init__(self, path: str, every_steps: int = 10):
        self.path, self.every_steps = path, max(1, int(every_steps))

    def _write(self, record: dict) -> None:
        if self.model.comm.rank != 0:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_batch_end(self, step: int, logs: dict) -> None:
        if step % self.every_steps == 0 and logs:
            self._write({"kind": "step", "step": step, **logs})

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self._write({"kind": "epoch", "epoch": epoch, **logs})
