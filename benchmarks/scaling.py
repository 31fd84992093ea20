"""Scaling benchmark: the same per-GPU batch on 1, 2, 4, ... and N ranks; prints img/s, scaling
efficiency and the communication time per step that compute did not hide, for each world size.

    python3 benchmarks/scaling.py --gpus 2 --model resnet50 --batch 64 --size 224 --precision bf16 \
        --mpirun "mpirun --allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE -x PYTHONPATH"
    # CPU smoke run:
    python3 benchmarks/scaling.py --gpus 2 --model mlp --batch 64 --size 8 --device cpu

It launches benchmarks/train_bench.py once per world size (synthetic data, fixed batch), reads
the JSON lines it appends, and reports
    efficiency      = img/s(N) / (N * img/s(1))
    comm not hidden = (step time(N) - step time(1)) / step time(N)
since with a fixed per-GPU batch the compute per step is the same, every extra millisecond on N
ranks is communication (or waiting for it) that the overlap did not hide. --out keeps the runs
for `python -m mpinet.plot --scaling FILE`.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, default=2,
                   help="N: the largest world size (1, the powers of two below N, and N run)")
    p.add_argument("--mpirun", default="mpiexec", help="launcher command (before -n)")
    p.add_argument("--out", default=None, help="append the runs' JSON lines here too")
    args, bench_args = p.parse_known_args()
    if args.gpus < 2:
        p.error(f"--gpus must be >= 2 to measure scaling, got {args.gpus}")

    with tempfile.TemporaryDirectory() as tmp:
        results = os.path.join(tmp, "runs.jsonl")
        sizes = sorted({1, args.gpus} | {2 ** k for k in range(1, 16) if 2 ** k < args.gpus})
        for n in sizes:
            cmd = shlex.split(args.mpirun) + ["-n", str(n), sys.executable,
                                              os.path.join(HERE, "train_bench.py"),
                                              "--out", results] + bench_args
            print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
            proc = subprocess.run(cmd)
            if proc.returncode != 0:
                print(f"scaling: the run on {n} rank(s) failed (exit {proc.returncode})",
                      file=sys.stderr)
                return proc.returncode
        with open(results) as f:
            runs = [json.loads(line) for line in f if line.strip()]
    one = next(r for r in runs if r["gpus"] == 1)
    print(f"scaling {one['model']} batch {one['batch_per_gpu']}/gpu {one['precision']}: "
          f"1 rank {one['img_per_s']:.0f} img/s ({one['ms_per_step']:.2f} ms/step)")
    records = [dict(one, efficiency=1.0)]
    for n in sizes[1:]:
        many = next(r for r in runs if r["gpus"] == n)
        efficiency = many["img_per_s"] / (n * one["img_per_s"])
        exposed = (many["ms_per_step"] - one["ms_per_step"]) / many["ms_per_step"]
        print(f"  {n} ranks {many['img_per_s']:.0f} img/s ({many['ms_per_step']:.2f} ms/step); "
              f"efficiency {efficiency:.1%}; communication not hidden {exposed:.1%} of the step")
        records.append(dict(many, efficiency=efficiency))
    if args.out:
        with open(args.out, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
