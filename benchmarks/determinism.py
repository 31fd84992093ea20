"""Does training repeat bit for bit on this GPU? Two checks (results in benchmarks/RESULTS.md, 6).

    python3 benchmarks/determinism.py [--deterministic]
        trains an MLP and ResNet-18 (32 px, batch 32) from the same seed twice in this process,
        1 and 5 steps, and prints a hash of all weights per run; run it in two processes and
        compare the hashes across them too.
    python3 benchmarks/determinism.py --compare A.safetensors B.safetensors
        which tensors of two weight files (python -m mpinet.train --save-weights) differ. The
        files' bytes may differ for equal tensors: safetensors orders the metadata at random.
"""
import argparse
import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def compare(a_path, b_path):
    from safetensors.numpy import load_file

    a, b = load_file(a_path), load_file(b_path)
    diff = [(k, float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()))
            for k in a if a[k].shape != b[k].shape or (a[k] != b[k]).any()]
    shown = ", ".join(f"{k} (max |diff| {d:.2e})" for k, d in diff[:6])
    print(f"{len(diff)} of {len(a)} tensors differ" + (f": {shown}" if diff else ""))


def train_hash(name, steps, **opts):
    """sha256 (16 hex digits) of all weights after ``steps`` SGD steps from seed 0."""
    import cupy as cp

    from mpinet.training import Model
    from mpinet.models import build_model
    from mpinet.nn import init

    init.manual_seed(0)
    net = build_model(name, **opts)
    model = Model(net)
    model.compile("sgd", lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((32,) + tuple(net.input_shape)).astype(np.float32))
    y = cp.asarray(rng.integers(0, 10, 32))
    for _ in range(steps):
        model.train_step(x, y, 32)
    h = hashlib.sha256()
    for v in net.state_dict().values():
        h.update(cp.asnumpy(v).tobytes())
    return h.hexdigest()[:16]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--deterministic", action="store_true",
                   help="only cuDNN engines not marked non-deterministic (--deterministic)")
    p.add_argument("--compare", nargs=2, metavar="WEIGHTS")
    a = p.parse_args()
    if a.compare:
        compare(*a.compare)
        return
    from mpinet import backend
    from mpinet.kernels import cudnn

    backend.select_device(device="gpu")
    cudnn.deterministic = a.deterministic
    models = [("mlp", dict(in_features=3 * 32 * 32, hidden=(256,), num_classes=10)),
              ("resnet18", dict(num_classes=10, input_size=32))]
    for name, opts in models:
        for steps in (1, 5):
            hashes = [train_hash(name, steps, **opts) for _ in range(2)]
            same = "same" if hashes[0] == hashes[1] else "DIFFERENT"
            print(f"{name} after {steps} step(s), deterministic={a.deterministic}: "
                  f"{hashes[0]} {hashes[1]} ({same})", flush=True)


if __name__ == "__main__":
    main()
