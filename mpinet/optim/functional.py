"""In-place optimizer updates on raw arrays: PyTorch's SGD and Adam/AdamW formulas.

Each update works on whatever arrays it is handed: one parameter's arrays, or a whole
FlatParameters buffer (then the optimizer runs one update for the entire model). The signatures
are those of the fused GPU kernels in ``mpinet.optim.kernels``; on GPU arrays ``sgd_update_`` and
``adam_update_`` call those kernels (one launch over the flat buffer), on CPU they run the
``*_xp_`` versions below, a handful of vectorised NumPy ops writing into the state in place.
The ``*_xp_`` versions are written with ``xp`` and are also correct on CuPy (the GPU tests use
them as the reference for the fused kernels).

``g`` is never modified: it may be a view into a communication buffer.
"""
from __future__ import annotations

import math

from .. import backend
from . import kernels


def sgd_update_(p, g, buf, lr, momentum, dampening, weight_decay, nesterov,
                first_step=False, hyper=None) -> None:
    """One SGD step in place on ``p`` (and ``buf`` when momentum != 0). See ``sgd_update_xp_``.
    ``hyper``: GPU only, the device array the fused kernel reads lr from (see hyper.HYPER_SIZE)."""
    if backend.is_gpu_array(p):
        kernels.sgd_update_(p, g, buf, lr, momentum, dampening, weight_decay, nesterov,
                            first_step=first_step, hyper=hyper)
        return
    sgd_update_xp_(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first_step)


def adam_update_(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, decoupled,
                 hyper=None) -> None:
    """One Adam (decoupled=False) or AdamW (decoupled=True) step in place on p, m, v."""
    if backend.is_gpu_array(p):
        kernels.adam_update_(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, decoupled,
                             hyper=hyper)
        return
    adam_update_xp_(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, decoupled)


def sgd_update_xp_(p, g, buf, lr, momentum, dampening, weight_decay, nesterov,
                   first_step=False) -> None:
    """torch.optim.SGD's update (its docs, "Algorithm"), in place::

        d = g + weight_decay * p                      (if weight_decay != 0)
        buf = d  on the first step, else
        buf = momentum * buf + (1 - dampening) * d     (if momentum != 0)
        d = d + momentum * buf  if nesterov  else  buf (if momentum != 0)
        p = p - lr * d

    ``first_step=True`` on a parameter's first update (PyTorch starts the buffer as a copy of d,
    not from zeros). ``buf`` may be None when momentum == 0.
    """
    xp = backend.xp_of(p)
    d, own_d = g, False  # own_d: d is a temporary we may overwrite
    if weight_decay != 0:
        d = xp.multiply(p, weight_decay)
        d += g
        own_d = True
    if momentum != 0:
        if first_step:
            buf[...] = d
        elif dampening != 0:
            buf *= momentum
            buf += xp.multiply(d, 1 - dampening)
        else:
            buf *= momentum
            buf += d
        if nesterov:
            if own_d:
                d += xp.multiply(buf, momentum)
            else:
                d = xp.multiply(buf, momentum)
                d += g
                own_d = True
        else:
            d, own_d = buf, False
    if own_d:
        d *= lr
    else:
        d = xp.multiply(d, lr)
    p -= d


def adam_update_xp_(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, decoupled) -> None:
    """torch.optim.Adam / AdamW's update (their docs, "Algorithm"; amsgrad off), in place::

        p = p * (1 - lr * weight_decay)               (AdamW: decoupled=True)
        g = g + weight_decay * p                      (Adam: decoupled=False, L2 penalty)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p = p - lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

    ``step`` counts this step (1 on the first update) for the bias corrections.
    """
    if step < 1:
        raise ValueError(f"adam_update_: step must be >= 1 (the number of this update), got {step}")
    xp = backend.xp_of(p)
    if weight_decay != 0:
        if decoupled:
            p *= 1 - lr * weight_decay
        else:
            g = g + xp.multiply(p, weight_decay)  # a new array: the caller's g stays untouched
    m *= beta1
    tmp = xp.multiply(g, 1 - beta1)
    m += tmp
    v *= beta2
    xp.multiply(g, g, out=tmp)
    tmp *= 1 - beta2
    v += tmp
    step_size = lr / (1 - beta1 ** step)
    bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
    xp.sqrt(v, out=tmp)  # tmp = denom
    tmp /= bias_correction2_sqrt
    tmp += eps
    xp.divide(m, tmp, out=tmp)
    tmp *= step_size
    p -= tmp
