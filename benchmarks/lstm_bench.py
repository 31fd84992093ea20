"""LSTM forward + backward: mpinet's fused-cell LSTM next to torch.nn.LSTM (cuDNN), same
process, same GPU. Default shape from issue 18: hidden 1024, input 1024, batch 64, sequence 128,
bfloat16, one layer, unidirectional.

    python benchmarks/lstm_bench.py                       # bf16, the issue's shape
    python benchmarks/lstm_bench.py --dtype fp32 --seq 64 --trials 5

Each number is the median over ``--trials`` of one forward + backward (loss = sum of outputs),
timed with CUDA events after ``--warmup`` untimed runs. speed = torch time / our time (the
issue's target is >= 0.5). mpinet runs the input projection of all 128 steps as one matmul,
each step as one recurrent matmul plus one fused gate kernel (mpinet.kernels.recurrent) each
way inside one op (no autograd node per step), and the recurrent weight gradient of all steps
as one matmul; cuDNN runs a persistent fused RNN kernel, so the gap is per-step launches.
Needs cupy, ml_dtypes and a CUDA build of torch.
"""
from __future__ import annotations

import argparse
import json
import statistics

import numpy as np


def _time(fn, warmup: int, trials: int, sync) -> float:
    import cupy as cp

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(trials):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        sync()  # torch runs on its own stream: wait for both sides' work
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--input", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--trials", type=int, default=10)
    args = p.parse_args(argv)

    import cupy as cp
    import torch

    from mpinet import amp, backend, nn
    from mpinet.autograd import Variable
    from mpinet.nn import init

    if not torch.cuda.is_available():
        raise SystemExit("lstm_bench: this torch has no CUDA; install a CUDA build of torch to "
                         "compare with cuDNN")
    backend.select_device(0, "gpu")
    if args.dtype == "bf16":
        import ml_dtypes

        np_dtype, t_dtype = np.dtype(ml_dtypes.bfloat16), torch.bfloat16
    else:
        np_dtype, t_dtype = np.dtype(np.float32), torch.float32

    init.manual_seed(0)
    ours = nn.LSTM(args.input, args.hidden).to()
    for prm in ours.parameters():  # the whole layer in the benchmark dtype, like torch's .to()
        prm.data = prm.data.astype(np_dtype)
    theirs = torch.nn.LSTM(args.input, args.hidden).cuda().to(t_dtype)
    x_host = np.random.default_rng(0).standard_normal((args.seq, args.batch, args.input))
    x_ours = cp.asarray(x_host.astype(np.float32)).astype(np_dtype) if args.dtype == "fp32" \
        else cp.asarray(x_host.astype(np_dtype))
    x_theirs = torch.tensor(x_host, dtype=torch.float32, device="cuda").to(t_dtype)

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
        cp.cuda.get_current_stream().synchronize()
        torch.cuda.synchronize()

    t_ours = _time(step_ours, args.warmup, args.trials, sync)
    t_theirs = _time(step_theirs, args.warmup, args.trials, sync)
    print(json.dumps({"shape": {"hidden": args.hidden, "input": args.input, "batch": args.batch,
                                "seq": args.seq}, "dtype": args.dtype,
                      "mpinet_ms": round(t_ours, 3), "torch_cudnn_ms": round(t_theirs, 3),
                      "speed_vs_torch": round(t_theirs / t_ours, 3),
                      "device": torch.cuda.get_device_name()}))


if __name__ == "__main__":
    main()
