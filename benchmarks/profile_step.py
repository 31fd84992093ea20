"""Where a training step's time goes on the GPU: kernels per step, GPU busy time, host time.

    python3 benchmarks/profile_step.py --framework mpinet --model resnet18 --batch 128 --size 32
    python3 benchmarks/profile_step.py --framework torch  --model resnet18 --batch 128 --size 32

Runs the same step as benchmarks/train_bench.py (mpinet) or benchmarks/anchors/torch_ddp_bench.py
(torch, without the DDP wrapper) under torch.profiler, whose CUPTI tracing records every kernel
launched in the process, CuPy's and cuDNN's included. Prints, per step: wall time, kernel
launches, the sum of kernel durations (GPU busy) and wall minus busy (time the GPU waited for
the host: the launch-bound share), then the kernels with the most total time. With --host, also
the Python functions with the most host time in mpinet's step (cProfile).

Under mpirun (one rank per GPU) it profiles the data-parallel step (mpinet's DataParallel, or
torch's DDP wrapper like the anchor) and rank 0 also splits the GPU time into compute kernels
and NCCL kernels: NCCL time not overlapped by any compute kernel is communication the step
exposed; compute-kernel time that grows from 1 to N ranks is contention with NCCL (SMs, memory):

    mpirun -n 2 python3 benchmarks/profile_step.py --framework mpinet --model resnet50 \
        --batch 64 --size 224 --precision bf16 --classes 1000
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
    import torch
except ImportError:
    sys.exit("profile_step.py needs PyTorch for its profiler: pip install torch (the GPU "
             "machines have it); mpinet itself does not")


def mpinet_step(a):
    import train_bench

    args = train_bench.parser().parse_args(
        ["--model", a.model, "--batch", str(a.batch), "--size", str(a.size),
         "--precision", a.precision, "--classes", str(a.classes), "--stem", a.stem]
        + (["--cuda-graph"] if a.cuda_graph else []))
    comm, be, model, x, y, global_count = train_bench.setup(args)

    def step():
        model.train_step(x, y, global_count)

    from mpinet import backend

    return step, backend.synchronize


def _world():
    """(rank, size) from the MPI launcher's environment (Open MPI or MPICH/Hydra)."""
    env = os.environ
    rank = int(env.get("OMPI_COMM_WORLD_RANK", env.get("PMI_RANK", 0)))
    return rank, int(env.get("OMPI_COMM_WORLD_SIZE", env.get("PMI_SIZE", 1)))


def torch_step(a):
    import torchvision

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    m = getattr(torchvision.models, a.model)(num_classes=a.classes).cuda()
    rank, size = _world()
    if size > 1:  # the anchor's set-up (torch_ddp_bench.py)
        import torch.distributed as dist

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("nccl", rank=rank, world_size=size)
        m = torch.nn.parallel.DistributedDataParallel(m, device_ids=[torch.cuda.current_device()])
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


def _union(spans):
    """Merged, sorted intervals of a list of (start, end)."""
    merged = []
    for s, t in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], t)
        else:
            merged.append([s, t])
    return merged


def _length(merged):
    return sum(t - s for s, t in merged)


def _overlap(a, b):
    """Total length of the intersection of two merged interval lists."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0.0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def kernel_table(trace_path, steps):
    """(launches/step, stats in ms/step, per-name [count, us]) from a chrome trace.

    stats: busy (union of all GPU work: overlapping streams counted once), compute (sum of
    non-NCCL kernel durations), nccl (sum of NCCL kernel durations), nccl_exposed (NCCL time
    during which no compute kernel ran)."""
    with open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    per_name = collections.defaultdict(lambda: [0, 0.0])
    spans, nccl_spans, compute_spans = [], [], []
    for e in events:
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e:
            rec = per_name[e["name"][:90]]
            rec[0] += 1
            rec[1] += e["dur"]
            span = (e["ts"], e["ts"] + e["dur"])
            spans.append(span)
            (nccl_spans if "nccl" in e["name"].lower() else compute_spans).append(span)
    launches = sum(r[0] for r in per_name.values())
    nccl, compute = _union(nccl_spans), _union(compute_spans)
    t0 = min(sp[0] for sp in spans) if spans else 0.0
    # Each NCCL kernel: (start ms from the first kernel, ms, share of it with compute beside).
    timeline = [((a - t0) / 1e3, (b - a) / 1e3, _overlap([[a, b]], compute) / max(b - a, 1e-9))
                for a, b in sorted(nccl_spans)]
    ms = 1e3 * steps
    stats = {"busy": _length(_union(spans)) / ms,
             "compute": sum(t - s for s, t in compute_spans) / ms,
             "nccl": sum(t - s for s, t in nccl_spans) / ms,
             "nccl_exposed": (_length(nccl) - _overlap(nccl, compute)) / ms,
             "nccl_timeline": timeline}
    return launches / steps, stats, per_name


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
    p.add_argument("--cuda-graph", action="store_true", help="mpinet: replay the step as a "
                   "CUDA graph (kernels inside a graph are still traced one by one)")
    a = p.parse_args()

    rank, size = _world()
    torch.cuda.set_device(rank % torch.cuda.device_count())  # before CUDA starts: one GPU each
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

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(a.steps):
            step()
        sync()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        launches, stats, per_name = kernel_table(path, a.steps)
    if rank != 0:
        return
    busy = stats["busy"]
    tag = f"{a.framework} {a.model} {a.stem if a.framework == 'mpinet' else 'torchvision'} " \
          f"b{a.batch} {a.size}px {a.precision} ranks={size}"
    print(f"profile {tag}: wall {wall:.2f} ms/step, {launches:.0f} kernels+copies/step, "
          f"GPU busy {busy:.2f} ms/step, GPU waiting on host {max(wall - busy, 0):.2f} ms/step "
          f"({max(wall - busy, 0) / wall:.0%}); compute kernels {stats['compute']:.2f} ms/step, "
          f"NCCL kernels {stats['nccl']:.2f} ms/step of which {stats['nccl_exposed']:.2f} "
          f"with no compute beside them", flush=True)
    timeline = stats["nccl_timeline"]
    if timeline:
        per_step = len(timeline) // a.steps or 1
        print("  NCCL kernels of the last 2 steps (start ms, ms, share overlapped by compute): "
              + ", ".join(f"({t:.1f}, {d:.2f}, {o:.0%})" for t, d, o in timeline[-2 * per_step:]))
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
