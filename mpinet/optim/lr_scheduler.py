"""Learning-rate schedules: the lr as a pure function of the number of optimizer steps taken.

Usage (``step()`` once per optimizer step, after it)::

    sched = WarmupThen(CosineAnnealing(opt, total_steps=9000, min_lr=0.0), warmup_steps=500)
    for batch in data:
        ...; opt.step(); sched.step()

A schedule sets ``optimizer.lr = lr_at(t)`` where ``t`` counts the ``step()`` calls so far (the
constructor sets ``lr_at(0)`` for the first update). Because ``lr_at`` depends only on ``t`` and
the hyper-parameters, resuming from ``state_dict()`` gives bit-identical learning rates.

Composition: ``WarmupThen(after, warmup_steps)`` runs a linear warmup, then ``after`` with its own
step count starting at 0 (so a cosine's ``total_steps`` counts the steps after warmup). ``after``
only supplies ``lr_at`` and ``base_lr``; the wrapper owns the optimizer's lr from then on.

``state_dict()`` is a JSON-able dict of scalars: {"type", "last_step", "base_lr", hyper-params,
and "after": the inner schedule's dict for WarmupThen}.
"""
from __future__ import annotations

import bisect
import math

from .optimizer import Optimizer


def linear_scaling_rule(base_lr: float, global_batch: int, base_batch: int = 256) -> float:
    """Goyal et al. (2017): scale the lr with the global batch, ``base_lr * global / base``."""
    if global_batch <= 0 or base_batch <= 0:
        raise ValueError(f"linear_scaling_rule: batch sizes must be positive, got "
                         f"global_batch={global_batch}, base_batch={base_batch}")
    return base_lr * global_batch / base_batch


class LRSchedule:
    """Base: subclasses define ``hyper_names`` and ``lr_at(t)``."""

    hyper_names: tuple[str, ...] = ()

    def __init__(self, optimizer: Optimizer, base_lr: float | None = None):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected an Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr if base_lr is None else base_lr)
        self.last_step = 0  # step() calls so far

    def _start(self) -> None:
        """Set the first update's lr; subclasses call it at the end of __init__."""
        self.optimizer.lr = self.get_lr()

    def lr_at(self, t: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> float:
        """The lr for the next optimizer step."""
        return self.lr_at(self.last_step)

    def step(self) -> None:
        self.last_step += 1
        self.optimizer.lr = self.get_lr()

    def state_dict(self) -> dict:
        state = {"type": type(self).__name__, "last_step": self.last_step,
                 "base_lr": self.base_lr}
        state.update({h: getattr(self, h) for h in self.hyper_names})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore position and hyper-parameters, and set the optimizer's lr to match."""
        self._load(state)
        self.optimizer.lr = self.get_lr()

    def _load(self, state: dict) -> None:
        if state.get("type") != type(self).__name__:
            raise ValueError(f"load_state_dict: the state is from a {state.get('type')} schedule, "
                             f"this is a {type(self).__name__}; build the same schedule")
        self.last_step = int(state["last_step"])
        self.base_lr = float(state["base_lr"])
        for h in self.hyper_names:
            setattr(self, h, state[h])

    def __repr__(self) -> str:
        args = ", ".join(f"{h}={getattr(self, h)}" for h in self.hyper_names)
        return f"{type(self).__name__}({args}; base_lr={self.base_lr}, step {self.last_step})"


class Constant(LRSchedule):
    """lr = base_lr for ever (the ``after`` of a plain warmup)."""

    def __init__(self, optimizer: Optimizer, base_lr: float | None = None):
        super().__init__(optimizer, base_lr)
        self._start()

    def lr_at(self, t: int) -> float:
        return self.base_lr


class StepLR(LRSchedule):
    """lr = base_lr * gamma ** (t // step_size)  (torch.optim.lr_scheduler.StepLR)."""

    hyper_names = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1,
                 base_lr: float | None = None):
        if step_size <= 0:
            raise ValueError(f"StepLR: step_size must be a positive number of steps, got "
                             f"{step_size}")
        super().__init__(optimizer, base_lr)
        self.step_size, self.gamma = int(step_size), float(gamma)
        self._start()

    def lr_at(self, t: int) -> float:
        return self.base_lr * self.gamma ** (t // self.step_size)


class CosineAnnealing(LRSchedule):
    """lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * t / total_steps)) / 2, then min_lr.

    The closed form of torch's CosineAnnealingLR (T_max = total_steps) for t <= total_steps;
    unlike torch it stays at min_lr after total_steps instead of rising again.
    """

    hyper_names = ("total_steps", "min_lr")

    def __init__(self, optimizer: Optimizer, total_steps: int, min_lr: float = 0.0,
                 base_lr: float | None = None):
        if total_steps <= 0:
            raise ValueError(f"CosineAnnealing: total_steps must be positive, got {total_steps}")
        super().__init__(optimizer, base_lr)
        self.total_steps, self.min_lr = int(total_steps), float(min_lr)
        self._start()

    def lr_at(self, t: int) -> float:
        progress = min(t, self.total_steps) / self.total_steps
        return self.min_lr + (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress)) / 2


