"""Convolution forward / data-grad / weight-grad: mpinet's cuDNN path next to PyTorch's, same
process, same GPU, ResNet-style shapes, float32 (TF32 allowed in both) and bfloat16.

    python benchmarks/conv_bench.py                 # full table
    python benchmarks/conv_bench.py --dtypes bf16 --trials 10

Each number is the median over ``--trials`` of (time of ``--iters`` back-to-back calls) / iters,
measured with CUDA events on the default stream after a warm-up, so a call costs
max(host overhead, GPU time), as it does inside a training step. "ours" times the public
functions (output and workspace allocation included) with the heuristic plan (benchmark off)
and with the autotuned plan (benchmark on, like torch.backends.cudnn.benchmark, which is on for
PyTorch). speed = torch time / our time (>= 0.9 is the target). Both sides use NCHW tensors.
Needs cupy, torch and nvidia-cudnn-frontend 1.23.
"""
from __future__ import annotations

import argparse
import statistics
import time

import cupy as cp
import numpy as np
import torch
import torch.nn.functional as F

from mpinet.kernels import cudnn as mpinet_cudnn

# name: (N, C, H, W, K, R, stride, padding)
SHAPES = {
    "c64_32x32_3x3": (128, 64, 32, 32, 64, 3, 1, 1),
    "c128_16x16_3x3": (128, 128, 16, 16, 128, 3, 1, 1),
    "c64-128_3x3_s2": (128, 64, 32, 32, 128, 3, 2, 1),
    "c64-128_1x1_s2": (128, 64, 32, 32, 128, 1, 2, 0),
    "stem_224_7x7_s2": (64, 3, 224, 224, 64, 7, 2, 3),
    "c256_14x14_3x3": (64, 256, 14, 14, 256, 3, 1, 1),
}
DTYPES = {"fp32": (cp.float32, torch.float32), "bf16": (None, torch.bfloat16)}


def _cupy_dtype(name):
    if name == "bf16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(DTYPES[name][0])


def _cupy_random(shape, dtype, rng):
    a = rng.standard_normal(shape).astype(np.float32)
    return cp.asarray(a.astype(dtype))  # rounded on the host: works for any dtype CuPy holds


def _time(fn, iters, trials, event_cls, sync):
    fn()  # warm-up (graph build / torch autotune happened before)
    sync()
    samples = []
    for _ in range(trials):
        start, stop = event_cls(), event_cls()
        start.record()
        for _ in range(iters):
            fn()
        stop.record()
        stop.synchronize()
        samples.append(_elapsed(start, stop) / iters)
    return statistics.median(samples)


def _elapsed(start, stop):
    if isinstance(start, torch.cuda.Event):
        return start.elapsed_time(stop)
    return cp.cuda.get_elapsed_time(start, stop)


def _sync():
    cp.cuda.Device().synchronize()
    torch.cuda.synchronize()


