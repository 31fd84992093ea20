"""Deprecated import path, kept working: callbacks live in ``mpinet.training.callbacks``."""
from .training.callbacks import (Callback, EarlyStopping, LearningRateScheduler, MetricsLogger,
                                 ModelCheckpoint)

__all__ = ["Callback", "EarlyStopping", "LearningRateScheduler", "ModelCheckpoint",
           "MetricsLogger"]
