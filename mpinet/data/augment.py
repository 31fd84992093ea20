"""Augmentation on the device array module: random crop with zero padding, horizontal flip,
per-channel normalization. Works on NumPy and CuPy arrays alike (``backend.xp_of``).

Randomness and exact resume: the random choices for a sample (crop offset, flip) are a pure
function of (seed, epoch, sample index) — ``mpinet.random.keyed_*`` — not draws from a running
generator.
So the only state is the seed (``Augment.state_dict() == {"seed": seed}``, JSON-serialisable):
a resumed run, a run at another world size, and a loader whose thread prepares batches ahead all
produce the same augmentation for the same sample in the same epoch. The choices are made on the
host (a few bytes per sample) and applied on the device.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..random import AUGMENT_STREAM, keyed_bits, keyed_uniform

_CROP_Y, _CROP_X, _FLIP = 0, 1, 2


def pad_crop(x, padding: int, dy, dx):
    """Crop each sample from its zero-padded image:
    out[n] = pad(x[n])[:, dy[n]:dy[n]+H, dx[n]:dx[n]+W].

    x: (N, C, H, W) or (N, H, W) (e.g. segmentation masks); dy, dx: (N,) ints in [0, 2 * padding].
    """
    xp = backend.xp_of(x)
    if padding == 0:
        return x
    spatial = ((padding, padding), (padding, padding))
    xpad = xp.pad(x, ((0, 0),) * (x.ndim - 2) + spatial)  # zeros: 0 is black / background
    h, w = x.shape[-2:]
    n = x.shape[0]
    rows = xp.asarray(dy, dtype=xp.int64)[:, None] + xp.arange(h)  # (N, H)
    cols = xp.asarray(dx, dtype=xp.int64)[:, None] + xp.arange(w)  # (N, W)
    if x.ndim == 3:
        return xpad[xp.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    c = x.shape[1]
    return xpad[xp.arange(n)[:, None, None, None], xp.arange(c)[None, :, None, None],
                rows[:, None, :, None], cols[:, None, None, :]]


def flip_horizontal(x, flip):
    """Mirror the samples where flip[n] is true. x: (N, ..., W); flip: (N,) bools."""
    xp = backend.xp_of(x)
    mask = xp.asarray(flip, dtype=bool).reshape((-1,) + (1,) * (x.ndim - 1))
    return xp.where(mask, x[..., ::-1], x)


def normalize(x, mean, std):
    """(x - mean[c]) / std[c] per channel. x: (N, C, H, W); mean, std: (C,)."""
    xp = backend.xp_of(x)
    c = x.shape[1]
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    if mean.shape != (c,) or std.shape != (c,) or (std <= 0).any():
        raise ValueError(f"normalize needs {c} means and {c} positive stds for {c} channels, got "
                         f"mean={mean.tolist()}, std={std.tolist()}")
    shift = xp.asarray(mean.reshape(1, c, 1, 1), dtype=x.dtype)
    scale = xp.asarray((1.0 / std).reshape(1, c, 1, 1), dtype=x.dtype)
    return (x - shift) * scale


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of a data set's images in [0, 1] (uint8 is scaled by 1/255).

    images: (N, C, H, W). Accumulated in float64 over chunks to bound memory.
    """
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    c = images.shape[1]
    total, total_sq, count = np.zeros(c), np.zeros(c), 0
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].astype(np.float64) * scale
        total += part.sum(axis=(0, 2, 3))
        total_sq += np.square(part).sum(axis=(0, 2, 3))
        count += part.shape[0] * part.shape[2] * part.shape[3]
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))


class Augment:
    """The training transform: random crop (zero padding), random horizontal flip, normalization.

    Called by ``DataLoader`` as ``x, y = augment(x, y, batch)``, with x (N, C, H, W) float on the
    device and ``batch`` the sampler's ``Batch`` (its epoch and sample indices key the random
    choices). ``labels_too=True`` crops and flips per-pixel labels y (N, H, W) with their images
    (segmentation). Any stage can be left out: ``Augment(mean=m, std=s)`` only normalizes, which
    is the evaluation transform. Use the same seed on every rank.
    """

    def __init__(self, crop_padding: int = 0, flip: bool = False, mean=None, std=None,
                 seed: int = 0, labels_too: bool = False):
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if (mean is None) != (std is None):
            raise ValueError("normalization needs both mean and std (or neither)")
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.mean, self.std = mean, std
        self.seed = int(seed)
        self.labels_too = bool(labels_too)

    def random_choices(self, batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dy, dx, flip) for the batch's samples, each (N,), from (seed, epoch, sample index)."""
        idx = np.asarray(batch.indices, dtype=np.int64)
        key = (AUGMENT_STREAM, self.seed, batch.epoch)
        span = np.uint64(2 * self.crop_padding + 1)
        dy = (keyed_bits(key + (_CROP_Y,), idx) % span).astype(np.int64)
        dx = (keyed_bits(key + (_CROP_X,), idx) % span).astype(np.int64)
        flip = keyed_uniform(key + (_FLIP,), idx) < 0.5
        return dy, dx, flip

    def __call__(self, x, y, batch):
        if self.crop_padding or self.flip:
            dy, dx, flip = self.random_choices(batch)
            if self.crop_padding:
                x = pad_crop(x, self.crop_padding, dy, dx)
                if self.labels_too:
                    y = pad_crop(y, self.crop_padding, dy, dx)
            if self.flip:
                x = flip_horizontal(x, flip)
                if self.labels_too:
                    y = flip_horizontal(y, flip)
        if self.mean is not None:
            x = normalize(x, self.mean, self.std)
        return x, y

    def state_dict(self) -> dict:
        """All the state there is: the seed (see module docstring)."""
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
