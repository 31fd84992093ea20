"""What a training checkpoint holds: everything a ``Model`` needs to continue exactly.

``training_state(model)`` assembles it (arrays and JSON values, what ``mpinet.checkpoint.save``
stores); ``load_training_state(model, state)`` puts it back. The RNG part is mpinet.random's.
"""
from __future__ import annotations

from .. import random


def training_state(model) -> dict:
    """Network, optimizer, LR schedule, loss scale, sampler position, transform seed, step,
    world size, the CLI's config and this process's RNG states."""
    model.dp.synchronize()
    step = model.trainstep
    transform = model.transform
    return {
        "model": model.network.state_dict(),
        "optimizer": model.optimizer.state_dict(),
        "schedule": model.schedule.state_dict() if model.schedule is not None else None,
        "scaler": step.scaler.state_dict() if step.scaler is not None else None,
        "sampler": model.loader.state_dict() if model.loader is not None else None,
        "transform": transform.state_dict() if hasattr(transform, "state_dict") else None,
        "global_step": model.global_step,
        "world_size": model.comm.size,
        "config": model.config,  # the CLI's flags, recorded in meta.json
        "preprocess": model.preprocess.to_dict() if model.preprocess is not None else None,
        "rng": random.rng_states(),
    }


def load_training_state(model, state: dict) -> None:
    """Restore ``training_state``'s output (this rank's: ``checkpoint.load(path, rank)``)."""
    model.trainstep.forget_graphs()
    model.network.load_state_dict(state["model"])
    model.optimizer.load_state_dict(state["optimizer"])
    if state.get("schedule") is not None and model.schedule is not None:
        model.schedule.load_state_dict(state["schedule"])
    scaler = model.trainstep.scaler
    if state.get("scaler") is not None and scaler is not None:
        scaler.load_state_dict(state["scaler"])
    if state.get("sampler") is not None and model.sampler is not None:
        model.sampler.load_state_dict(state["sampler"])
    if state.get("transform") is not None and hasattr(model.transform, "load_state_dict"):
        model.transform.load_state_dict(state["transform"])
    model.global_step = int(state.get("global_step", 0))
    if state.get("preprocess") is not None:
        from ..data.preprocess import Preprocess

        model.preprocess = Preprocess.from_dict(state["preprocess"])
    if state.get("rng") is not None:
        random.set_rng_states(state["rng"])
