"""The ranks' side of checkpoints: rank 0 does the file work, every rank gets the same outcome.

Every collective here follows one protocol (``rank0_then_broadcast``): rank 0 tries, catches any
error, and broadcasts either the result or the error text; every rank then returns the same
result or raises the same ``CheckpointError``. No rank is left waiting in a collective because
rank 0 failed, and the broadcast doubles as the closing barrier (no rank returns before rank 0
has finished writing).

Per-rank parts of a checkpoint: the state is rank 0's, but some of it may differ between ranks —
batch-norm running statistics (each rank normalises its own batches) and RNG states (dropout's
generator is seeded per rank). ``save`` compares every rank's ``model`` entries (by sha256) and
``rng`` with rank 0's and stores those that differ as per-rank overrides (``ranks/<r>/model/<name>``
tensors, ``per_rank`` in meta.json); ``load(path, rank=r)`` applies rank r's, so each rank
resumes exactly where it stopped at the same world size.
"""
from __future__ import annotations

import os

from .format import CheckpointError, array_digest, host_contiguous
from .store import latest, verify, write_checkpoint, write_weights_file


def rank0_then_broadcast(comm, work, failure: str):
    """``work()``'s result on rank 0, broadcast to every rank (collective). If it raises on rank
    0, every rank raises ``CheckpointError(f"{failure}: {error}")``."""
    outcome = None
    if comm.rank == 0:
        try:
            outcome = {"result": work()}
        except Exception as e:
            outcome = {"error": str(e) if isinstance(e, CheckpointError)
                       else f"{type(e).__name__}: {e}"}
    outcome = comm.bcast_obj(outcome, root=0)
    if "error" in outcome:
        raise CheckpointError(f"{failure}: {outcome['error']}")
    return outcome["result"]


def save(directory, state: dict, step: int, comm, keep: int = 3) -> str:
    """Write ``state`` (``Model.training_state()``) to ``<directory>/ckpt-<step>``; return its path.

    Collective: every rank calls it with the same ``step`` (checked; a mismatch raises on every
    rank, naming the ranks). Rank 0 writes its state plus what differs on other ranks (see the
    module docstring); every rank returns only once the checkpoint is complete on disk (or
    raises the same error if rank 0 failed to write it). Afterwards only the newest ``keep``
    checkpoints remain (``keep <= 0`` keeps all).
    """
    directory = os.fspath(directory)
    model = state.get("model") or {}
    gathered = comm.allgather_obj({"step": int(step), "rng": state.get("rng"),
                                   "model": {k: array_digest(v) for k, v in model.items()}})
    _check_agreement(gathered)
    # Every rank knows from `gathered` which ranks differ, so all take part in this or none.
    differs = [[k for k, d in g["model"].items() if d != gathered[0]["model"][k]]
               for g in gathered]
    overrides = None
    if any(differs[1:]):
        mine = {k: host_contiguous(model[k]) for k in differs[comm.rank]} if comm.rank else {}
        overrides = comm.allgather_obj(mine)

    def write() -> str:
        per_rank = [{} for _ in gathered]
        for r, g in enumerate(gathered[1:], start=1):
            if overrides and overrides[r]:
                per_rank[r]["model"] = overrides[r]
            if g["rng"] != gathered[0]["rng"]:
                per_rank[r]["rng"] = g["rng"]
        return write_checkpoint(directory, state, per_rank, int(step), comm.size, keep)

    return rank0_then_broadcast(comm, write, f"checkpoint.save to {directory!r} failed on rank 0")


def _check_agreement(gathered: list) -> None:
    """Same step and same model entry names on every rank, else raise (on every rank alike)."""
    steps = [g["step"] for g in gathered]
    if len(set(steps)) != 1:
        by_step: dict = {}
        for rank, s in enumerate(steps):
            by_step.setdefault(s, []).append(rank)
        detail = "; ".join(f"step {s} on ranks {ranks}" for s, ranks in sorted(by_step.items()))
        raise CheckpointError(f"checkpoint.save: the ranks disagree on the step ({detail}); every "
                              f"rank must call save at the same step (it is a collective)")
    names0 = list(gathered[0]["model"])
    for r, g in enumerate(gathered):
        if list(g["model"]) != names0:
            raise CheckpointError(f"checkpoint.save: rank {r}'s model has entries "
                                  f"{sorted(set(g['model']) ^ set(names0))[:5]} that rank 0's "
                                  f"lacks or the other way round; every rank must save the "
                                  f"same model")


def resolve_resume(resume, directory, comm) -> str | None:
    """The checkpoint to resume from, the same on every rank (collective unless ``resume`` is
    falsy). ``"auto"``: the newest good one in ``directory``, or None to start fresh; a path:
    that checkpoint, verified. Rank 0 decides and broadcasts; errors raise on every rank."""
    if not resume:
        return None

    def find() -> str | None:
        if resume == "auto":
            if not directory:
                raise CheckpointError("resume='auto' needs a checkpoint directory to look in "
                                      "(checkpoint_dir / --checkpoint-dir)")
            return latest(directory)
        verify(resume)
        return os.fspath(resume)

    return rank0_then_broadcast(comm, find, f"cannot resume from {resume!r}")


def save_weights(path, network, comm) -> None:
    """Write ``network``'s parameters and buffers to one safetensors file (rank 0, atomically;
    see ``store.write_weights_file``). Collective: returns on every rank once the file is
    complete."""
    path = os.fspath(path)
    rank0_then_broadcast(comm, lambda: write_weights_file(path, network.state_dict()),
                         f"save_weights to {path!r} failed on rank 0")
