"""Prediction inputs: image files, folders of images, and ``.npy`` arrays -> checked pixel arrays.

    items = expand(["cat.png", "photos/", "batch.npy"])   # one Item per sample, in input order
    x = read(items[0], input_shape=(3, 32, 32))            # (3, 32, 32) float32 in [0, 1]

Order: arguments in the order given; a folder's images sorted by their path below it (all
depths); an ``.npy`` file's samples in array order. Pixels follow the data readers' convention
(float in [0, 1]; uint8 is divided by 255), so a model sees what it saw in training; a model of
feature vectors (input (F,)) takes an ``.npy`` (N, F) of any finite floats.

Nothing is resized or converted silently: an image whose size or channel count differs from the
model's input is an ``InputError`` naming the file, what the model expects and what the file
holds (``resize=True`` resizes bilinearly, as the image-folder reader does). Channels: 1 is an
8-bit grayscale image (mode L), 3 an RGB one (palette images count as RGB).
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_MODE_CHANNELS = {"L": 1, "RGB": 3, "P": 3}  # 8-bit modes; a palette expands to RGB


class InputError(ValueError):
    """A prediction input that cannot be used; the message starts with its path."""

    def __init__(self, path, problem: str):
        self.path, self.problem = os.fspath(path), problem
        super().__init__(f"{self.path}: {problem}")


class Item(NamedTuple):
    """One sample: its display name, the file it comes from, its row in an .npy (else None)."""
    name: str
    path: str
    row: int | None = None


def expand(paths) -> list[Item]:
    """Every sample named by ``paths`` (files, folders, .npy files), in input order."""
    items: list[Item] = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            found = sorted(os.path.relpath(os.path.join(root, f), path)
                           for root, _, files in os.walk(path) for f in files
                           if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."))
            if not found:
                raise InputError(path, f"folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            items.extend(Item(os.path.join(path, f), os.path.join(path, f)) for f in found)
        elif not os.path.exists(path):
            raise InputError(path, "no such file or folder")
        elif path.lower().endswith(".npy"):
            n = _npy_samples(path)
            if n == 0:
                raise InputError(path, "holds no samples (its first dimension is 0)")
            items.extend(Item(f"{path}[{i}]", path, i) for i in range(n))
        elif path.lower().endswith(IMAGE_SUFFIXES):
            items.append(Item(path, path))
        else:
            raise InputError(path, f"not an image ({', '.join(IMAGE_SUFFIXES)}), a folder of "
                                   f"images or a .npy array")
    return items


def _open_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(path, f"not a readable .npy array ({e})") from None


def _npy_samples(path: str) -> int:
    """Samples in an .npy, which holds (N, *input_shape): its first dimension."""
    arr = _open_npy(path)
    if arr.ndim == 0:
        raise InputError(path, "holds a scalar, expected samples (N, C, H, W)")
    return int(arr.shape[0])


def read(item: Item, input_shape: tuple, resize: bool = False) -> np.ndarray:
    """The sample as float32 (``input_shape``) in [0, 1]; InputError if it does not fit."""
    if item.row is None:
        return _read_image(item.path, tuple(input_shape), resize)
    return _read_npy_row(item.path, item.row, tuple(input_shape))


def _read_image(path: str, input_shape: tuple, resize: bool) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise InputError(path, "reading images needs Pillow: pip install 'mpinet[data]' (or "
                               "pass a .npy array)") from None
    if len(input_shape) != 3:
        raise InputError(path, f"the model takes feature vectors {input_shape}, not images; "
                               f"pass a .npy array")
    c, h, w = input_shape
    try:
        with Image.open(path) as im:
            channels = _MODE_CHANNELS.get(im.mode)
            if channels is None:
                raise InputError(path, f"image mode {im.mode} is not 8-bit grayscale (L) or RGB; "
                                       f"convert it first")
            if channels != c:
                raise InputError(path, f"the model expects {c} channel(s) "
                                       f"({'L' if c == 1 else 'RGB'}), the image has {channels} "
                                       f"(mode {im.mode})")
            if im.size != (w, h):
                if not resize:
                    raise InputError(path, f"the model expects {w}x{h} pixels (WxH), the image "
                                           f"is {im.size[0]}x{im.size[1]}; resize it or pass "
                                           f"--resize")
            im = im.convert("L" if c == 1 else "RGB")  # decodes: truncation surfaces here
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            pixels = np.asarray(im, dtype=np.uint8)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(path, f"cannot decode the image ({type(e).__name__}: {e})") from None
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return pixels.astype(np.float32) / np.float32(255.0)  # the same op as the DataLoader's


def _read_npy_row(path: str, row: int, input_shape: tuple) -> np.ndarray:
    arr = _open_npy(path)
    if tuple(arr.shape[1:]) != input_shape:
        raise InputError(path, f"array of shape {tuple(arr.shape)}; the model expects "
                               f"(N, {', '.join(map(str, input_shape))})")
    sample = np.asarray(arr[row])
    if sample.dtype == np.uint8:
        return sample.astype(np.float32) / np.float32(255.0)
    if sample.dtype.kind != "f":
        raise InputError(path, f"dtype {sample.dtype}; expected uint8 pixels or floats in [0, 1]")
    sample = sample.astype(np.float32)
    if not np.isfinite(sample).all():
        raise InputError(path, f"sample {row} holds NaN or infinite values")
    if len(input_shape) == 3 and (sample.min() < 0.0 or sample.max() > 1.0):  # images only
        raise InputError(path, f"sample {row} spans [{np.nanmin(sample):.4g}, "
                               f"{np.nanmax(sample):.4g}]; expected pixels in [0, 1] "
                               f"(uint8 arrays are divided by 255)")
    return sample


__all__ = ["InputError", "Item", "expand", "read", "IMAGE_SUFFIXES"]
