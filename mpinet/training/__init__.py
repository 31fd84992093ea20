"""Training: the room for everything that turns a network and data into trained weights.

  * ``model``: the Keras face, ``Model`` (compile / fit / evaluate / predict / save_weights ...):
    the loop, logging, evaluation and checkpoints;
  * ``step``: ``TrainStep``, the one place the update sequence of a step is written (cast,
    scale, accumulate, allreduce wait, unscale, overflow check, clip, optimizer step), for
    every precision and for CUDA graphs;
  * ``metrics``: losses and metrics as sums over ranks; ``state``: what a checkpoint holds;
  * ``segmentation_metrics``: per-class IoU and Dice from a confusion matrix summed over ranks;
  * ``callbacks``, ``cuda_graph`` (the step captured and replayed), ``preemption`` (signals).
Importing this package initialises nothing (no MPI, no CUDA): ``Model`` does, when built.
"""
from ..amp import Precision
from .callbacks import Callback
from .model import History, Model, check_can_train
from .step import TrainStep

__all__ = ["Model", "History", "Callback", "TrainStep", "Precision", "check_can_train"]
