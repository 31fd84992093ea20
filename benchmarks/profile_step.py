"""Where a training step's time goes on the GPU: kernels per step, GPU busy time, host time.

    python3 benchmarks/profile_step.py --framework mpinet --model resnet18 --batch 128 --size 32
    python3 benchmarks/profile_step.py --framework torch  --model resnet18 --batch 128 --size 32

Runs the same step as benchmarks/train_bench.py (mpinet) or ../shared/bench/torch_ddp_bench.py
(torch, without the DDP wrapper) under torch.profiler, whose CUPTI tracing records every kernel
launched in the process, CuPy's and cuDNN's included. Prints, per step: wall time, kernel
launches, the sum of kernel durations (GPU busy) and wall minus busy (time the GPU waited for
the host: the launch-bound share), then the kernels with the most total time. With --host, also
the Python functions with the most host time in mpinet's step (cProfile).
"""
import argparse
import cProfile
import collections
import json
import os
import pstats
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    import torch  # noqa: E402 - the profiler (CUPTI kernel trace); also the anchor framework
except ImportError:
    sys.exit("profile_step.py needs PyTorch for its profiler: pip install torch (the GPU "
             "machines have it); mpinet itself does not")


def mpinet_step(a):
    import train_bench  # noqa: PLC0415 - benchmarks/train_bench.py

    args = train_bench.parser().parse_args(
        ["--model", a.model, "--batch", str(a.batch), "--size", str(a.size),
         "--precision", a.precision, "--classes", str(a.classes), "--stem", a.stem])
    comm, be, model, x, y, global_count = train_bench.setup(args)

    def step():
        model.train_step(x, y, global_count)

    from mpinet import backend  # noqa: PLC0415

    return step, backend.synchronize


def torch_step(a):
    import torchvision  # noqa: PLC0415

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    m = getattr(torchvision.models, a.model)(num_classes=a.classes).cuda()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(a.batch, 3, a.size, a.size, device="cuda")
    y = torch.randint(0, a.classes, (a.batch,), device="cuda")
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.precision)

    def step():
        with torch.autocast("cuda", dtype=dt or torch.float32, enabled=dt is not None):
            loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, torch.cuda.synchronize


def kernel_table(trace_path, steps):
    with open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    per_name = collections.defaultdict(lambda: [0, 0.0])
    spans = []
    for e in events:
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e:
            rec = per_name[e["name"][:90]]
            rec[0] += 1
            rec[1] += e["dur"]
            spans.append((e["ts"], e["ts"] + e["dur"]))
    spans.sort()
    busy, end = 0.0, -1e30  # union of intervals: overlapping streams counted once
    for s, t in spans:
        if t > end:
            busy += t - max(s, end)
            end = t
    launches = sum(r[0] for r in per_name.values())
    return launches / steps, busy / steps / 1e3, per_name


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--framework", choices=["mpinet", "torch"], default="mpinet")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--stem", default="imagenet", choices=["imagenet", "cifar"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--host", action="store_true", help="also cProfile mpinet's host time")
    a = p.parse_args()

    torch.cuda.init()
    step, sync = (mpinet_step if a.framework == "mpinet" else torch_step)(a)
    for _ in range(10):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    wall = (time.perf_counter() - t) / a.steps * 1e3

    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(a.steps):
            step()
        sync()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        launches, busy, per_name = kernel_table(path, a.steps)
    tag = f"{a.framework} {a.model} {a.stem if a.framework == 'mpinet' else 'torchvision'} " \
          f"b{a.batch} {a.size}px {a.precision}"
    print(f"profile {tag}: wall {wall:.2f} ms/step, {launches:.0f} kernels+copies/step, "
          f"GPU busy {busy:.2f} ms/step, GPU waiting on host {max(wall - busy, 0):.2f} ms/step "
          f"({max(wall - busy, 0) / wall:.0%})", flush=True)
    top = sorted(per_name.items(), key=lambda kv: -kv[1][1])[:a.top]
    for name, (count, us) in top:
        print(f"  {us / a.steps / 1e3:7.3f} ms/step {count / a.steps:6.1f}x  {name}")
    print("  most launched:")
    for name, (count, us) in sorted(per_name.items(), key=lambda kv: -kv[1][0])[:a.top]:
        print(f"  {count / a.steps:6.1f}x {us / a.steps / 1e3:7.3f} ms/step  {name}")
    if a.host and a.framework == "mpinet":
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(a.steps):
            step()
        sync()
        pr.disable()
        st = pstats.Stats(pr)
        st.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
