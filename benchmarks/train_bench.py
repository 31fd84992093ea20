"""Training-step throughput of mpinet on synthetic data, one MPI rank per GPU.

The same measurement as benchmarks/anchors/torch_ddp_bench.py (fixed random batch on the device,
SGD momentum 0.9, warm-up steps, then timed steps), so the two can run side by side:

    mpirun --allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE=0 -n 2 \
        python benchmarks/train_bench.py --model resnet50 --batch 64 --size 224 --precision bf16

Prints one line per run with img/s over all ranks and ms/step; --out appends a JSON line
(what `python -m mpinet.plot --scaling` and benchmarks/scaling.py read).
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mpi4py import MPI

from mpinet import backend
from mpinet.comm import create_communicator, topology
from mpinet.comm.failure import install_abort_handler


def parser():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=128, help="per GPU")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--dp-mode", default="backward", choices=["backward", "forward", "sync"])
    p.add_argument("--comm", default="auto")
    p.add_argument("--bucket-mb", type=float, default=25.0)
    p.add_argument("--steps", type=int, default=30, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed windows; the median is reported (host-bound steps vary by tens of "
                        "percent from one second to the next on the shared GPU machines)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None)
    p.add_argument("--cuda-graph", action="store_true",
                   help="replay each step as one CUDA graph after warm-up "
                        "(mpinet.training.cuda_graph)")
    p.add_argument("--stem", default="imagenet", choices=["imagenet", "cifar"],
                   help="ResNet stem; imagenet (7x7/2 conv + max-pool) is torchvision's, which the "
                        "anchor torch_ddp_bench.py trains at every image size")
    return p


def setup(a):
    """(comm, backend, model, x, y, global_count) for the parsed arguments ``a``."""
    world = MPI.COMM_WORLD
    install_abort_handler(world)
    os.environ.setdefault("CUPY_TF32", "1")  # like torch's allow_tf32 in the anchor
    topo = topology.build(world)[0]
    be = backend.select_device(topo.local_rank, a.device)
    comm = create_communicator(a.comm, world)

    from mpinet.training import Model
    from mpinet.models import build_model

    opts = {"stem": a.stem} if a.model.startswith("resnet") else {}
    net = build_model(a.model, num_classes=a.classes, in_channels=3, input_size=a.size, **opts)
    model = Model(net, comm)
    model.compile("sgd", lr=0.1, momentum=0.9, precision=a.precision, dp_mode=a.dp_mode,
                  bucket_mb=a.bucket_mb, cuda_graph=a.cuda_graph)
    xp = be.xp
    rng = xp.random.default_rng(comm.rank) if hasattr(xp.random, "default_rng") else xp.random
    x = rng.standard_normal((a.batch, 3, a.size, a.size), dtype=xp.float32)
    y = xp.asarray(rng.integers(0, a.classes, size=(a.batch,)), dtype=xp.int64)
    return comm, be, model, x, y, a.batch * comm.size


def main():
    a = parser().parse_args()
    world = MPI.COMM_WORLD
    comm, be, model, x, y, global_count = setup(a)

    for _ in range(a.warmup):
        model.train_step(x, y, global_count)
    model.dp.synchronize()
    backend.synchronize()
    windows = []
    for _ in range(a.repeats):
        world.Barrier()
        t = time.perf_counter()
        for _ in range(a.steps):
            model.train_step(x, y, global_count)
        model.dp.synchronize()
        backend.synchronize()
        windows.append(time.perf_counter() - t)
    dt = statistics.median(windows)
    if comm.rank == 0:
        rec = {"framework": "mpinet", "model": a.model, "batch_per_gpu": a.batch, "size": a.size,
               "stem": a.stem if a.model.startswith("resnet") else None,
               "precision": a.precision, "dp_mode": a.dp_mode, "comm": comm.name,
               "cuda_graph": a.cuda_graph,
               "gpus": comm.size, "device": str(be), "img_per_s": global_count * a.steps / dt,
               "ms_per_step": dt / a.steps * 1e3,
               "ms_per_step_windows": [round(w / a.steps * 1e3, 3) for w in windows]}
        graph = " cuda-graph" if a.cuda_graph else ""
        print(f"mpinet {a.model} batch {a.batch}/gpu {a.size}px {a.precision} mode={a.dp_mode} "
              f"comm={comm.name}{graph} gpus={comm.size}: {rec['img_per_s']:.0f} img/s, "
              f"{rec['ms_per_step']:.2f} ms/step (median of {a.repeats} windows of {a.steps} "
              f"steps; min {min(windows) / a.steps * 1e3:.2f})", flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
