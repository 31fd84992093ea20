"""Optimizers (SGD, Adam, AdamW; per-parameter or one fused update over a FlatParameters),
learning-rate schedules and dynamic loss scaling for fp16."""
from .adam import Adam, AdamW
from .loss_scaler import LossScaler
from .lr_scheduler import (Constant, CosineAnnealing, LinearWarmup, LRSchedule, StepLR,
                           WarmupThen, linear_scaling_rule)
from .lr_scheduler import Exponential, MultiStep, OneCycle, Polynomial, ReduceLROnPlateau
from .clip import clip_grad_norm_, clip_grad_value_
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRSchedule", "Constant", "StepLR",
           "CosineAnnealing", "WarmupThen", "LinearWarmup", "linear_scaling_rule", "LossScaler"]
__all__ += ["Exponential", "MultiStep", "OneCycle", "Polynomial", "ReduceLROnPlateau",
            "clip_grad_norm_", "clip_grad_value_"]
