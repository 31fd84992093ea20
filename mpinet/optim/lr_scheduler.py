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


def LinearWarmup(optimizer: Optimizer, warmup_steps: int) -> WarmupThen:  # noqa: N802 - a schedule
    """Linear warmup to the optimizer's lr, then constant."""
    return WarmupThen(Constant(optimizer), warmup_steps)
