"""Checkpoints: save, find and restore a whole training state, atomically and without pickle.

    path = checkpoint.save("runs/ckpt", model.training_state(), step, comm, keep=3)  # every rank
    path = checkpoint.resolve_resume("auto", "runs/ckpt", comm)   # newest good one, or None
    model.load_training_state(checkpoint.load(path))

The room has three parts, one job each:
  * ``format``: the file format (safetensors tensors + a JSON tree in meta.json, digests, dtype
    codes); bytes and trees only.
  * ``store``: one process's files: atomic write, verify, load, prune, find the latest.
  * ``protocol``: the ranks: rank 0 tries, every rank gets the same outcome (``save``,
    ``resolve_resume``, ``save_weights``), and the per-rank parts of a state.
What goes into a training state is ``mpinet.training.state``'s job.
"""
from .format import CheckpointError
from .protocol import resolve_resume, save, save_weights
from .store import latest, load, load_weights, read_metadata, verify

__all__ = ["CheckpointError", "save", "load", "latest", "resolve_resume", "verify",
           "read_metadata", "save_weights", "load_weights"]
