"""Per-rank peak memory while training on a large tree of small JPEG files (streaming reader).

    python benchmarks/data_scale.py --files 50000 200000          # generates under /tmp, -n 2
    python benchmarks/data_scale.py --files 50000 --ranks 4 --epochs 1 --workers 0

For each size, writes (once) a class-per-folder tree of N 32x32 JPEGs in 10 classes under
--root, then runs `mpiexec -n RANKS python -m mpinet.train --dataset image-folder` on it (the
CLI streams image folders: an index in memory, files decoded per batch) and prints each rank's
peak resident memory (getrusage ru_maxrss) and the wall time. Flat means: the same per-rank
peak for 50k and for 200k files.
"""

import argparse
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = 10


def _write_chunk(args) -> int:
    folder, start, stop, seed, side = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] * (32 / side)
    for i in range(start, stop):
        c = i % CLASSES
        # A class-dependent gradient plus noise: learnable, and compresses like a small photo.
        base = (yy * (c + 1) * 4 + xx * (CLASSES - c) * 4) % 256
        img = np.clip(base[..., None] + rng.normal(0, 20, (side, side, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(folder, f"c{c}", f"{i:07d}.jpg"), quality=90)
    return stop - start


def make_tree(root: str, n: int, n_test: int = 1000, side: int = 32) -> str:
    """root/{train,test}/c<k>/<i>.jpg: n and n_test side x side JPEGs in 10 classes (once)."""
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    for split, count in (("train", n), ("test", n_test)):
        for c in range(CLASSES):
            os.makedirs(os.path.join(root, split, f"c{c}"), exist_ok=True)
        chunks = [
            (os.path.join(root, split), s, min(s + 5000, count), s, side)
            for s in range(0, count, 5000)
        ]
        with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
            list(pool.map(_write_chunk, chunks))
    open(done, "w").close()
    return root


def rank_main(argv) -> None:
    """Inside mpiexec: train through the CLI's main, then report this rank's peak RSS."""
    from mpi4py import MPI

    from mpinet.train import main

    t = time.perf_counter()
    rc = main(argv)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    peaks = MPI.COMM_WORLD.gather(peak_mib)
    if MPI.COMM_WORLD.rank == 0:
        print(
            f"RESULT rc={rc} wall={time.perf_counter() - t:.1f}s peak_rss_mib_per_rank="
            + ",".join(f"{p:.0f}" for p in peaks),
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, nargs="+", default=[50000, 200000])
    p.add_argument("--root", default="/tmp/mpinet-data-scale")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=None, help="decode workers per rank (--workers)")
    p.add_argument("--rank-run", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_run is not None:
        return rank_main(args.rank_run)
    for n in args.files:
        t = time.perf_counter()
        tree = make_tree(f"{args.root}-{n}", n)
        print(
            f"{n} files: tree at {tree} ({time.perf_counter() - t:.0f} s to make or find)",
            flush=True,
        )
        train_args = [
            "--dataset",
            "image-folder",
            "--data-dir",
            tree,
            "--model",
            "mlp",
            "--epochs",
            str(args.epochs),
            "--batch-size",
            str(args.batch_size),
            "--quiet",
        ]
        if args.workers is not None:
            train_args += ["--workers", str(args.workers)]
        cmd = [
            "mpiexec",
            "-n",
            str(args.ranks),
            sys.executable,
            os.path.abspath(__file__),
            "--rank-run",
            *train_args,
        ]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("RESULT", "final"))]
        if out.returncode != 0 or not lines:
            raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        print(f"{n} files, {args.ranks} ranks: " + " | ".join(lines), flush=True)


if __name__ == "__main__":
    main()
