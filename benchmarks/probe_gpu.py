"""Where a training step's time goes on the GPU: matmul dtypes and per-part forward/backward.

    python benchmarks/probe_gpu.py
Times with CUDA events after warm-up (median of 10); prints one line per measurement.
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("CUPY_TF32", "1")

import cupy as cp
import numpy as np

from mpinet import amp, backend
from mpinet.autograd import Variable
from mpinet.models import build_model
from mpinet.ops import loss as loss_ops


def timed(fn, n=10, warm=3):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(n):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(cp.cuda.get_elapsed_time(a, b))
    return statistics.median(ts)


def main():
    backend.select_device(0, "gpu")
    bf16 = backend.bfloat16()
    for dt in (np.float32, np.float16, bf16):
        a = cp.asarray(np.random.rand(64, 25088).astype(np.float32)).astype(dt)
        w = cp.asarray(np.random.rand(4096, 25088).astype(np.float32)).astype(dt)
        ms = timed(lambda a=a, w=w: a @ w.T)
        print(f"matmul (64x25088)@(25088x4096) {np.dtype(dt).name}: {ms:.3f} ms "
              f"({2 * 64 * 25088 * 4096 / ms / 1e9:.1f} TFLOP/s)", flush=True)
    for name in ("vgg16", "resnet50"):
        net = build_model(name, num_classes=1000).to(backend.current())
        x = cp.random.standard_normal((64, 3, 224, 224), dtype=cp.float32)
        y = cp.random.randint(0, 1000, 64).astype(cp.int64)
        for precision in ("fp32", "bf16"):
            def fwd(net=net, x=x, precision=precision):
                with amp.autocast(precision):
                    return net(Variable(x))

            def step(fwd=fwd, y=y):
                out = fwd()
                loss_ops.cross_entropy(amp.cast(out, np.dtype(np.float32)), y).backward()

            f = timed(fwd)
            s = timed(step)
            print(f"{name} {precision}: forward {f:.2f} ms, forward+backward {s:.2f} ms",
                  flush=True)
        if name == "vgg16":
            feats = net.features
            with amp.autocast("bf16"):
                print("vgg16 bf16 features forward "
                      f"{timed(lambda feats=feats, x=x: feats(Variable(x))):.2f} ms",
                      flush=True)


if __name__ == "__main__":
    main()
