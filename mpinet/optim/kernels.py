"""The optimizers' fused GPU updates, in place over flat buffers (one launch for all parameters):
PyTorch's SGD (momentum, dampening, Nesterov, weight decay) and Adam/AdamW (bias correction).
Called by ``optim.functional`` on CuPy arrays; like every kernel module, importing it loads no
CUDA (see mpinet.kernels._compile).
"""
from __future__ import annotations

import numpy as np

from ..kernels._compile import check_float, cp, elementwise_kernel, io_view
from .hyper import HYPER_SIZE, adam_hyper, sgd_hyper


def _check_flat(where, p, *others):
    for name, a in others:
        if a.shape != p.shape:
            raise ValueError(f"{where}: {name} has shape {a.shape}, expected the parameter's "
                             f"shape {p.shape}")


def write_hyper_(hyper, values) -> None:
    """hyper[:len(values)] = values, by one launch with the values as kernel arguments (no host
    copy, so nothing synchronises)."""
    v = [float(x) for x in values] + [0.0] * (HYPER_SIZE - len(values))
    k = elementwise_kernel("write_hyper", "float64 a, float64 b, float64 c, float64 d",
                           "raw float64 h", "h[0] = a; h[1] = b; h[2] = c; h[3] = d;")
    k(*v, hyper, size=1)


def _hyper_or_new(hyper, values):
    """The caller's hyper array (already written), or a new one holding ``values``."""
    if hyper is not None:
        return hyper
    if cp().cuda.get_current_stream().is_capturing():
        raise RuntimeError("an optimizer update inside a CUDA-graph capture needs its "
                           "hyper-parameters in a device array (hyper=...); the Optimizer "
                           "classes pass one")
    hyper = cp().empty(HYPER_SIZE, dtype=np.float64)
    write_hyper_(hyper, values)
    return hyper


def sgd_update_(p, g, buf, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                first_step=False, hyper=None):
    """PyTorch's SGD step, in place on p (and buf):
        d = g + weight_decay * p
        buf = d on the first step, else momentum * buf + (1 - dampening) * d
        p -= lr * (d + momentum * buf if nesterov else buf)
    With momentum 0, buf may be None and p -= lr * d. Pass first_step=True on the first step
    (PyTorch starts buf as a copy of d, which differs from a zero buffer when dampening != 0).
    ``hyper``: a device array holding ``sgd_hyper(lr)``, read at run time; None: made from lr."""
    check_float("sgd_update_", p, g)
    hp = _hyper_or_new(hyper, sgd_hyper(lr))
    if momentum == 0:
        _check_flat("sgd_update_", p, ("grad", g))
        k = elementwise_kernel("sgd_plain", "G g, raw float64 hp, float64 wd", "P p",
                               "typedef mpn_acc<P>::type A; A pv = mpn_ld<A>(p); "
                               "mpn_put(p, pv - A(hp[0]) * (mpn_ld<A>(g) + A(wd) * pv));")
        k(io_view(g), hp, float(weight_decay), io_view(p))
        return p
    if buf is None:
        raise ValueError("sgd_update_: momentum != 0 needs a momentum buffer, got None")
    _check_flat("sgd_update_", p, ("grad", g), ("momentum buffer", buf))
    k = elementwise_kernel("sgd_momentum",
                           "G g, raw float64 hp, float64 mom, float64 one_m_damp, float64 wd, "
                           "int32 nesterov, int32 first", "P p, B buf",
                           "typedef mpn_acc<P>::type A; A pv = mpn_ld<A>(p); "
                           "A d = mpn_ld<A>(g) + A(wd) * pv; "
                           "A b = first ? d : A(mom) * mpn_ld<A>(buf) + A(one_m_damp) * d; "
                           "mpn_put(buf, b); "
                           "mpn_put(p, pv - A(hp[0]) * (nesterov ? d + A(mom) * b : b));")
    # 1 - dampening in float64 on the host, as PyTorch does (1 - 0.999f in float32 is 1e-5 off)
    k(io_view(g), hp, float(momentum), 1.0 - float(dampening), float(weight_decay),
      int(bool(nesterov)), int(bool(first_step)), io_view(p), io_view(buf))
    return p


def adam_update_(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, decoupled, hyper=None):
    """PyTorch's Adam (decoupled=False) / AdamW (decoupled=True) step, in place on p, m, v.
    ``step`` is the 1-based step count after this update (for bias correction). ``hyper``: a
    device array holding ``adam_hyper(lr, beta1, beta2, weight_decay, step)``, read at run
    time; None: made from the arguments."""
    check_float("adam_update_", p, g, m, v)
    _check_flat("adam_update_", p, ("grad", g), ("exp_avg", m), ("exp_avg_sq", v))
    hp = _hyper_or_new(hyper, adam_hyper(lr, beta1, beta2, weight_decay, step))
    k = elementwise_kernel(
        "adam",
        "G g, raw float64 hp, float64 wd, float64 b1, float64 one_m_b1, float64 b2, "
        "float64 one_m_b2, float64 eps, int32 decoupled", "P p, M m, V v",
        "typedef mpn_acc<P>::type A; A pv = mpn_ld<A>(p); A gv = mpn_ld<A>(g); "
        "if (decoupled) pv = pv * A(hp[0]); else gv = gv + A(wd) * pv; "
        "A mv = A(b1) * mpn_ld<A>(m) + A(one_m_b1) * gv; "
        "A vv = A(b2) * mpn_ld<A>(v) + A(one_m_b2) * gv * gv; "
        "mpn_put(m, mv); mpn_put(v, vv); "
        "mpn_put(p, pv - A(hp[1]) * mv / (sqrt(vv) / A(hp[2]) + A(eps)));")
    # 1 - beta in float64 on the host, as PyTorch does: 1 - beta2 in float32 is 1e-5 off,
    # which shows in v.
    k(io_view(g), hp, float(weight_decay), float(beta1), 1.0 - beta1, float(beta2), 1.0 - beta2,
      float(eps), int(bool(decoupled)), io_view(p), io_view(m), io_view(v))
    return p
