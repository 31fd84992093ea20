"""A Keras-like face for training: ``compile``, ``fit``, ``evaluate``, ``predict``, callbacks.

    net = mpinet.models.build_model("lenet5", num_classes=10)
    model = mpinet.Model(net)                     # picks up MPI: same code on 1 or N ranks
    model.compile(optimizer="sgd", lr=0.05, loss="cross_entropy", metrics=["accuracy"])
    history = model.fit(train_set, epochs=5, batch_size=64, validation_data=test_set)
    model.evaluate(test_set)                      # {"loss": ..., "accuracy": ...}, exact over ranks

Under mpirun every rank runs this same code: the sampler gives each rank its share of every
global batch, DataParallel averages gradients (overlapped with backprop), and every logged figure
is a sum over ranks divided by a global count, so 1, 2 or 4 ranks report the same numbers.
"""
from __future__ import annotations

import sys
import time
import warnings

import numpy as np

from . import amp, backend
from .autograd import Variable, no_grad
from .callbacks import Callback, MetricsLogger, ModelCheckpoint
from .data import arrays as data_arrays
from .optim.clip import build_clipper
from .data.loader import DataLoader
from .data.sampler import DistributedSampler, ShardSampler
from .nn.module import Module
from .ops import loss as loss_ops
from .parallel.data_parallel import DataParallel
from .preemption import PreemptionFlag

