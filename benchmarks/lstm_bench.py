"""LSTM forward + backward: mpinet's LSTM next to torch.nn.LSTM, same process, same device.
Default: the shape of issue 18 on the GPU (hidden 1024, input 1024, batch 64, sequence 128,
bfloat16, one layer, unidirectional) beside cuDNN.

    python benchmarks/lstm_bench.py                       # GPU, bf16, the issue's shape
    python benchmarks/lstm_bench.py --dtype fp32 --seq 64 --trials 5
    OMP_NUM_THREADS=1 python benchmarks/lstm_bench.py --device cpu --dtype fp32 \\
        --hidden 256 --input 64 --batch 32 --seq 64        # CPU, one thread each

Each number is the median over ``--trials`` of one forward + backward (loss = sum of outputs)
after ``--warmup`` untimed runs (CUDA events on the GPU, perf_counter on the CPU). speed = torch
time / our time (the issue's GPU target is >= 0.5). mpinet projects the inputs of all steps in
one matmul, runs each step as one recurrent matmul plus one fused gate kernel
(mpinet.kernels.recurrent) each way inside one op (no autograd node per step), and computes the
recurrent weight gradient of all steps as one matmul; cuDNN runs a persistent fused RNN kernel,
so on the GPU the gap is per-step launches. Needs torch (a CUDA build for --device gpu), and
cupy and ml_dtypes on the GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


def _time(fn, warmup: int, trials: int, sync) -> float:
    """Median milliseconds of fn() (sync() waits for the device's queued work)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        fn()
        sync()  # torch and cupy queue work: wait for both sides' kernels
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--input", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--trials", type=int, default=10)
    args = p.parse_args(argv)

    import torch

    from mpinet import amp, backend, nn
    from mpinet.autograd import Variable
    from mpinet.nn import init

    gpu = args.device == "gpu"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("lstm_bench: this torch has no CUDA; install a CUDA build of torch to "
                         "compare with cuDNN, or pass --device cpu")
    backend.select_device(0, args.device)
    if args.dtype == "bf16":
        np_dtype, t_dtype = backend.bfloat16(), torch.bfloat16
    else:
        np_dtype, t_dtype = np.dtype(np.float32), torch.float32

    init.manual_seed(0)
    ours = nn.LSTM(args.input, args.hidden).to()
    for prm in ours.parameters():  # the whole layer in the benchmark dtype, like torch's .to()
        prm.data = prm.data.astype(np_dtype)
    theirs = torch.nn.LSTM(args.input, args.hidden).to("cuda" if gpu else "cpu").to(t_dtype)
    x_host = np.random.default_rng(0).standard_normal((args.seq, args.batch, args.input))
    x_ours = backend.to_device(x_host.astype(np.float32)).astype(np_dtype)
    x_theirs = torch.tensor(x_host, dtype=torch.float32,
                            device="cuda" if gpu else "cpu").to(t_dtype)

    def step_ours():
        for prm in ours.parameters():
            prm.grad = None
        xv = Variable(x_ours, requires_grad=True)
        out, _ = ours(xv)
        amp.cast(out, np.dtype(np.float32)).sum().backward()  # the sum in fp32, as torch's

    def step_theirs():
        theirs.zero_grad(set_to_none=True)
        xt = x_theirs.detach().requires_grad_(True)
        out, _ = theirs(xt)
        out.float().sum().backward()

    def sync():
        if gpu:
            backend.synchronize()
            torch.cuda.synchronize()

    t_ours = _time(step_ours, args.warmup, args.trials, sync)
    t_theirs = _time(step_theirs, args.warmup, args.trials, sync)
    device = torch.cuda.get_device_name() if gpu else \
        f"cpu, torch threads {torch.get_num_threads()}"
    print(json.dumps({"shape": {"hidden": args.hidden, "input": args.input, "batch": args.batch,
                                "seq": args.seq}, "dtype": args.dtype,
                      "mpinet_ms": round(t_ours, 3), "torch_ms": round(t_theirs, 3),
                      "speed_vs_torch": round(t_theirs / t_ours, 3), "device": device}))


if __name__ == "__main__":
    main()
