"""Dynamic loss scaling for fp16 training (the algorithm of torch.amp.GradScaler).

fp16 underflows small gradients, so the loss is multiplied by ``scale`` before backward and the
gradients divided by it before the update. When a gradient overflows (inf/nan) the step is
skipped and the scale halved; after ``growth_interval`` clean steps it doubles. bf16 has fp32's
range and needs none of this (``enabled=False`` turns every method into a pass-through).

One step, split so data parallelism can agree on the overflow flag across ranks::

    scaler.scale(loss).backward()
    found_inf = scaler.unscale_(flat)        # this rank's flag (a CPU-GPU sync point)
    found_inf = <allreduce max over ranks>   # mpinet.training.TrainStep; skip on one process
    scaler.step(optimizer, found_inf)        # skipped when found_inf
    scaler.update(found_inf)                 # back off or grow the scale

Every rank must pass the same ``found_inf`` to ``step``/``update``, or the replicas diverge.
"""
from __future__ import annotations

from ..autograd import Parameter, Variable
from ..flat import FlatParameters
from .. import backend
from .optimizer import Optimizer


class LossScaler:
    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, enabled: bool = True):
        if init_scale <= 0 or growth_factor <= 1 or not 0 < backoff_factor < 1:
            raise ValueError(f"LossScaler: need init_scale > 0, growth_factor > 1 and "
                             f"0 < backoff_factor < 1; got {init_scale}, {growth_factor}, "
                             f"{backoff_factor}")
        if growth_interval <= 0:
            raise ValueError(f"LossScaler: growth_interval must be a positive number of steps, "
                             f"got {growth_interval}")
        self.scale_value = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.enabled = bool(enabled)
        self.growth_tracker = 0  # consecutive steps without overflow

    def scale(self, loss: Variable) -> Variable:
        """``loss * scale`` (a Variable to call backward on); the loss itself when disabled."""
        if not self.enabled:
            return loss
        return loss * self.scale_value

    def unscale_(self, grads) -> bool:
        """Divide gradients by the scale in place; return True if any is inf or nan (this rank).

        ``grads``: a FlatParameters or its ``.grad`` array (one multiply and one reduction over
        the flat gradient), a list of Parameters (those with grad None are skipped) or a list of
        arrays. Reading the
        flag back is a CPU-GPU sync point.
        """
        if not self.enabled:
            return False
        arrays = _grad_arrays(grads)
        if not arrays:
            return False
        xp = backend.xp_of(*arrays)
        # 1/scale is exact for powers of two (the default factors keep the scale one).
        inv_scale = 1.0 / self.scale_value
        finite = []
        for g in arrays:
            g *= inv_scale
            finite.append(xp.isfinite(g).all())
        # One host read for all the flags.
        return not bool(finite[0] if len(finite) == 1 else xp.stack(finite).all())

    def unscale_and_check(self, grads) -> bool:
        """``unscale_`` for a single process: the local flag is the global one."""
        return self.unscale_(grads)

    def step(self, optimizer: Optimizer, found_inf: bool) -> bool:
        """Run ``optimizer.step()`` unless ``found_inf``; return whether it stepped."""
        if found_inf:
            return False
        optimizer.step()
        return True

    def update(self, found_inf: bool) -> None:
        """Back off the scale after an overflow; grow it after ``growth_interval`` clean steps."""
        if not self.enabled:
            return
        if found_inf:
            self.scale_value *= self.backoff_factor
            self.growth_tracker = 0
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            self.scale_value *= self.growth_factor
            self.growth_tracker = 0

    def get_scale(self) -> float:
        return self.scale_value if self.enabled else 1.0

    def state_dict(self) -> dict:
        """JSON-able scalars: scale, growth_tracker and the settings."""
        return {"scale": self.scale_value, "growth_tracker": self.growth_tracker,
                "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "enabled": self.enabled}

    def load_state_dict(self, state: dict) -> None:
        self.scale_value = float(state["scale"])
        self.growth_tracker = int(state["growth_tracker"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self.enabled = bool(state["enabled"])

    def __repr__(self) -> str:
        return (f"LossScaler(scale={self.scale_value}, growth_tracker={self.growth_tracker}, "
                f"enabled={self.enabled})")


def _grad_arrays(grads) -> list:
    if isinstance(grads, FlatParameters):
        return [grads.grad]
    if hasattr(grads, "shape"):  # one array, e.g. a flat gradient buffer
        return [grads]
    grads = list(grads)
    if grads and isinstance(grads[0], Parameter):
        return [p.grad for p in grads if p.grad is not None]
    return grads
