"""Gradient clipping, by global norm and by value.

Applied to the *reduced* gradient, after the allreduce and before the update: every rank holds
the same global gradient then, so every rank computes the same norm and the same clipped
gradient, with no extra communication (clipping each rank's local gradient before the sum would
clip something else, and differently on every rank).

    clipper = GradClipper(clip_norm=1.0)     # or clip_value=0.5, or both (value first)
    total_norm = clipper(flat.grad)          # in the training step, right after the allreduce

Norm clipping follows torch.nn.utils.clip_grad_norm_: g *= max_norm / (||g|| + 1e-6) when that
factor is below 1. The factor is computed on the device (no host sync on the GPU).
"""
from __future__ import annotations

from .. import backend


def _arrays(grads) -> list:
    """A flat gradient array, a list of arrays, or Parameters (their .grad, where set)."""
    if hasattr(grads, "shape"):
        return [grads]
    out = []
    for g in grads:
        g = getattr(g, "grad", g)
        if g is not None:
            out.append(g)
    return out


def global_norm(grads):
    """sqrt(sum of squares) over all gradient arrays, as a 0-d device array (float64 on CPU)."""
    arrays = _arrays(grads)
    if not arrays:
        return 0.0
    xp = backend.xp_of(arrays[0])
    acc = "float64" if arrays[0].dtype.itemsize >= 8 else "float32"
    return xp.sqrt(sum(xp.vdot(a.ravel(), a.ravel()).astype(acc) for a in arrays))


def clip_grad_norm_(grads, max_norm: float, eps: float = 1e-6):
    """Scale gradients in place so their global norm is at most ``max_norm``; returns the norm
    before clipping (a 0-d array)."""
    if not max_norm > 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be > 0, got {max_norm}")
    arrays = _arrays(grads)
    total = global_norm(arrays)
    if not arrays:
        return total
    xp = backend.xp_of(arrays[0])
    coef = xp.minimum(max_norm / (total + eps), 1.0)
    for a in arrays:
        a *= coef.astype(a.dtype)
    return total


def clip_grad_value_(grads, clip_value: float) -> None:
    """Clamp every gradient element into [-clip_value, clip_value] in place."""
    if not clip_value > 0:
        raise ValueError(f"clip_grad_value_: clip_value must be > 0, got {clip_value}")
    for a in _arrays(grads):
        xp = backend.xp_of(a)
        xp.clip(a, -clip_value, clip_value, out=a)


class GradClipper:
    """The clipping a training step applies to the reduced gradient (value, then norm)."""

    def __init__(self, clip_norm: float | None = None, clip_value: float | None = None):
        for name, v in (("clip_norm", clip_norm), ("clip_value", clip_value)):
            if v is not None and not float(v) > 0:
                raise ValueError(f"{name} must be > 0 (or None for no clipping), got {v}")
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.clip_value = None if clip_value is None else float(clip_value)
        self.last_norm = None  # the global norm before norm clipping, last step (device 0-d)

    def __bool__(self) -> bool:
        return self.clip_norm is not None or self.clip_value is not None

    def __call__(self, grad) -> None:
        """Clip ``grad`` in place: an array, or a FlatParameters (its flat gradient buffer)."""
        if not hasattr(grad, "shape") and hasattr(grad, "grad"):
            grad = grad.grad
        if self.clip_value is not None:
            clip_grad_value_(grad, self.clip_value)
        if self.clip_norm is not None:
            self.last_norm = clip_grad_norm_(grad, self.clip_norm)

    def __repr__(self) -> str:
        return f"GradClipper(clip_norm={self.clip_norm}, clip_value={self.clip_value})"


def build_clipper(clip_norm, clip_value, dp_mode: str = "backward") -> GradClipper | None:
    """The clipper ``Model.compile(clip_norm=, clip_value=)`` installs, or None for none."""
    if clip_norm is None and clip_value is None:
        return None
    if dp_mode == "forward":
        raise ValueError("clip_norm/clip_value need the whole reduced gradient before the "
                         "update, but dp_mode='forward' updates each layer as its gradient "
                         "arrives; use dp_mode='backward' or 'sync' with clipping")
    return GradClipper(clip_norm, clip_value)
