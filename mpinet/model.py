"""Deprecated import path, kept working: the Keras face moved to ``mpinet.training``
(``Model`` in mpinet/training/model.py, the update sequence in mpinet/training/step.py).
Import from ``mpinet`` (``mpinet.Model``) or ``mpinet.training`` in new code."""
from .training.callbacks import Callback
from .training.model import History, Model, check_can_train

__all__ = ["Model", "History", "Callback", "check_can_train"]
