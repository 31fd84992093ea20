"""A Keras-like face for training: ``compile``, ``fit``, ``evaluate``, ``predict``, callbacks.

    net = mpinet.models.build_model("lenet5", num_classes=10)
    model = mpinet.Model(net)                     # picks up MPI: same code on 1 or N ranks
    model.compile(optimizer="sgd", lr=0.05, loss="cross_entropy", metrics=["accuracy"])
    history = model.fit(train_set, epochs=5, batch_size=64, validation_data=test_set)
    model.evaluate(test_set)                      # {"loss": ..., "accuracy": ...}, exact over ranks

This module is the face: the loop, logging, callbacks, evaluation, checkpoints; the update
sequence of a step is ``mpinet.training.step.TrainStep``'s. Under mpirun every rank runs this
same code: the sampler gives each rank its share of every global batch, DataParallel averages
gradients (overlapped with backprop), and every logged figure is a sum over ranks divided by a
global count, so 1, 2 or 4 ranks report the same numbers.
"""
from __future__ import annotations

import sys
import time

import numpy as np
from tqdm import tqdm

from .. import backend, checkpoint
from ..amp import Precision, autocast
from ..autograd import Variable, no_grad
from ..data import arrays as data_arrays
from ..data.loader import DataLoader
from ..data.sampler import DistributedSampler, ShardSampler
from ..nn.module import Module
from ..optim.clip import build_clipper
from ..optim.factory import build_optimizer
from ..parallel.data_parallel import DataParallel
from ..parallel.straggler import StragglerWatch
from . import state as training_states
from .callbacks import Callback, MetricsLogger, ModelCheckpoint
from .metrics import (LOSSES, METRICS, check_names, compute_loss,  # noqa: F401
                      logs_from_sums, metric_sums, reduce_sums)
from .preemption import PreemptionFlag
from .step import TrainStep


class History:
    def __init__(self):
        self.history: dict[str, list] = {}

    def append(self, logs: dict) -> None:
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)


