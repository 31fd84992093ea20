"""Data sets that need no files: scikit-learn's real handwritten digits, and seeded synthetic data.

digits: the 1,797 real 8x8 images bundled in scikit-learn's wheel (pixel values 0..16, scaled to
[0, 1]; ``raw=True`` gives round(v * 255 / 16) as uint8). The train/test split is fixed: for each
class separately, a permutation by ``np.random.RandomState(split_seed)`` (a stream NumPy keeps
stable across versions) puts the first round(20%) of that class in test, the rest in train —
a stratified 80/20 split, 1,438 train / 359 test with the default split_seed=0.
"""
from __future__ import annotations

import numpy as np

from .dataset import ArrayDataset, check_split, to_pixels

_SPLIT_ID = {"train": 0, "test": 1}


def _check_split(split: str) -> int:
    return _SPLIT_ID[check_split(split)]


def digits_split_indices(labels: np.ndarray, test_fraction: float = 0.2, split_seed: int = 0):
    """Stratified split -> (train indices, test indices), both sorted int64 arrays."""
    rs = np.random.RandomState(split_seed)
    train, test = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rs.permutation(len(members))]
        n_test = int(round(test_fraction * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(split: str = "train", raw: bool = False, split_seed: int = 0,
                test_fraction: float = 0.2) -> ArrayDataset:
    """scikit-learn's digits: images (N, 1, 8, 8), labels (N,) in [0, 10)."""
    _check_split(split)
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.asarray(bunch.images)  # (1797, 8, 8) float64, values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = digits_split_indices(labels, test_fraction, split_seed)
    idx = train_idx if split == "train" else test_idx
    if raw:
        out = np.rint(images[idx] * (255.0 / 16.0)).astype(np.uint8)[:, None]
    else:  # straight from 0..16, so float values are exact sixteenths, not rounded bytes
        out = (images[idx] / 16.0).astype(np.float32)[:, None]
    return ArrayDataset(out, labels[idx], num_classes=10,
                        name="digits", class_names=[str(d) for d in range(10)])


def _rng(seed: int, split: str) -> np.random.Generator:
    """Train and test draw from different streams of the same seed."""
    return np.random.default_rng([int(seed), _check_split(split)])


def load_synthetic(split: str = "train", num_samples: int | None = None, input_shape=(3, 32, 32),
                   num_classes: int = 10, seed: int = 0, raw: bool = False) -> ArrayDataset:
    """Uniform random images and labels for throughput benchmarks (nothing to learn).

    num_samples defaults to 1024 (train) / 256 (test). Generated as uint8 so raw and float agree.
    """
    if num_samples is None:
        num_samples = 1024 if split == "train" else 256
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) <= 0 or num_samples <= 0 or num_classes <= 0:
        raise ValueError(f"synthetic needs input_shape=(C, H, W) > 0, num_samples > 0 and "
                         f"num_classes > 0; got {input_shape}, {num_samples}, {num_classes}")
    rng = _rng(seed, split)
    images = rng.integers(0, 256, size=(num_samples, *shape), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=num_samples, dtype=np.int64)
    return ArrayDataset(to_pixels(images, raw), labels, num_classes=num_classes, name="synthetic")


def load_synthetic_segmentation(split: str = "train", num_samples: int | None = None,
                                size: int = 64,
                                channels: int = 1, max_shapes: int = 3, noise: float = 0.1,
                                shape_classes: bool = False, seed: int = 0) -> ArrayDataset:
    """Circles and rectangles on noise; labels are per-pixel masks (N, H, W).

    Background pixels are N(0.3, noise); shape pixels N(0.7, noise) (clipped to [0, 1]), so
    the masks are learnable but not a threshold away from trivial once noise is large.
    Labels: 0 background, 1 shape (num_classes 2); with ``shape_classes=True``: 1 circle,
    2 rectangle (num_classes 3; a later shape paints over an earlier one).
    num_samples defaults to 512 (train) / 128 (test). Images are float32 in [0, 1].
    """
    if num_samples is None:
        num_samples = 512 if split == "train" else 128
    if num_samples <= 0 or size < 8 or channels <= 0 or max_shapes <= 0:
        raise ValueError(f"synthetic-segmentation needs num_samples > 0, size >= 8, channels > 0, "
                         f"max_shapes > 0; got {num_samples}, {size}, {channels}, {max_shapes}")
    rng = _rng(seed, split)
    yy, xx = np.mgrid[0:size, 0:size]  # (H, W) pixel coordinates
    masks = np.zeros((num_samples, size, size), dtype=np.int64)
    for i in range(num_samples):
        for _ in range(rng.integers(1, max_shapes + 1)):
            is_circle = rng.random() < 0.5
            cy, cx = rng.integers(size // 8, size - size // 8, size=2)
            if is_circle:
                r = rng.integers(size // 16 + 2, size // 5 + 3)
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                hh, hw = rng.integers(size // 16 + 2, size // 5 + 3, size=2)
                inside = (np.abs(yy - cy) <= hh) & (np.abs(xx - cx) <= hw)
            masks[i][inside] = 1 if (is_circle or not shape_classes) else 2
    base = np.where(masks > 0, 0.7, 0.3)[:, None]  # (N, 1, H, W)
    images = base + noise * rng.standard_normal((num_samples, channels, size, size))
    images = np.clip(images, 0.0, 1.0).astype(np.float32)
    return ArrayDataset(images, masks, num_classes=3 if shape_classes else 2,
                        name="synthetic-segmentation")
