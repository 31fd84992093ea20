"""MNIST / Fashion-MNIST: the IDX file format, raw or gzip-compressed.

IDX layout (http://yann.lecun.com/exdb/mnist/): bytes 0-1 are zero, byte 2 is the element type
(0x08 = uint8, ...), byte 3 the number of dimensions; then one big-endian uint32 per dimension;
then the elements, big-endian, row-major. Every reader check below names the file on failure.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .dataset import ArrayDataset, DataFormatError, check_split, to_pixels

# IDX type byte -> big-endian NumPy dtype
_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist package
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed if it is gzip (detected by magic bytes, not by name)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except EOFError as e:
        raise DataFormatError(path, f"gzip stream is truncated ({len(data)} compressed bytes; "
                                    f"{e}); download or copy the file again") from e
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DataFormatError(path, f"gzip data is corrupt ({e}); download or copy the file "
                                    "again") from e


def read_idx(path) -> np.ndarray:
    """Read one IDX file (raw or .gz) into a native-endian array of the header's shape."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataFormatError(path, f"only {len(data)} bytes; an IDX file starts with a 4-byte "
                                    "magic number")
    zero0, zero1, type_code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_TYPES:
        raise DataFormatError(path, f"bad IDX magic number {data[:4].hex()} (expected 0000 "
                                    "followed by a type byte in "
                                    f"{sorted(hex(t) for t in _IDX_TYPES)} and the number of "
                                    "dimensions); is this an MNIST-format file?")
    header_len = 4 + 4 * ndim
    if ndim == 0 or len(data) < header_len:
        raise DataFormatError(path, f"header declares {ndim} dimensions but the file has only "
                                    f"{len(data)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DataFormatError(path, f"{what}: header says shape {dims} of {dtype.name} = "
                                    f"{expected} data bytes, but the file holds {actual}")
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _find(data_dir: Path, stem_variants: list[str]) -> Path:
    """The first existing file among the name variants, each tried raw and with .gz."""
    tried = []
    for stem in stem_variants:
        for name in (stem, stem + ".gz"):
            p = data_dir / name
            tried.append(name)
            if p.is_file():
                return p
    raise FileNotFoundError(f"no {stem_variants[0]}[.gz] in {data_dir} (looked for "
                            f"{', '.join(tried)}); point data_dir (--data-dir) at the folder "
                            "holding the four IDX files")


def load_idx_dataset(data_dir, split: str = "train", raw: bool = False, name: str = "mnist",
                     class_names: list[str] | None = None) -> ArrayDataset:
    """Load an MNIST-format split: images (N, 1, 28, 28), labels (N,) int64 in [0, 10).

    Files are looked up as ``train-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte`` etc. (also the
    ``train-images.idx3-ubyte`` spelling), raw or ``.gz``.
    """
    check_split(split)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{name} data dir {data_dir} does not exist; point data_dir "
                                "(--data-dir) at the folder holding the IDX files")
    prefix = _SPLIT_PREFIX[split]
    img_path = _find(data_dir, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"])
    lbl_path = _find(data_dir, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"])
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataFormatError(img_path, "expected uint8 images of shape (N, H, W), got "
                                        f"{images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise DataFormatError(lbl_path, f"expected labels of shape (N,), got {labels.shape}")
    if len(labels) != len(images):
        raise DataFormatError(lbl_path, f"{len(labels)} labels but {os.path.basename(img_path)} "
                                        f"holds {len(images)} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataFormatError(lbl_path, f"labels span [{labels.min()}, {labels.max()}], expected "
                                        "0..9")
    return ArrayDataset(to_pixels(images[:, None], raw), labels.astype(np.int64), num_classes=10,
                        name=name, class_names=class_names)