def bench_shape(name, dt, args, rows):
    n, c, h, w, k, r, s, p = SHAPES[name]
    rng = np.random.default_rng(0)
    cdt = _cupy_dtype(dt)
    x = _cupy_random((n, c, h, w), cdt, rng)
    wt = _cupy_random((k, c, r, r), cdt, rng)
    st, pd, dl = (s, s), (p, p), (1, 1)
    y_shape = mpinet_cudnn.output_size(x.shape, wt.shape, st, pd, dl)
    gy = _cupy_random(y_shape, cdt, rng)

    tdt = DTYPES[dt][1]
    tx = torch.randn(n, c, h, w, device="cuda", dtype=tdt)
    tw = torch.randn(k, c, r, r, device="cuda", dtype=tdt)
    tgy = torch.randn(*y_shape, device="cuda", dtype=tdt)

    ours = {
        "fwd": lambda: mpinet_cudnn.conv_fprop(x, wt, st, pd, dl, 1),
        "dgrad": lambda: mpinet_cudnn.conv_dgrad(gy, wt, x.shape, st, pd, dl, 1),
        "wgrad": lambda: mpinet_cudnn.conv_wgrad(x, gy, wt.shape, st, pd, dl, 1),
    }
    bwd = torch.ops.aten.convolution_backward
    theirs = {
        "fwd": lambda: F.conv2d(tx, tw, None, st, pd, dl, 1),
        "dgrad": lambda: bwd(tgy, tx, tw, None, st, pd, dl, False, [0, 0], 1,
                             [True, False, False]),
        "wgrad": lambda: bwd(tgy, tx, tw, None, st, pd, dl, False, [0, 0], 1,
                             [False, True, False]),
    }
    flops = 2 * n * k * y_shape[2] * y_shape[3] * c * r * r
    for op in ("fwd", "dgrad", "wgrad"):
        times = {}
        for mode in (False, True):
            mpinet_cudnn.benchmark = mode
            t0 = time.perf_counter()
            ours[op]()
            _sync()
            build_s = time.perf_counter() - t0
            times["heur" if not mode else "tuned"] = _time(ours[op], args.iters, args.trials,
                                                           cp.cuda.Event, _sync)
            times[f"build_{'tuned' if mode else 'heur'}"] = build_s
        for _ in range(3):  # let torch's cudnn.benchmark pick its algorithm
            theirs[op]()
        _sync()
        times["torch"] = _time(theirs[op], args.iters, args.trials,
                               lambda: torch.cuda.Event(enable_timing=True), _sync)
        best = min(times["heur"], times["tuned"])
        rows.append((name, dt, op, times["heur"], times["tuned"], times["torch"],
                     times["torch"] / times["tuned"], times["torch"] / best,
                     flops / times["tuned"] / 1e9, times["build_heur"], times["build_tuned"]))
        print("  ".join(str(v) if not isinstance(v, float) else f"{v:.4f}" for v in rows[-1]),
              flush=True)


def host_overhead(args):
    """Per-call wall time on a tiny conv (GPU work ~ nothing): the host cost of one call."""
    x = cp.asarray(np.random.default_rng(0).standard_normal((1, 8, 8, 8)).astype(np.float32))
    w = cp.asarray(np.random.default_rng(1).standard_normal((8, 8, 3, 3)).astype(np.float32))
    tx, tw = torch.randn(1, 8, 8, 8, device="cuda"), torch.randn(8, 8, 3, 3, device="cuda")
    out = {}
    for label, fn in (("ours_heur", lambda: mpinet_cudnn.conv_fprop(x, w, 1, 1, 1, 1)),
                      ("ours_tuned", lambda: mpinet_cudnn.conv_fprop(x, w, 1, 1, 1, 1)),
                      ("torch", lambda: F.conv2d(tx, tw, None, 1, 1))):
        mpinet_cudnn.benchmark = label == "ours_tuned"
        for _ in range(20):
            fn()
        _sync()
        t0 = time.perf_counter()
        for _ in range(2000):
            fn()
        _sync()
        out[label] = (time.perf_counter() - t0) / 2000 * 1e6
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    ap.add_argument("--dtypes", nargs="*", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--trials", type=int, default=25)
    args = ap.parse_args()

    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    mpinet_cudnn.allow_tf32 = True
    import cudnn
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__} (cuDNN "
          f"{torch.backends.cudnn.version()}), cupy {cp.__version__}, cudnn-frontend "
          f"{cudnn.__version__} (cuDNN {cudnn.backend_version()})")
    rows = []
    for dt in args.dtypes:
        for name in args.shapes:
            bench_shape(name, dt, args, rows)
    hdr = ("shape", "dtype", "op", "ours_heur_ms", "ours_tuned_ms", "torch_ms", "speed_tuned",
           "speed_best", "TFLOP/s", "build_heur_s", "build_tuned_s")
    print()
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for row in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row)
              + " |")
    print()
    for label, idx in (("heuristic plan (default)", 3), ("autotuned plan", 4)):
        speed = [row[5] / row[idx] for row in rows]
        print(f"speed torch/ours, {label}: geomean {np.exp(np.mean(np.log(speed))):.3f}, "
              f"min {min(speed):.3f}, rows >= 0.9: {sum(v >= 0.9 for v in speed)}/{len(speed)}")
    print(f"graphs by execution path: {mpinet_cudnn.cache_info()}")
    ho = host_overhead(args)
    print("host overhead per call (us, tiny fp32 conv): "
          + ", ".join(f"{k} {v:.1f}" for k, v in ho.items()))


if __name__ == "__main__":
    main()