class WarmupThen(LRSchedule):
    """Linear warmup over ``warmup_steps``, then ``after`` (restarted at its step 0).

    Warmup: lr_at(t) = after.base_lr * (t + 1) / warmup_steps for t < warmup_steps, so the first
    update uses base_lr / warmup_steps and the last warmup update base_lr (never a zero-lr step);
    then lr_at(t) = after.lr_at(t - warmup_steps).
    """

    hyper_names = ("warmup_steps",)

    def __init__(self, after: LRSchedule, warmup_steps: int):
        if not isinstance(after, LRSchedule):
            raise TypeError(f"WarmupThen: after must be a schedule (e.g. CosineAnnealing(opt, "
                            f"...)), got {type(after).__name__}")
        if warmup_steps < 0:
            raise ValueError(f"WarmupThen: warmup_steps must be >= 0, got {warmup_steps}")
        super().__init__(after.optimizer, after.base_lr)
        self.after = after
        self.warmup_steps = int(warmup_steps)
        self._start()

    def lr_at(self, t: int) -> float:
        if t < self.warmup_steps:
            return self.after.base_lr * (t + 1) / self.warmup_steps
        return self.after.lr_at(t - self.warmup_steps)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["after"] = self.after.state_dict()
        return state

    def _load(self, state: dict) -> None:
        super()._load(state)
        self.after._load(state["after"])


def LinearWarmup(optimizer: Optimizer, warmup_steps: int) -> WarmupThen:
    """Linear warmup to the optimizer's lr, then constant."""
    return WarmupThen(Constant(optimizer), warmup_steps)


class Exponential(LRSchedule):
    """lr = base_lr * gamma ** t  (torch.optim.lr_scheduler.ExponentialLR)."""

    hyper_names = ("gamma",)

    def __init__(self, optimizer: Optimizer, gamma: float, base_lr: float | None = None):
        if not 0 < gamma:
            raise ValueError(f"Exponential: gamma must be > 0, got {gamma}")
        super().__init__(optimizer, base_lr)
        self.gamma = float(gamma)
        self._start()

    def lr_at(self, t: int) -> float:
        return self.base_lr * self.gamma ** t


class MultiStep(LRSchedule):
    """lr = base_lr * gamma ** (number of milestones <= t)  (torch's MultiStepLR)."""

    hyper_names = ("milestones", "gamma")

    def __init__(self, optimizer: Optimizer, milestones, gamma: float = 0.1,
                 base_lr: float | None = None):
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones) or any(m <= 0 for m in milestones):
            raise ValueError(f"MultiStep: milestones must be increasing positive step counts, "
                             f"got {milestones}")
        super().__init__(optimizer, base_lr)
        self.milestones, self.gamma = milestones, float(gamma)
        self._start()

    def lr_at(self, t: int) -> float:
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, t)


class Polynomial(LRSchedule):
    """lr = base_lr * (1 - min(t, total_steps) / total_steps) ** power  (torch's PolynomialLR)."""

    hyper_names = ("total_steps", "power")

    def __init__(self, optimizer: Optimizer, total_steps: int, power: float = 1.0,
                 base_lr: float | None = None):
        if total_steps <= 0:
            raise ValueError(f"Polynomial: total_steps must be positive, got {total_steps}")
        super().__init__(optimizer, base_lr)
        self.total_steps, self.power = int(total_steps), float(power)
        self._start()

    def lr_at(self, t: int) -> float:
        return self.base_lr * (1 - min(t, self.total_steps) / self.total_steps) ** self.power