def check_can_train(train, world_size: int, batch_size: int, accumulation_steps: int = 1) -> None:
    """Raise ValueError if ``Model.fit`` could not train on ``train`` at this world size. The
    CLI calls it before building anything, so every rank reports the same error up front."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0 samples per rank, got {batch_size}")
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    if len(train) < world_size:
        raise ValueError(f"{len(train)} training samples for {world_size} ranks: every rank "
                         f"needs at least one sample; use fewer ranks or more data")


class Model:
    # Seconds behind the median rank (per logging window) above which rank 0 warns; the
    # slowest rank and its lag are logged every window regardless (mpinet.parallel.straggler).
    straggler_warn: float | None = None

    def __init__(self, network: Module, comm=None):
        if comm is None:
            from ..comm import create_communicator

            comm = create_communicator("auto")
        # Each rank's BLAS pools sized to its cores (once per process; mpinet.threads).
        from ..threads import apply_thread_budget  # collective: needs the comm

        apply_thread_budget(getattr(comm, "mpi_comm", None), verbose=False)  # the CLIs print
        self.network = network.to(backend.current())
        self.comm = comm
        if comm.size > 1:
            # An uncaught error on one rank must end the job, not leave the other ranks waiting
            # in the next allreduce until the comm timeout: report the rank and MPI_Abort.
            from ..comm.failure import install_abort_handler

            install_abort_handler()
        self.optimizer = None
        self.schedule = None
        self.dp: DataParallel | None = None  # the rest is set by compile()
        self.trainstep: TrainStep | None = None
        self.precision: Precision | None = None
        self.loss_name = None
        self.metrics: tuple = ()
        self.label_smoothing = 0.0
        self.base_lr = None
        self.config = None  # the CLI's flags, recorded in each checkpoint's meta.json
        self.transform = None  # fit's training transform and the one evaluate/predict apply
        self.eval_transform = None
        self.preprocess = None  # mpinet.data.preprocess.Preprocess: input shape, normalisation
        self.class_names = None  # what the model file records (mpinet.training.model_file)
        self.checkpoint_dir = None
        self.keep_checkpoints = 3
        self.stop_training = False
        self.global_step = 0
        self.epoch = 0
        self.sampler = None
        self.loader = None
        self.preempted = None  # the signal name if fit stopped on preemption
        self.last_logs: dict = {}  # the latest logging window's figures
        self._compiled = False

    # ---- compile --------------------------------------------------------------------------
    def compile(self, optimizer="sgd", loss="cross_entropy", metrics=("accuracy",), *,
                lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                nesterov: bool = False, schedule=None, precision: str = "fp32",
                label_smoothing: float = 0.0, dp_mode: str = "backward", bucket_mb: float = 25.0,
                grad_dtype=None, cuda_graph: bool = False, clip_norm: float | None = None,
                clip_value: float | None = None) -> "Model":
        """Choose loss, metrics, optimizer (name or instance over ``model.parameters``), LR
        schedule (an mpinet.optim schedule, stepped once per optimizer step), precision
        ('fp32', 'bf16', 'fp16' with dynamic loss scaling) and the data-parallel mode.
        ``cuda_graph``: on GPU, replay each training step as one CUDA graph after a few eager
        steps (see mpinet.training.cuda_graph; refused with the reason where it would be wrong).
        ``clip_norm``/``clip_value``: clip the gradient by global norm / by value after the
        allreduce, before each update (mpinet.optim.clip; the same on every rank)."""
        check_names(loss, metrics)
        self.loss_name, self.metrics = loss, tuple(metrics)
        self.label_smoothing = float(label_smoothing)
        self.precision = Precision.parse(precision)  # validates the name
        self.dp = DataParallel(self.network, self.comm, bucket_mb=bucket_mb, mode=dp_mode,
                               grad_dtype=grad_dtype)
        if isinstance(optimizer, str):
            optimizer = build_optimizer(optimizer, self.dp.flat, lr=lr, momentum=momentum,
                                        weight_decay=weight_decay, nesterov=nesterov)
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        # A schedule object, or a factory(optimizer) -> schedule when the optimizer is built here.
        self.schedule = (schedule(optimizer)
                         if callable(schedule) and not hasattr(schedule, "step") else schedule)
        self.trainstep = TrainStep(self.network, self.dp, optimizer, self.comm,
                                   precision=self.precision, loss=loss, metrics=self.metrics,
                                   label_smoothing=self.label_smoothing,
                                   clip=build_clipper(clip_norm, clip_value, dp_mode),
                                   cuda_graph=cuda_graph)
        self._compiled = True
        return self

    @property
    def scaler(self):
        """fp16's LossScaler (None for fp32/bf16 or before compile)."""
        return self.trainstep.scaler if self.trainstep is not None else None

    def _require_compiled(self, what: str) -> None:
        if not self._compiled:
            raise RuntimeError(f"Model.{what}() needs compile() first (optimizer, loss, metrics)")

    # ---- one step -------------------------------------------------------------------------
    def train_step(self, x, y, global_count: int, accumulation_steps: int = 1) -> dict:
        """One optimizer step on this rank's share ``x, y`` of a global batch of
        ``global_count`` samples (see ``TrainStep``); returns device sums for logging."""
        sums = self.trainstep(x, y, global_count, accumulation_steps)
        self._after_step()
        return sums

    def _after_step(self) -> None:
        if self.schedule is not None:
            self.schedule.step()
        self.global_step += 1

    # ---- fit ------------------------------------------------------------------------------
    def fit(self, train, y=None, epochs: int = 1, batch_size: int = 32, validation_data=None,
            callbacks=(), seed: int = 0, shuffle: bool = True, transform=None, eval_transform=None,
            accumulation_steps: int = 1, log_every: int = 10, verbose: bool = True,
            metrics_file: str | None = None, checkpoint_dir: str | None = None,
            checkpoint_every: int = 0, keep_checkpoints: int = 3, resume=None,
            handle_preemption: bool = True, preemption_flag: "PreemptionFlag | None" = None,
            workers: int | None = None) -> History:
        """Train for ``epochs`` epochs of ``train``; ``batch_size`` per rank.

        ``train``: a dataset (ArrayDataset, a file-backed data set of mpinet.data.streaming /
        masks, TensorDataset, SequenceDataset, or anything with the protocol of
        mpinet.data.arrays), or NumPy inputs x of any rank with targets ``y`` (Keras'
        ``fit(x, y, ...)``); ``validation_data`` likewise a dataset or a tuple (x, y).
        ``workers``: decode processes for a file-backed set (None: the rank's cores minus one;
        mpinet.data.workers).

        transform: the training transform (augmentation + normalization, on the device);
        eval_transform: what evaluate/predict apply instead (the same normalization, no random
        augmentation). A model trained on normalized inputs must be evaluated on them too.
        resume: None, "auto" (newest good checkpoint in checkpoint_dir, if any) or a path.
        On SIGTERM/SIGUSR1 (any rank) all ranks save a checkpoint at the same step and return
        with ``model.preempted`` set; the caller exits 0 and a requeued job resumes exactly.
        ``preemption_flag``: a flag the caller installed earlier (so a signal during start-up
        is not lost); otherwise fit installs its own for its duration.
        """
        self._require_compiled("fit")
        train = data_arrays.as_dataset(train, y, "fit")
        data_arrays.check_targets(self.loss_name, train, "fit")
        if validation_data is not None:
            validation_data = data_arrays.as_dataset(validation_data, None,
                                                     "fit(validation_data=...)")
            data_arrays.check_targets(self.loss_name, validation_data, "fit(validation_data=...)")
        self._use_targets_of(train)
        check_can_train(train, self.comm.size, batch_size, accumulation_steps)
        self.sampler = DistributedSampler(len(train), batch_size, self.comm.rank, self.comm.size,
                                          seed=seed, shuffle=shuffle)
        # workers: decode processes for a file-backed data set (None: from the thread budget)
        self.loader = DataLoader(train, self.sampler, transform=transform, workers=workers)
        self.transform = transform
        self.eval_transform = eval_transform
        callbacks = list(callbacks)
        if metrics_file:
            callbacks.append(MetricsLogger(metrics_file, log_every))
        if checkpoint_dir:  # every `checkpoint_every` steps (0: none) and at each epoch end
            callbacks.append(ModelCheckpoint(checkpoint_dir, checkpoint_every, keep_checkpoints))
        for cb in callbacks:
            cb.model = self
        self.checkpoint_dir, self.keep_checkpoints = checkpoint_dir, keep_checkpoints
        if resume:
            self._resume(resume, checkpoint_dir)
        own_flag = preemption_flag is None
        flag = PreemptionFlag() if own_flag else preemption_flag
        if handle_preemption and own_flag:
            flag.install()
        history = History()
        self.stop_training = False
        self.preempted = None
        try:
            for cb in callbacks:
                cb.on_train_begin({})
            while self.sampler.epoch < epochs and not self.stop_training:
                epoch = self.sampler.epoch
                self.epoch = epoch
                for cb in callbacks:
                    cb.on_epoch_begin(epoch, {})
                logs = self._train_epoch(epoch, epochs, accumulation_steps, log_every, verbose,
                                         callbacks, flag)
                if self.preempted:
                    break
                if validation_data is not None:
                    logs.update({f"val_{k}": v for k, v in
                                 self.evaluate(validation_data,
                                               batch_size=max(batch_size, 256)).items()})
                if hasattr(self.schedule, "on_epoch_end"):  # ReduceLROnPlateau
                    self.schedule.on_epoch_end(logs)
                history.append(logs)
                if verbose and self.comm.rank == 0:
                    print(f"epoch {epoch + 1}/{epochs}: " +
                          ", ".join(f"{k} {v:.4g}" for k, v in logs.items()), flush=True)
                for cb in callbacks:
                    cb.on_epoch_end(epoch, logs)
            for cb in callbacks:
                cb.on_train_end({})
        finally:
            if own_flag:
                flag.uninstall()
            self.loader.close()
        self.dp.synchronize()
        return history

    def _train_epoch(self, epoch, epochs, accumulation_steps, log_every, verbose, callbacks,
                     flag) -> dict:
        # In a batch log (Slurm, CI: not a terminal) redraw rarely, or the bar floods the file.
        bar = tqdm(total=len(self.loader), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not verbose or self.comm.rank != 0, dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 30.0)
        totals: dict = {}
        window: dict = {}
        samples = window_samples = 0
        t_window = time.perf_counter()
        stragglers = StragglerWatch(self.comm, self.straggler_warn)
        window_first = self.global_step + 1
        self.network.train()
        n_steps = len(self.loader)
        for i, (x, y, global_count) in enumerate(self.loader):
            sums = self.train_step(x, y, global_count, accumulation_steps)
            for k, v in sums.items():
                window[k] = window.get(k, 0) + v
            window_samples += global_count
            step = self.global_step
            if step % log_every == 0 or i == n_steps - 1:
                # One host sync and one small allreduce per window, not per step.
                reduced = reduce_sums(self.comm, window)
                for k, v in reduced.items():
                    totals[k] = totals.get(k, 0.0) + v
                samples += window_samples
                dt = time.perf_counter() - t_window
                logs = logs_from_sums(reduced, window_samples)
                logs.update(img_per_s=window_samples / dt if dt > 0 else 0.0,
                            lr=float(self.optimizer.lr), epoch=epoch)
                logs.update(stragglers.window_end(window_first, step))
                window_first = step + 1
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k != "epoch"})
                self.last_logs = logs
                window, window_samples, t_window = {}, 0, time.perf_counter()
            # Every step, like Keras: checkpoints must not depend on the logging interval.
            for cb in callbacks:
                cb.on_batch_end(step, self.last_logs)
            bar.update(1)
            if flag.installed:
                # Every rank takes part every step (a tiny host allreduce): a signal on any
                # rank stops all ranks at this same step.
                signalled = [s for s in self.comm.allgather_obj(flag.raised) if s]
                if signalled:
                    self.preempted = signalled[0]
                    self._on_preempted()
                    break
        bar.close()
        return logs_from_sums(totals, samples) if samples else {}

    def _on_preempted(self) -> None:
        if self.comm.rank == 0:
            print(f"[mpinet] {self.preempted} received: checkpointing at step {self.global_step} "
                  f"and stopping", flush=True)
        if self.checkpoint_dir:
            self.save_checkpoint(self.checkpoint_dir, keep=self.keep_checkpoints)

    # ---- evaluate / predict ---------------------------------------------------------------
    def _use_targets_of(self, data) -> None:
        """Padded per-step targets (SequenceDataset) are skipped by the class-label losses."""
        self.trainstep.ignore_index = data_arrays.PAD_TARGET \
            if data_arrays.has_padded_targets(data) else None

    def evaluate(self, data, y=None, batch_size: int = 256, transform=None) -> dict:
        """Loss and metrics over ``data``, each sample counted exactly once across ranks.

        ``data``: a dataset, or NumPy inputs x with targets ``y`` (Keras' ``evaluate(x, y)``).
        ``transform`` defaults to the ``eval_transform`` given to ``fit`` (normalization), else
        ``preprocess``. Without compile() (a loaded model): its recorded loss and metrics."""
        if self.dp is not None:
            self.dp.synchronize()
            if self.comm.size > 1:
                self.dp.average_buffers()
        loss_fn = self.loss_name or "cross_entropy"
        metrics = self.metrics or ("accuracy",)
        data = data_arrays.as_dataset(data, y, "evaluate")
        data_arrays.check_targets(loss_fn, data, "evaluate")
        # Padded per-step targets (SequenceDataset) are skipped by the class-label losses.
        ignore = data_arrays.PAD_TARGET if data_arrays.has_padded_targets(data) else None
        sampler = ShardSampler(len(data), batch_size, self.comm.rank, self.comm.size)
        self.network.eval()
        sums: dict = {}
        count = 0
        with no_grad():
            loader = DataLoader(data, sampler, prefetch=1,
                                transform=transform or self.eval_transform or self.preprocess)
            for x, y, _ in loader:
                n = data_arrays.num_samples(x)
                if n == 0:
                    continue
                out = self._predict_forward(x)
                loss = compute_loss(loss_fn, out, y, self.label_smoothing, ignore)
                sums["loss"] = sums.get("loss", 0) + loss.data * n
                for k, v in metric_sums(metrics, out.data, y).items():
                    sums[k] = sums.get(k, 0) + v
                count += n
        self.network.train()
        sums["_count"] = count
        reduced = reduce_sums(self.comm, sums)
        total = int(reduced.pop("_count"))
        return logs_from_sums(reduced, total)

    def predict(self, x, batch_size: int = 256) -> np.ndarray:
        """Network outputs for host array ``x`` (N, ...) in [0, 1] (the eval_transform given to
        ``fit``, else ``preprocess``, is applied), computed in shards over the ranks and
        gathered so every rank returns the full (N, ...) NumPy array. No compile() needed.
        ``x`` may also be a dataset with ``batch()`` (e.g. a SequenceDataset: padded per batch,
        its targets unused); then each sample's output must have one shape (per-sequence
        outputs, or per-step ones of a fixed length)."""
        if self._compiled:
            self.dp.synchronize()
        n = len(x)
        lo = (n * self.comm.rank) // self.comm.size
        hi = (n * (self.comm.rank + 1)) // self.comm.size
        self.network.eval()
        outs = []
        with no_grad():
            for start in range(lo, hi, batch_size):
                stop = min(start + batch_size, hi)
                if hasattr(x, "batch"):  # the dataset protocol: arrays or (padded, lengths)
                    rows = x.batch(np.arange(start, stop))[0]
                    xb = tuple(backend.to_device(a) for a in rows) if isinstance(rows, tuple) \
                        else backend.to_device(data_arrays.model_input(rows))
                else:
                    xb = backend.to_device(data_arrays.model_input(x[start:stop]))
                transform = self.eval_transform or self.preprocess
                if transform is not None and not isinstance(xb, tuple):  # image transforms only
                    xb, _ = transform(xb, None, None)
                outs.append(backend.to_numpy(self._predict_forward(xb).data))
        self.network.train()
        mine = np.concatenate(outs) if outs else None
        parts = self.comm.allgather_obj(mine) if self.comm.size > 1 else [mine]
        return np.concatenate([p for p in parts if p is not None])

    def _predict_forward(self, x) -> Variable:
        """The compiled step's forward (its precision); before compile, the network under
        ``self.precision`` (a loaded model's, from its file), each layer casting its weight."""
        if self.trainstep is not None:
            return self.trainstep.forward(x)
        precision = Precision.parse(self.precision)
        x, extra = (x[0], x[1:]) if isinstance(x, tuple) else (x, ())  # (padded, lengths)
        if precision.compute_dtype is None:
            return self.network(Variable(x), *extra)
        with autocast(precision):
            return self.network(Variable(x), *extra)

    # ---- checkpoints ----------------------------------------------------------------------
    def training_state(self) -> dict:
        """Everything needed to continue exactly (see mpinet.training.state, mpinet.checkpoint)."""
        return training_states.training_state(self)

    def load_training_state(self, state: dict) -> None:
        training_states.load_training_state(self, state)

    def save_checkpoint(self, directory: str, keep: int = 3) -> str:
        return checkpoint.save(directory, self.training_state(), self.global_step, self.comm,
                               keep=keep)

    def _resume(self, resume, directory) -> None:
        path = checkpoint.resolve_resume(resume, directory, self.comm)
        if path is None:
            return
        self.load_training_state(checkpoint.load(path, rank=self.comm.rank))
        if self.comm.rank == 0:
            print(f"[mpinet] resumed from {path} at step {self.global_step}", flush=True)

    def save_weights(self, path: str) -> None:
        """Keras-style: the network's parameters and buffers alone (safetensors)."""
        if self._compiled:
            self.dp.synchronize()
        checkpoint.save_weights(path, self.network, self.comm)

    def save(self, path: str, **options) -> str:
        """The model file: architecture, weights, preprocessing, class names, precision (see
        mpinet.training.model_file; ``mpinet.load_model`` reads it). Collective: every rank
        calls."""
        from . import model_file  # loaded when first saving

        return model_file.save(self, path, **options)

    def load_weights(self, path: str) -> None:
        if self.trainstep is not None:
            self.trainstep.forget_graphs()
        self.network.load_state_dict(checkpoint.load_weights(path))


__all__ = ["Model", "History", "Callback"]