LOSSES = tuple(loss_ops.LOSS_FUNCTIONS)  # names compile() accepts (mpinet.ops.loss)
METRICS = ("accuracy", "iou", "mae")


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
    def __init__(self, network: Module, comm=None):
        if comm is None:
            from .comm import create_communicator  # noqa: PLC0415 - initialises MPI

            comm = create_communicator("auto")
        self.network = network.to(backend.current())
        self.comm = comm
        if comm.size > 1:
            # An uncaught error on one rank must end the job, not leave the other ranks waiting
            # in the next allreduce until the comm timeout: report the rank and MPI_Abort.
            from .comm.failure import install_abort_handler  # noqa: PLC0415

            install_abort_handler()
        self.optimizer = None
        self.schedule = None
        self.stop_training = False
        self.global_step = 0
        self.epoch = 0
        self.sampler = None
        self.loader = None
        self.preempted = None  # the signal name if fit stopped on preemption
        self.last_logs: dict = {}  # the latest logging window's figures
        self._step_graphs = None  # mpinet.cuda_graph.StepGraphs when compiled with cuda_graph
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
        steps (see mpinet.cuda_graph; refused with the reason where it would be wrong).
        ``clip_norm``/``clip_value``: clip the gradient by global norm / by value after the
        allreduce, before each update (mpinet.optim.clip; the same on every rank)."""
        from .optim.factory import build_optimizer  # noqa: PLC0415
        from .optim.loss_scaler import LossScaler  # noqa: PLC0415

        if loss not in LOSSES and not callable(loss):
            raise ValueError(f"loss must be one of {LOSSES} or a callable(output, target), got {loss!r}")
        bad = [m for m in metrics if m not in METRICS]
        if bad:
            raise ValueError(f"unknown metrics {bad}; available: {METRICS}")
        self.loss_name, self.metrics = loss, tuple(metrics)
        self.label_smoothing = float(label_smoothing)
        self.precision = precision
        amp.resolve_dtype(precision)  # validates the name
        self.dp = DataParallel(self.network, self.comm, bucket_mb=bucket_mb, mode=dp_mode,
                               grad_dtype=grad_dtype)
        self.dp.grad_clipper = build_clipper(clip_norm, clip_value, dp_mode)
        if isinstance(optimizer, str):
            optimizer = build_optimizer(optimizer, self.dp.flat, lr=lr, momentum=momentum,
                                              weight_decay=weight_decay, nesterov=nesterov)
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        # A schedule object, or a factory(optimizer) -> schedule when the optimizer is built here.
        self.schedule = schedule(optimizer) if callable(schedule) and not hasattr(schedule, "step") \
            else schedule
        self.scaler = LossScaler() if precision == "fp16" else None
        self._step_graphs = None
        if cuda_graph:
            from . import cuda_graph as graphs  # noqa: PLC0415

            graphs.check_capturable(self)
            self._step_graphs = graphs.StepGraphs(self._device_step, self.optimizer, self.comm,
                                                  state_arrays=self._step_state_arrays)
        self._compiled = True
        return self

    def _require_compiled(self, what: str) -> None:
        if not self._compiled:
            raise RuntimeError(f"Model.{what}() needs compile() first (optimizer, loss, metrics)")

    # ---- one step -------------------------------------------------------------------------
    def _forward(self, x):
        if isinstance(x, tuple):  # (padded sequences, lengths, ...): see mpinet.data.arrays
            return self._forward_with(x[0], *x[1:])
        return self._forward_with(x)

    def _forward_with(self, x, *extra):
        if self.precision in ("bf16", "fp16"):
            # All weights cast in one pass per forward, unless the "forward" data-parallel mode
            # updates layers during the forward pass (then each layer casts its own weight).
            flat = self.dp.flat if self.dp.mode != "forward" else None
            with amp.autocast(self.precision, params=flat):
                return self.network(Variable(x), *extra)
        return self.network(Variable(x), *extra)

    def _loss(self, out: Variable, y):
        if out.dtype != np.float32 and out.dtype.kind == "f":
            out = amp.cast(out, np.dtype(np.float32))  # losses in fp32
        if callable(self.loss_name):
            return self.loss_name(out, y)
        # Padded per-step targets (SequenceDataset) are skipped; otherwise no ignore_index: its
        # count of valid labels would cost a host sync per step on the GPU.
        ignore = data_arrays.PAD_TARGET if getattr(self, "padded_targets", False) else None
        if self.loss_name == "cross_entropy":
            return loss_ops.cross_entropy(out, y, label_smoothing=self.label_smoothing,
                                          ignore_index=ignore)
        if self.loss_name in data_arrays.CLASS_LABEL_LOSSES:
            return loss_ops.LOSS_FUNCTIONS[self.loss_name](out, y, ignore_index=ignore)
        return loss_ops.LOSS_FUNCTIONS[self.loss_name](
            out, Variable(data_arrays.regression_target(out, y, self.loss_name)))

    def _metric_sums(self, out, y) -> dict:
        """Per-batch sums (not means) as device scalars: reduced over ranks, divided by counts."""
        xp = backend.xp_of(out)
        sums = {}
        if "accuracy" in self.metrics:
            # In samples' worth: for segmentation each sample contributes its pixel fraction.
            per_sample = int(np.prod(y.shape[1:])) if y.ndim > 1 else 1
            sums["correct"] = (out.argmax(axis=1) == y).sum() / per_sample
        if "iou" in self.metrics:  # foreground (class > 0) intersection and union, summed
            pred_fg, true_fg = out.argmax(axis=1) > 0, y > 0
            sums["intersection"] = (pred_fg & true_fg).sum()
            sums["union"] = (pred_fg | true_fg).sum()
        if "mae" in self.metrics:  # in samples' worth: the mean over each sample's elements
            per_sample = max(int(np.prod(y.shape[1:])), 1)
            sums["abs_err"] = xp.abs(out.reshape(y.shape) - y).sum() / per_sample
        return sums

    def train_step(self, x, y, global_count: int, accumulation_steps: int = 1) -> dict:
        """One optimizer step on this rank's share ``x, y`` of a global batch of
        ``global_count`` samples; returns device sums (loss*n, metric sums) for logging."""
        n_local = _num_samples(x)
        if self._step_graphs is not None and accumulation_steps == 1 and n_local > 0:
            # Eager for the first steps of each batch shape, then one graph replay per step.
            sums = self._step_graphs.run(x, y, global_count)
            self._after_step()
            return sums
        sums = {"loss": 0.0}
        if n_local == 0:
            self.dp.backward_empty()
        else:
            chunks = np.array_split(np.arange(n_local), min(accumulation_steps, n_local))
            for i, idx in enumerate(chunks):
                xs, ys = (x, y) if len(chunks) == 1 else (_rows(x, idx[0], idx[-1] + 1),
                                                          y[idx[0]:idx[-1] + 1])
                out = self._forward(xs)
                loss = self._loss(out, ys)
                weight = len(idx) / global_count
                if self.scaler is not None:
                    weight *= self.scaler.scale_value
                last = i == len(chunks) - 1
                if last:
                    self.dp.backward(loss, weight=weight)
                else:
                    with self.dp.no_sync():
                        self.dp.backward(loss, weight=weight)
                sums["loss"] = sums["loss"] + loss.data * len(idx)
                for k, v in self._metric_sums(out.data, ys).items():
                    sums[k] = sums.get(k, 0) + v
        if self.scaler is not None:
            self._scaled_step()
        else:
            self.dp.step(self.optimizer)
        self._after_step()
        return sums

    def _device_step(self, x, y, global_count: int) -> dict:
        """The device work of a one-chunk step: forward, backward (allreduces started from the
        hooks), update. What a CUDA graph captures (``cuda_graph``): no host reads in here."""
        out = self._forward(x)
        loss = self._loss(out, y)
        self.dp.backward(loss, weight=_num_samples(x) / global_count)
        sums = {"loss": loss.data * _num_samples(x), **self._metric_sums(out.data, y)}
        self.dp.step(self.optimizer)
        return sums

    def _step_state_arrays(self) -> list:
        """The arrays a training step's state lives in (what a CUDA graph replays on)."""
        from .nn.dropout import Dropout  # noqa: PLC0415
        from .ops.dropout import default_generator  # noqa: PLC0415

        modules = [m for _, m in self.network.named_modules()]
        arrays = [buf for m in modules for buf in m._buffers.values()]
        generators = {id(g): g for g in (m.rng or default_generator() for m in modules
                                        if isinstance(m, Dropout))}
        return (arrays + [g.state for g in generators.values()]
                + [self.dp.flat.data, self.dp.flat.grad] + self.optimizer.device_state())

    def _after_step(self) -> None:
        if self.schedule is not None:
            self.schedule.step()
        self.global_step += 1

    def _scaled_step(self) -> None:
        """fp16: unscale, agree on overflow across ranks, skip the step and back off if any."""
        self.dp.reduce_gradients()
        found_inf = self.scaler.unscale_(self.dp.flat.grad)
        found_inf = bool(self.comm.allreduce_obj(bool(found_inf), op="lor"))
        if not found_inf:
            if self.dp.grad_clipper:  # on the unscaled global gradient
                self.dp.grad_clipper(self.dp.flat.grad)
            self.optimizer.step()
        self.dp.flat.zero_grad()
        self.scaler.update(found_inf)

    # ---- fit ------------------------------------------------------------------------------
    def fit(self, train, y=None, epochs: int = 1, batch_size: int = 32, validation_data=None,
            callbacks=(), seed: int = 0, shuffle: bool = True, transform=None, eval_transform=None,
            accumulation_steps: int = 1, log_every: int = 10, verbose: bool = True,
            metrics_file: str | None = None, checkpoint_dir: str | None = None,
            checkpoint_every: int = 0, keep_checkpoints: int = 3, resume=None,
            handle_preemption: bool = True, preemption_flag: "PreemptionFlag | None" = None
            ) -> History:
        """Train for ``epochs`` epochs of ``train``; ``batch_size`` per rank.

        ``train``: a dataset (ArrayDataset, TensorDataset, SequenceDataset, or anything with the
        protocol of mpinet.data.arrays), or NumPy inputs x of any rank with targets ``y``
        (Keras' ``fit(x, y, ...)``); ``validation_data`` likewise a dataset or a tuple (x, y).

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
        self.padded_targets = data_arrays.has_padded_targets(train)
        data_arrays.check_targets(self.loss_name, train, "fit")
        if validation_data is not None:
            validation_data = data_arrays.as_dataset(validation_data, None,
                                                     "fit(validation_data=...)")
            data_arrays.check_targets(self.loss_name, validation_data, "fit(validation_data=...)")
        check_can_train(train, self.comm.size, batch_size, accumulation_steps)
        self.sampler = DistributedSampler(len(train), batch_size, self.comm.rank, self.comm.size,
                                          seed=seed, shuffle=shuffle)
        self.loader = DataLoader(train, self.sampler, transform=transform)
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
                                 self.evaluate(validation_data, batch_size=max(batch_size, 256)).items()})
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
        from tqdm import tqdm  # noqa: PLC0415

        # In a batch log (Slurm, CI: not a terminal) redraw rarely, or the bar floods the file.
        bar = tqdm(total=len(self.loader), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not verbose or self.comm.rank != 0, dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 30.0)
        totals: dict = {}
        window: dict = {}
        samples = window_samples = 0
        t_window = time.perf_counter()
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
                reduced = self._reduce_sums(window)
                for k, v in reduced.items():
                    totals[k] = totals.get(k, 0.0) + v
                samples += window_samples
                dt = time.perf_counter() - t_window
                logs = self._logs_from_sums(reduced, window_samples)
                logs.update(img_per_s=window_samples / dt if dt > 0 else 0.0,
                            lr=float(self.optimizer.lr), epoch=epoch)
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
        return self._logs_from_sums(totals, samples) if samples else {}

    def _on_preempted(self) -> None:
        if self.comm.rank == 0:
            print(f"[mpinet] {self.preempted} received: checkpointing at step {self.global_step} "
                  f"and stopping", flush=True)
        if self.checkpoint_dir:
            self.save_checkpoint(self.checkpoint_dir, keep=self.keep_checkpoints)

    def _reduce_sums(self, sums: dict) -> dict:
        keys = sorted(sums)
        local = np.array([float(backend.to_numpy(sums[k])) for k in keys], dtype=np.float64)
        # A NumPy array, so the object reduction adds elementwise (a list would concatenate).
        total = self.comm.allreduce_obj(local, op="sum") if self.comm.size > 1 else local
        return dict(zip(keys, np.asarray(total, dtype=np.float64).tolist()))

    def _logs_from_sums(self, sums: dict, count: int) -> dict:
        logs = {}
        if "loss" in sums:
            logs["loss"] = sums["loss"] / max(count, 1)
        if "correct" in sums:
            logs["accuracy"] = sums["correct"] / max(count, 1)
        if "intersection" in sums:
            logs["iou"] = sums["intersection"] / max(sums["union"], 1)
        if "abs_err" in sums:
            logs["mae"] = sums["abs_err"] / max(count, 1)
        return logs

    # ---- evaluate / predict ---------------------------------------------------------------
    def evaluate(self, data, y=None, batch_size: int = 256, transform=None) -> dict:
        """Loss and metrics over ``data``, each sample counted exactly once across ranks.

        ``transform`` defaults to the ``eval_transform`` given to ``fit`` (normalization)."""
        self._require_compiled("evaluate")
        data = data_arrays.as_dataset(data, y, "evaluate")
        training_padded = getattr(self, "padded_targets", False)  # fit's, restored below
        self.padded_targets = data_arrays.has_padded_targets(data)
        data_arrays.check_targets(self.loss_name, data, "evaluate")
        self.dp.synchronize()
        if self.comm.size > 1:
            self.dp.average_buffers()
        sampler = ShardSampler(len(data), batch_size, self.comm.rank, self.comm.size)
        self.network.eval()
        sums: dict = {}
        count = 0
        with no_grad():
            loader = DataLoader(data, sampler, prefetch=1,
                                transform=transform or getattr(self, "eval_transform", None))
            for x, y, _ in loader:
                n = _num_samples(x)
                if n == 0:
                    continue
                out = self._forward(x)
                loss = self._loss(out, y)
                sums["loss"] = sums.get("loss", 0) + loss.data * n
                for k, v in self._metric_sums(out.data, y).items():
                    sums[k] = sums.get(k, 0) + v
                count += n
        self.network.train()
        self.padded_targets = training_padded
        sums["_count"] = count
        reduced = self._reduce_sums(sums)
        total = int(reduced.pop("_count"))
        return self._logs_from_sums(reduced, total)

    def predict(self, x, batch_size: int = 256) -> np.ndarray:
        """Network outputs for host array ``x`` (N, ...) in [0, 1] (the eval_transform given to
        ``fit`` is applied), computed in shards over the ranks and gathered so every rank
        returns the full (N, ...) NumPy array."""
        if self._compiled:
            self.dp.synchronize()
        n = len(x)
        lo, hi = (n * self.comm.rank) // self.comm.size, (n * (self.comm.rank + 1)) // self.comm.size
        self.network.eval()
        outs = []
        with no_grad():
            for start in range(lo, hi, batch_size):
                xb = backend.to_device(data_arrays.model_input(x[start:min(start + batch_size, hi)]))
                if getattr(self, "eval_transform", None) is not None:
                    xb, _ = self.eval_transform(xb, None, None)
                outs.append(backend.to_numpy(self._forward(xb).data))
        self.network.train()
        mine = np.concatenate(outs) if outs else None
        parts = self.comm.allgather_obj(mine) if self.comm.size > 1 else [mine]
        return np.concatenate([p for p in parts if p is not None])

    # ---- checkpoints ----------------------------------------------------------------------
    def training_state(self) -> dict:
        """Everything needed to continue exactly (see mpinet.checkpoint)."""
        self.dp.synchronize()
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "sampler": self.loader.state_dict() if self.loader is not None else None,
            "transform": self.transform.state_dict() if getattr(self, "transform", None) is not None
            and hasattr(self.transform, "state_dict") else None,
            "global_step": self.global_step,
            "world_size": self.comm.size,
            "config": getattr(self, "config", None),  # the CLI's flags, recorded in meta.json
            "rng": _rng_states(),
        }

    def load_training_state(self, state: dict) -> None:
        self._forget_step_graphs()
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("schedule") is not None and self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        if state.get("scaler") is not None and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        if state.get("sampler") is not None and self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
        if state.get("transform") is not None and hasattr(self.transform, "load_state_dict"):
            self.transform.load_state_dict(state["transform"])
        self.global_step = int(state.get("global_step", 0))
        if state.get("rng") is not None:
            _set_rng_states(state["rng"])

    def _forget_step_graphs(self) -> None:
        """Loading replaces buffers and optimizer state with new arrays: recapture."""
        if getattr(self, "_step_graphs", None) is not None:
            self._step_graphs.reset()

    def save_checkpoint(self, directory: str, keep: int = 3) -> str:
        from . import checkpoint  # noqa: PLC0415

        return checkpoint.save(directory, self.training_state(), self.global_step, self.comm,
                               keep=keep)

    def _resume(self, resume, directory) -> None:
        from . import checkpoint  # noqa: PLC0415

        path = checkpoint.resolve_resume(resume, directory, self.comm)
        if path is None:
            return
        self.load_training_state(checkpoint.load(path, rank=self.comm.rank))
        if self.comm.rank == 0:
            print(f"[mpinet] resumed from {path} at step {self.global_step}", flush=True)

    def save_weights(self, path: str) -> None:
        """Keras-style: the network's parameters and buffers alone (safetensors)."""
        from . import checkpoint  # noqa: PLC0415

        if self._compiled:
            self.dp.synchronize()
        checkpoint.save_weights(path, self.network, self.comm)

    def load_weights(self, path: str) -> None:
        from . import checkpoint  # noqa: PLC0415

        self._forget_step_graphs()
        self.network.load_state_dict(checkpoint.load_weights(path))


