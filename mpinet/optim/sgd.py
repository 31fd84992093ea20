"""SGD with momentum, dampening, Nesterov and (L2) weight decay: torch.optim.SGD's update."""
from __future__ import annotations

from ..flat import FlatParameters
from .functional import sgd_update_
from .hyper import sgd_hyper
from .optimizer import Optimizer


class SGD(Optimizer):
    """``SGD(params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, flat=None)``.

    ``params``: a list of Parameters or a FlatParameters (then one update over the flat buffer).
    State per parameter: ``momentum_buffer`` (only when momentum != 0), created on the first step
    equal to that step's (decayed) gradient, as in PyTorch.
    """

    hyper_names = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False,
                 flat: FlatParameters | None = None):
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: momentum and weight_decay must be >= 0, got momentum="
                             f"{momentum}, weight_decay={weight_decay}")
        if nesterov and (momentum == 0 or dampening != 0):
            raise ValueError(f"SGD: Nesterov momentum needs momentum > 0 and dampening = 0, got "
                             f"momentum={momentum}, dampening={dampening}")
        super().__init__(params, lr, flat=flat)
        self.momentum = float(momentum)
        self.dampening = float(dampening)
        self.weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)

    def _buffer_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum != 0 else ()

    def _update_(self, p, g, state: dict, step: int) -> None:
        sgd_update_(p, g, state.get("momentum_buffer"), self.lr, self.momentum, self.dampening,
                    self.weight_decay, self.nesterov, first_step=step == 1,
                    hyper=self._device_hyper(p, step))

    def _device_hyper_values(self, step: int) -> tuple:
        return sgd_hyper(self.lr)
