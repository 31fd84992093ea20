"""Adam (L2 weight decay folded into the gradient) and AdamW (decoupled weight decay)."""
from __future__ import annotations

from ..flat import FlatParameters
from .functional import adam_update_
from .hyper import adam_hyper
from .optimizer import Optimizer


class Adam(Optimizer):
    """``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, flat=None)``.

    torch.optim.Adam's update with bias correction (amsgrad not supported). ``weight_decay`` adds
    ``weight_decay * p`` to the gradient (L2 penalty). State per parameter: ``exp_avg`` (m) and
    ``exp_avg_sq`` (v); the step count is in the state dict's scalars.
    """

    hyper_names = ("lr", "beta1", "beta2", "eps", "weight_decay")
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 flat: FlatParameters | None = None):
        beta1, beta2 = betas
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: eps and weight_decay must be >= 0, got "
                             f"eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, lr, flat=flat)
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)

    def _buffer_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _update_(self, p, g, state: dict, step: int) -> None:
        adam_update_(p, g, state["exp_avg"], state["exp_avg_sq"], self.lr, self.beta1,
                     self.beta2, self.eps, self.weight_decay, step, self.decoupled,
                     hyper=self._device_hyper(p, step))

    def _device_hyper_values(self, step: int) -> tuple:
        return adam_hyper(self.lr, self.beta1, self.beta2, self.weight_decay, step)


class AdamW(Adam):
    """``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, flat=None)``.

    torch.optim.AdamW: ``p *= 1 - lr * weight_decay`` before the Adam step (decoupled decay).
    """

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2,
                 flat: FlatParameters | None = None):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay, flat=flat)
