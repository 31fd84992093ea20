"""Build optimizers and schedules by name (the CLI and ``Model.compile`` use these)."""
from __future__ import annotations

from .adam import Adam, AdamW
from .lr_scheduler import (Constant, CosineAnnealing, Exponential, MultiStep, OneCycle,
                           Polynomial, ReduceLROnPlateau, StepLR, WarmupThen)
from .sgd import SGD

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "exponential", "multistep", "onecycle", "polynomial",
             "plateau")


def build_optimizer(name: str, params, *, lr: float, momentum: float = 0.9,
                    weight_decay: float = 0.0, nesterov: bool = False):
    """``params``: a FlatParameters (one fused update) or a list of Parameters."""
    if name == "sgd":
        return SGD(params, lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if name == "adam":
        return Adam(params, lr, weight_decay=weight_decay)
    if name == "adamw":
        return AdamW(params, lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def build_schedule(name: str, optimizer, *, total_steps: int, warmup_steps: int = 0,
                   step_size: int | None = None, gamma: float = 0.1):
    """constant | step (x gamma every step_size, default a third of training) | cosine |
    exponential (down to 1% of the lr by the end) | multistep (x gamma at 50% and 75% of
    training) | onecycle (the optimizer's lr is the peak) | polynomial (linear decay to 0) |
    plateau (x gamma when val_loss stalls for 2 epochs), optionally after ``warmup_steps`` of
    linear warmup (not with onecycle, which warms up itself, or plateau)."""
    if name == "constant":
        schedule = Constant(optimizer)
    elif name == "step":
        schedule = StepLR(optimizer, step_size or max(1, total_steps // 3), gamma)
    elif name == "cosine":
        schedule = CosineAnnealing(optimizer, max(1, total_steps - warmup_steps))
    elif name == "exponential":
        schedule = Exponential(optimizer, 0.01 ** (1 / max(1, total_steps - warmup_steps)))
    elif name == "multistep":
        after = max(1, total_steps - warmup_steps)
        schedule = MultiStep(optimizer, sorted({max(1, after // 2), max(2, 3 * after // 4)}),
                             gamma)
    elif name in ("onecycle", "plateau"):
        if warmup_steps:
            raise ValueError(f"schedule {name!r} takes no warmup_steps (onecycle warms up "
                             f"itself; plateau follows the validation loss)")
        return OneCycle(optimizer, max(2, total_steps)) if name == "onecycle" else \
            ReduceLROnPlateau(optimizer, factor=gamma, patience=2)
    elif name == "polynomial":
        schedule = Polynomial(optimizer, max(1, total_steps - warmup_steps))
    else:
        raise ValueError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    return WarmupThen(schedule, warmup_steps) if warmup_steps else schedule