def _num_samples(x) -> int:
    """Samples in a batch: x is an array (N, ...) or a tuple (padded (N, ...), lengths, ...)."""
    return int((x[0] if isinstance(x, tuple) else x).shape[0])


def _rows(x, start: int, stop: int):
    """Samples start..stop of a batch (each array of a tuple batch)."""
    return tuple(a[start:stop] for a in x) if isinstance(x, tuple) else x[start:stop]


def _rng_states() -> dict:
    """This process's RNG states that training draws from, as JSON-able data: the init
    generator (layers built after a resume) and dropout's default generator (on CPU or GPU).

    Not captured: generators passed to individual layers (``Dropout(rng=...)``).
    """
    from .nn import init  # noqa: PLC0415
    from .ops import dropout  # noqa: PLC0415

    return {"init": init.generator().bit_generator.state,
            "dropout": dropout.default_generator().get_state()}


def _set_rng_states(states: dict) -> None:
    """Restore ``_rng_states()`` (this rank's: ``checkpoint.load`` picks the rank's entry)."""
    from .nn import init  # noqa: PLC0415
    from .ops import dropout  # noqa: PLC0415

    if "init" in states:
        init.generator().bit_generator.state = states["init"]
    if "dropout" in states:
        if "calls" in states["dropout"]:
            dropout.default_generator().set_state(states["dropout"])
        else:  # a NumPy generator's state, written before dropout masks were counter-based
            warnings.warn("checkpoint: the dropout generator state is from an older mpinet and "
                          "was not restored; dropout masks after this resume differ from an "
                          "uninterrupted run's", stacklevel=2)


__all__ = ["Model", "History", "Callback"]
