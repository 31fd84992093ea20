"""``python -m mpinet.predict``: run a saved model (a ``.mpinet`` model file) on new inputs.

    python -m mpinet.predict model.mpinet cat.png dog.jpg            # top-5 classes per image
    python -m mpinet.predict model.mpinet photos/ --top-k 3 --output preds.csv   # or .json
    python -m mpinet.predict unet.mpinet scans.npy --output masks/    # segmentation: PNG masks
    mpirun -n 4 python -m mpinet.predict model.mpinet photos/         # inputs sharded over ranks

Inputs: image files (PNG/JPEG/BMP), folders of them (sorted, all depths) and ``.npy`` arrays
(N, C, H, W) of uint8 pixels or floats in [0, 1]. The model file's preprocessing (normalisation)
is applied; an image of another size or channel count is refused (``--resize`` resizes).

Classifiers print (or write as CSV/JSON with ``--output``) the ``--top-k`` classes with their
softmax probabilities; a model whose output is per pixel (N, K, H, W) writes one PNG mask per
input into the ``--output`` folder, each pixel its class id (0..K-1).

Under mpirun the inputs are cut into global batches of ``--batch-size``, each rank runs a
contiguous range of them, and rank 0 writes every result in input order: the output is the same
file on 1 or N ranks. ``--device auto`` uses a GPU where there is one (one per rank).
Bad inputs (a damaged or newer model file, a missing path, an image of the wrong size) stop
every rank with one line on stderr from rank 0 and exit code 2.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mpinet.predict",
        description="Predict with a saved mpinet model file (model.save / --save-model).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", metavar="MODEL_FILE", help="a model file written by mpinet")
    p.add_argument("inputs", metavar="INPUT", nargs="+",
                   help="image files, folders of images, or .npy arrays (N, C, H, W)")
    p.add_argument("--top-k", type=int, default=5, help="classes to report per input")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass")
    p.add_argument("--output", metavar="PATH",
                   help="classifier: a .csv or .json file (default: print); segmentation: a "
                        "folder for the PNG masks (required)")
    p.add_argument("--resize", action="store_true",
                   help="resize images to the model's input size (bilinear) instead of refusing")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    return p


class UsageError(ValueError):
    """A bad argument; reported as one line, exit 2."""


def check_arguments(args) -> None:
    if args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # argparse exits 2 on unknown flags, on every rank
    from mpi4py import MPI

    from mpinet import backend
    from mpinet.comm import create_communicator, topology
    from mpinet.comm.failure import install_abort_handler
    from mpinet.data import inputs
    from mpinet.training.model_file import load_model

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    install_abort_handler(world)  # an unexpected error on one rank ends every rank

    def stop_on_error(error) -> bool:
        """Collective: True (after rank 0 printed the first error) if any rank has one."""
        errors = world.allgather(error)
        bad = [e for e in errors if e]
        if bad and rank == 0:
            print(f"mpinet.predict: error: {bad[0]}", file=sys.stderr, flush=True)
        return bool(bad)

    error = model = None
    try:
        check_arguments(args)
        backend.select_device(topology.build(world)[0].local_rank, args.device)
        # Each rank runs its own batches: a one-process communicator, so Model.predict does not
        # gather (this command gathers itself, in input order).
        model = load_model(args.model, comm=create_communicator("mpi", MPI.COMM_SELF))
    except (ValueError, OSError, RuntimeError) as e:
        error = str(e)
    if stop_on_error(error):
        return 2

    # Rank 0 lists the inputs (a folder is walked once) and every rank gets the same list.
    listing = None
    if rank == 0:
        try:
            listing = {"items": [tuple(i) for i in inputs.expand(args.inputs)]}
        except inputs.InputError as e:
            listing = {"error": str(e)}
    listing = world.bcast(listing, root=0)
    if stop_on_error(listing.get("error")):
        return 2
    items = [inputs.Item(*i) for i in listing["items"]]

    # Nothing is written unless every rank got through all of its inputs.
    outputs, error = predict_share(model, items, my_share(len(items), args.batch_size, rank, size),
                                   args.batch_size, args.resize)
    errors = [e for e in world.allgather(error) if e]
    if errors:
        if rank == 0:
            print(f"mpinet.predict: error: {min(errors)[1]}", file=sys.stderr, flush=True)
        return 2
    parts = world.gather(outputs, root=0)
    if rank != 0:
        return 0
    results = np.concatenate([p for p in parts if p is not None])
    try:
        if results.ndim == 3:
            write_masks(items, results, args.output)
        else:
            write_top_k(items, results, args.top_k, model.class_names, args.output)
    except (UsageError, OSError) as e:
        print(f"mpinet.predict: error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


def my_share(n_items: int, batch_size: int, rank: int, size: int) -> range:
    """This rank's inputs: a contiguous run of whole global batches. So a batch holds the same
    inputs, and every number computed from it is the same, at any rank count."""
    n_batches = -(-n_items // batch_size)
    first = (n_batches * rank // size) * batch_size
    return range(first, min((n_batches * (rank + 1) // size) * batch_size, n_items))


def predict_share(model, items, share: range, batch_size: int, resize: bool):
    """(results of ``items[share]`` or None, None) or (None, (index, message)) at the first bad
    input. One batch of inputs in memory at a time."""
    from mpinet.data import inputs

    results = []
    for start in range(share.start, share.stop, batch_size):
        batch = []
        try:
            for item in items[start:min(start + batch_size, share.stop)]:
                batch.append(inputs.read(item, model.preprocess.input_shape, resize))
        except inputs.InputError as e:
            return None, (start + len(batch), str(e))  # its index: rank 0 reports the first
        results.append(_results(model.predict(np.stack(batch), batch_size=len(batch))))
    return (np.concatenate(results) if results else None), None


def _results(outputs: np.ndarray) -> np.ndarray:
    """Network outputs -> what is reported: (N, K) class probabilities, or (N, H, W) class ids
    for per-pixel scores (N, K, H, W)."""
    if outputs.ndim == 4:
        return outputs.argmax(axis=1).astype(np.uint8 if outputs.shape[1] <= 256 else np.int32)
    return _softmax(outputs.reshape(len(outputs), -1))


def _softmax(logits: np.ndarray) -> np.ndarray:
    """(N, K) scores -> probabilities, in float64."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    """(N, min(k, K)) class ids, most probable first; ties go to the lower class id."""
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]


def write_top_k(items, probabilities, k, class_names, output) -> None:
    ids = top_k(probabilities, k)
    names = class_names or [str(i) for i in range(probabilities.shape[1])]
    rows = [[(int(c), names[c], float(probabilities[n, c])) for c in ids[n]]
            for n in range(len(items))]
    if output is None:
        for item, row in zip(items, rows, strict=True):
            print(f"{item.name}: " + ", ".join(f"{name} {p:.4f}" for _, name, p in row))
        return
    if output.lower().endswith(".json"):
        data = [{"input": item.name, "top_k": [{"class_id": c, "class_name": name,
                                                "probability": round(p, 6)} for c, name, p in row]}
                for item, row in zip(items, rows, strict=True)]
        _write_text(output, json.dumps(data, indent=1) + "\n")
    elif output.lower().endswith(".csv"):
        buf = io.StringIO()
        table = csv.writer(buf, lineterminator="\n")
        table.writerow(["input", "k", "class_id", "class_name", "probability"])
        table.writerows([item.name, j + 1, c, name, f"{p:.6f}"]
                        for item, row in zip(items, rows, strict=True)
                        for j, (c, name, p) in enumerate(row))
        _write_text(output, buf.getvalue())
    else:
        raise UsageError(f"--output {output!r}: a classifier's output must end in .csv or .json")
    print(f"wrote top-{min(k, probabilities.shape[1])} classes of {len(items)} inputs to "
          f"{output}", flush=True)


def write_masks(items, masks, output) -> None:
    """One PNG per input in the folder ``output``, named after the input (pixel = class id)."""
    from PIL import Image

    if output is None or output.lower().endswith((".csv", ".json")):
        raise UsageError("this model predicts a class per pixel: pass --output FOLDER for its "
                         "PNG masks")
    if masks.dtype != np.uint8:
        raise UsageError(f"{masks.max() + 1} classes do not fit an 8-bit PNG mask")
    os.makedirs(output, exist_ok=True)
    used: set = set()
    for item, mask in zip(items, masks, strict=True):
        stem = os.path.splitext(os.path.basename(item.path))[0]
        stem = stem if item.row is None else f"{stem}_{item.row}"
        name, copy = f"{stem}.png", 1
        while name in used:  # two inputs with one file name: keep both, in input order
            copy += 1
            name = f"{stem}-{copy}.png"
        used.add(name)
        path = os.path.join(output, name)
        Image.fromarray(mask).save(path)  # (H, W) uint8: 8-bit grayscale
        print(f"{item.name} -> {path}")


def _write_text(path: str, text: str) -> None:
    """Whole or not at all: a temporary file renamed over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
