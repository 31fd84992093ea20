"""Fused kernels (mpinet.kernels, mpinet.optim.kernels) next to PyTorch's CUDA kernels, same
process: batch norm train forward/backward, ReLU backward, GELU, and one SGD/Adam step over a flat
ResNet-18-sized buffer (11.7M parameters, PyTorch with fused=True on one flat parameter).

    python benchmarks/fused_bench.py

Each number: median over 15 trials of (10 back-to-back calls) / 10, CUDA events, after warm-up.
speed = torch time / our time.
"""
from __future__ import annotations

import statistics

import cupy as cp
import numpy as np
import torch

from mpinet.kernels import activation, batch_norm
from mpinet.optim import kernels as optim_kernels


def _time(fn, iters=10, trials=15):
    for _ in range(3):
        fn()
    cp.cuda.Device().synchronize()
    torch.cuda.synchronize()
    samples = []
    for _ in range(trials):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(iters):
            fn()
        stop.record()
        stop.synchronize()
        samples.append(cp.cuda.get_elapsed_time(start, stop) / iters)
    return statistics.median(samples)


def _bf16():
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


def main():
    rows = []
    rng = np.random.default_rng(0)
    aten = torch.ops.aten
    for dname, cdt, tdt in (("fp32", np.dtype(np.float32), torch.float32),
                            ("bf16", _bf16(), torch.bfloat16)):
        for shape in ((128, 64, 32, 32), (128, 256, 8, 8)):
            c = shape[1]
            x = cp.asarray(rng.standard_normal(shape).astype(np.float32).astype(cdt))
            gy = cp.asarray(rng.standard_normal(shape).astype(np.float32).astype(cdt))
            g, b = cp.ones(c, cp.float32), cp.zeros(c, cp.float32)
            tx = torch.randn(*shape, device="cuda", dtype=tdt)
            tgy = torch.randn(*shape, device="cuda", dtype=tdt)
            tg, tb = torch.ones(c, device="cuda"), torch.zeros(c, device="cuda")
            rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
            _, mean, invstd, _, _ = batch_norm.batch_norm_train(x, g, b, 1e-5)
            _, tmean, tinv = aten.native_batch_norm(tx, tg, tb, rm, rv, True, 0.1, 1e-5)
            tag = f"{dname} {shape}"
            rows.append((f"bn_train_fwd {tag}",
                         _time(lambda x=x, g=g, b=b: batch_norm.batch_norm_train(x, g, b, 1e-5)),
                         _time(lambda tx=tx, tg=tg, tb=tb, rm=rm, rv=rv: aten.native_batch_norm(
                             tx, tg, tb, rm, rv, True, 0.1, 1e-5))))
            rows.append((f"bn_train_bwd {tag}",
                         _time(lambda x=x, gy=gy, g=g, mean=mean, invstd=invstd:
                               batch_norm.batch_norm_backward(x, gy, g, mean, invstd)),
                         _time(lambda tgy=tgy, tx=tx, tg=tg, rm=rm, rv=rv, tmean=tmean,
                                      tinv=tinv: aten.native_batch_norm_backward(
                             tgy, tx, tg, rm, rv, tmean, tinv, True, 1e-5,
                             [True, True, True]))))
            rows.append((f"relu_bwd {tag}",
                         _time(lambda x=x, gy=gy: activation.relu_backward(x, gy)),
                         _time(lambda tgy=tgy, tx=tx: aten.threshold_backward(tgy, tx, 0))))
            rows.append((f"gelu_fwd {tag}", _time(lambda x=x: activation.gelu_forward(x)),
                         _time(lambda tx=tx: torch.nn.functional.gelu(tx))))
    n = 11_689_512  # ResNet-18 parameters
    p, gr = cp.asarray(rng.standard_normal(n), cp.float32), cp.asarray(
        rng.standard_normal(n), cp.float32)
    buf, m, v = cp.zeros(n, cp.float32), cp.zeros(n, cp.float32), cp.zeros(n, cp.float32)
    tp = torch.nn.Parameter(torch.randn(n, device="cuda"))
    tp.grad = torch.randn(n, device="cuda")
    sgd = torch.optim.SGD([tp], lr=0.1, momentum=0.9, weight_decay=5e-4, fused=True)
    rows.append(("sgd_momentum_step 11.7M fp32",
                 _time(lambda: optim_kernels.sgd_update_(p, gr, buf, 0.1, 0.9, 0.0, 5e-4, False)),
                 _time(sgd.step)))
    adam = torch.optim.AdamW([tp], lr=1e-3, weight_decay=1e-2, fused=True)
    rows.append(("adamw_step 11.7M fp32",
                 _time(lambda: optim_kernels.adam_update_(p, gr, m, v, 1e-3, 0.9, 0.999, 1e-8,
                                                          1e-2, 5, True)),
                 _time(adam.step)))
    print("| kernel | ours_ms | torch_ms | speed |\n|---|---|---|---|")
    for name, ours, theirs in rows:
        print(f"| {name} | {ours:.4f} | {theirs:.4f} | {theirs / ours:.2f} |")


if __name__ == "__main__":
    main()
