"""Build optimizers and schedules by name (the CLI and ``Model.compile`` use these)."""
from __future__ import annotations

from .adam import Adam, AdamW
from .lr_scheduler import Constant, CosineAnnealing, StepLR, WarmupThen
from .sgd import SGD

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")


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
    """constant | step (x gamma every step_size, default a third of training) | cosine,
    optionally after ``warmup_steps`` of linear warmup."""
    if name == "constant":
        schedule = Constant(optimizer)
    elif name == "step":
        schedule = StepLR(optimizer, step_size or max(1, total_steps // 3), gamma)
    elif name == "cosine":
        schedule = CosineAnnealing(optimizer, max(1, total_steps - warmup_steps))
    else:
        raise ValueError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    return WarmupThen(schedule, warmup_steps) if warmup_steps else schedule