class OneCycle(LRSchedule):
    """The 1cycle policy (torch's OneCycleLR without momentum cycling): from
    max_lr / div_factor up to max_lr over the first pct_start of ``total_steps``, then down to
    max_lr / div_factor / final_div_factor (cosine or linear annealing); ``three_phase`` goes
    back to the initial lr first, as torch does. ``max_lr`` defaults to the optimizer's lr."""

    hyper_names = ("total_steps", "pct_start", "anneal", "div_factor", "final_div_factor",
                   "three_phase")

    def __init__(self, optimizer: Optimizer, total_steps: int, max_lr: float | None = None,
                 pct_start: float = 0.3, anneal: str = "cos", div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False):
        if total_steps <= 1:
            raise ValueError(f"OneCycle: total_steps must be > 1, got {total_steps}")
        if not 0 < pct_start < 1:
            raise ValueError(f"OneCycle: pct_start must be in (0, 1), got {pct_start}")
        if anneal not in ("cos", "linear"):
            raise ValueError(f"OneCycle: anneal must be 'cos' or 'linear', got {anneal!r}")
        super().__init__(optimizer, max_lr)
        self.total_steps, self.pct_start, self.anneal = int(total_steps), float(pct_start), anneal
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)
        self.three_phase = bool(three_phase)
        self._start()

    def _phases(self):
        initial = self.base_lr / self.div_factor
        final = initial / self.final_div_factor
        up = self.pct_start * self.total_steps - 1
        if self.three_phase:
            return [(up, initial, self.base_lr), (2 * up, self.base_lr, initial),
                    (self.total_steps - 1, initial, final)]
        return [(up, initial, self.base_lr), (self.total_steps - 1, self.base_lr, final)]

    def lr_at(self, t: int) -> float:
        t = min(t, self.total_steps - 1)
        start_step = 0.0
        phases = self._phases()
        for i, (end_step, lo, hi) in enumerate(phases):
            if t <= end_step or i == len(phases) - 1:
                pct = (t - start_step) / (end_step - start_step)
                if self.anneal == "cos":
                    return hi + (lo - hi) / 2.0 * (math.cos(math.pi * pct) + 1)
                return (hi - lo) * pct + lo
            start_step = end_step
        raise AssertionError("unreachable")


class ReduceLROnPlateau(LRSchedule):
    """Multiply the lr by ``factor`` when ``monitor`` (e.g. "val_loss") has not improved for
    more than ``patience`` epochs (torch's ReduceLROnPlateau, Keras' callback of that name).

    ``Model.fit`` calls ``on_epoch_end(logs)`` after each epoch; the figures in logs are already
    reduced over ranks, so every rank takes the same decision. Call ``observe(value)`` yourself
    in a hand-written loop. ``step()`` (per optimizer step) keeps the current lr.
    """

    hyper_names = ("monitor", "mode", "factor", "patience", "threshold", "threshold_mode",
                   "cooldown", "min_lr", "scale", "best", "bad_epochs", "cooldown_left")

    def __init__(self, optimizer: Optimizer, monitor: str = "val_loss", mode: str = "min",
                 factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                 threshold_mode: str = "rel", cooldown: int = 0, min_lr: float = 0.0):
        if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min'/'max' and threshold_mode "
                             f"'rel'/'abs', got {mode!r}, {threshold_mode!r}")
        if not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor}")
        super().__init__(optimizer)
        self.monitor, self.mode, self.factor, self.patience = monitor, mode, float(factor), patience
        self.threshold, self.threshold_mode = float(threshold), threshold_mode
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)
        self.scale = 1.0  # lr = max(base_lr * scale, min_lr)
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_epochs = self.cooldown_left = 0
        self._start()

    def lr_at(self, t: int) -> float:
        return max(self.base_lr * self.scale, self.min_lr)

    def _better(self, value: float) -> bool:
        if self.mode == "min":
            bar = self.best * (1 - self.threshold) if self.threshold_mode == "rel" \
                else self.best - self.threshold
            return value < bar
        bar = self.best * (1 + self.threshold) if self.threshold_mode == "rel" \
            else self.best + self.threshold
        return value > bar

    def observe(self, value: float) -> None:
        """One epoch's value of the monitored figure."""
        value = float(value)
        if self._better(value):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > self.patience:
            old = self.lr_at(0)
            self.scale *= self.factor
            if old - self.lr_at(0) <= 1e-8:  # at min_lr already: as torch, no change
                self.scale /= self.factor
            self.cooldown_left, self.bad_epochs = self.cooldown, 0
        self.optimizer.lr = self.get_lr()

    def on_epoch_end(self, logs: dict) -> None:
        if self.monitor not in logs:
            raise KeyError(f"ReduceLROnPlateau: monitor {self.monitor!r} is not among this "
                           f"epoch's figures {sorted(logs)}; pass validation_data for val_* "
                           f"figures or monitor one of those")
        self.observe(logs[self.monitor])
