"""Loader throughput (img/s) of a streaming image folder per decode-worker count, one process.

    python benchmarks/loader_bench.py                                   # 32 px, small (2 cores)
    python benchmarks/loader_bench.py --files 20000 --image-side 256 --size 224 \\
        --workers 0 1 2 4 8 15 --batch 128                              # ImageNet-like, 16 cores

Writes (once) a tree of JPEGs with benchmarks/data_scale.py's generator, then for each worker
count times full passes of DataLoader over it (decode, resize to --size, uint8 -> float32 on the
CPU backend; no training), after one warm-up batch (workers started). Prints img/s per count:
compare with the training rate the loader must feed (ResNet-50 on one H100: ~2,000-3,000 img/s).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data_scale import make_tree

from mpinet.data import DataLoader, DistributedSampler
from mpinet.data.streaming import ImageFolderFiles


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=4000)
    p.add_argument("--image-side", type=int, default=32, help="side of the generated JPEGs")
    p.add_argument("--size", type=int, default=None, help="resize to this side when reading")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--root", default="/tmp/mpinet-loader-bench")
    args = p.parse_args()
    tree = make_tree(
        f"{args.root}-{args.files}-{args.image_side}", args.files, n_test=10, side=args.image_side
    )
    files = ImageFolderFiles(tree, size=args.size)
    print(
        f"{len(files)} JPEGs of {args.image_side}px -> {files.input_shape}, batch {args.batch}, "
        f"{os.cpu_count()} cores",
        flush=True,
    )
    for workers in args.workers:
        sampler = DistributedSampler(len(files), args.batch, 0, 1, seed=0)
        loader = DataLoader(files, sampler, workers=workers, prefetch=4)
        it = iter(loader)
        next(it)  # warm-up: workers spawned, first batch decoded
        count, t = 0, time.perf_counter()
        for x, _, _ in it:
            count += len(x)
        for epoch in range(1, args.passes):
            sampler.set_epoch(epoch)
            for x, _, _ in loader:
                count += len(x)
        seconds = time.perf_counter() - t
        loader.close()
        print(
            f"workers {workers}: {count / seconds:,.0f} img/s ({count} images in {seconds:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
