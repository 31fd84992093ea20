"""CIFAR-10 and CIFAR-100, "binary version" (https://www.cs.toronto.edu/~kriz/cifar.html).

CIFAR-10: data_batch_1.bin .. data_batch_5.bin (train), test_batch.bin (test); each record is
1 label byte + 3072 pixel bytes (1024 R, 1024 G, 1024 B; each 32x32 row-major), i.e. CHW.
CIFAR-100: train.bin, test.bin; each record is 1 coarse label byte + 1 fine label byte + 3072 bytes.
``data_dir`` may be the folder holding the .bin files or its parent (``cifar-10-batches-bin`` /
``cifar-100-binary`` as unpacked from the official tarballs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import ArrayDataset, DataFormatError, check_split, to_pixels

_PIXELS = 3 * 32 * 32
_CIFAR10_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
_CIFAR10_TEST = ["test_batch.bin"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]


def read_cifar_records(path, label_bytes: int, num_classes: tuple[int, ...]):
    """One CIFAR binary file -> (images (n, 3, 32, 32) uint8, labels (n, label_bytes) int64).

    ``num_classes`` gives the exclusive upper bound of each label byte (checked: a byte out of range
    means the file is not the format it claims, or is shifted by a missing byte).
    """
    path = Path(path)
    record = label_bytes + _PIXELS
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % record:
        raise DataFormatError(path, f"size {raw.size} bytes is not a positive multiple of the "
                                    f"{record}-byte record ({label_bytes} label byte(s) + "
                                    f"{_PIXELS} pixels); the file is truncated or not the CIFAR "
                                    "binary version")
    rec = raw.reshape(-1, record)
    labels = rec[:, :label_bytes].astype(np.int64)
    for j, bound in enumerate(num_classes):
        bad = np.flatnonzero(labels[:, j] >= bound)
        if bad.size:
            raise DataFormatError(path, f"record {bad[0]} has label byte {j} = "
                                        f"{labels[bad[0], j]}, expected < {bound}; the file is "
                                        "corrupt or of another format")
    images = rec[:, label_bytes:].reshape(-1, 3, 32, 32)
    return images, labels


def _resolve(data_dir, first_file: str, subdir: str, name: str) -> Path:
    data_dir = Path(data_dir)
    for d in (data_dir, data_dir / subdir):
        if (d / first_file).is_file():
            return d
    raise FileNotFoundError(f"{name}: no {first_file} in {data_dir} or {data_dir / subdir}; point "
                            f"data_dir (--data-dir) at the unpacked binary version ({subdir}/)")


def _need(d: Path, files: list[str], name: str) -> list[Path]:
    paths = [d / f for f in files]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: {d} lacks {', '.join(missing)}; the binary version has "
                                f"{', '.join(files)}")
    return paths


def load_cifar10(data_dir, split: str = "train", raw: bool = False) -> ArrayDataset:
    """CIFAR-10: images (N, 3, 32, 32), labels (N,) in [0, 10); N = 50000 train / 10000 test."""
    files = {"train": _CIFAR10_TRAIN, "test": _CIFAR10_TEST}[check_split(split)]
    d = _resolve(data_dir, files[0], "cifar-10-batches-bin", "cifar10")
    parts = [read_cifar_records(p, 1, (10,)) for p in _need(d, files, "cifar10")]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1][:, 0] for p in parts])
    return ArrayDataset(to_pixels(images, raw), labels, num_classes=10, name="cifar10",
                        class_names=CIFAR10_CLASSES)


def load_cifar100(data_dir, split: str = "train", raw: bool = False,
                  label: str = "fine") -> ArrayDataset:
    """CIFAR-100: labels are the 100 fine classes (default) or, with label="coarse", the 20
    superclasses."""
    check_split(split)
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    fname = f"{split}.bin"
    d = _resolve(data_dir, fname, "cifar-100-binary", "cifar100")
    images, labels = read_cifar_records(d / fname, 2, (20, 100))
    column, num_classes = (1, 100) if label == "fine" else (0, 20)
    return ArrayDataset(to_pixels(images, raw), labels[:, column], num_classes=num_classes,
                        name="cifar100")
