"""Augmentation presets by kind of data, so ``--augment`` fits the data set instead of one fixed
crop + flip (which, tuned for 32 px photos, cost the 8x8 digits 40 points of accuracy):

    digits      small grey glyphs: normalization only. No flips (a mirrored 2 is no 2), and on
                the 8x8 digits even 1-pixel shifts cost accuracy (94.2% -> 88.9% after 4 epochs;
                benchmarks/RESULTS.md section 8), while normalizing alone gained (95.8%)
    photo       natural images: random crop (padding 4 at >= 32 px, else 2), horizontal flip
    microscopy  cells have no up, down, left or right: the 8 flips/rotations of the square
                (images and their masks alike), no crop
    none        no random change (and no normalization)

Every preset but none normalizes with the training set's channel statistics; segmentation data
(per-pixel labels) always moves the masks with their images. ``preset_for_dataset`` names the
preset ``--augment`` alone picks for a data set. Random choices are keyed by (seed, epoch,
sample index) like ``Augment``'s, so workers, resumes and world sizes see the same ones.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..random import DIHEDRAL_STREAM, keyed_bits
from .augment import Augment

PRESETS = ("digits", "photo", "microscopy", "none")

_KIND_OF_DATASET = {
    "digits": "digits",
    "mnist": "digits",
    "fashion-mnist": "digits",
    "cifar10": "photo",
    "cifar100": "photo",
    "image-folder": "photo",
    "synthetic": "photo",
    "mask-folder": "microscopy",
    "synthetic-segmentation": "microscopy",
}


def preset_for_dataset(name: str) -> str:
    """The preset ``--augment`` without a value uses for data set ``name``."""
    return _KIND_OF_DATASET.get(name, "photo")


class Dihedral:
    """A random one of the 8 symmetries of the square per sample (vertical flip, transpose and
    their combinations with the identity), applied to x (N, C, H, W) and, with ``labels_too``,
    to masks y (N, H, W). Needs square images (H == W)."""

    def __init__(self, seed: int = 0, labels_too: bool = False):
        self.seed, self.labels_too = int(seed), bool(labels_too)

    def choices(self, batch) -> np.ndarray:
        """(N,) ints in [0, 8): bit 0 vertical flip, bit 1 horizontal flip, bit 2 transpose."""
        idx = np.asarray(batch.indices, dtype=np.int64)
        bits = keyed_bits((DIHEDRAL_STREAM, self.seed, batch.epoch), idx)
        return (bits % np.uint64(8)).astype(np.int64)

    @staticmethod
    def apply(a, code: np.ndarray):
        """a: (N, ..., H, W); code: (N,) -> each sample transformed by its code."""
        xp = backend.xp_of(a)
        if a.shape[-1] != a.shape[-2]:
            raise ValueError(
                f"the microscopy preset rotates by 90 degrees and needs square images, "
                f"got {a.shape[-2]}x{a.shape[-1]}; use --augment photo or resize"
            )
        shape = (-1,) + (1,) * (a.ndim - 1)
        bit = [xp.asarray((code >> k) & 1, dtype=bool).reshape(shape) for k in range(3)]
        a = xp.where(bit[0], a[..., ::-1, :], a)
        a = xp.where(bit[1], a[..., :, ::-1], a)
        return xp.where(bit[2], xp.swapaxes(a, -1, -2), a)

    def __call__(self, x, y, batch):
        code = self.choices(batch)
        x = self.apply(x, code)
        if self.labels_too and y is not None:
            y = self.apply(y, code)
        return x, y

    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])


class Compose:
    """Transforms in order; the state is each one's state."""

    def __init__(self, *transforms):
        self.transforms = transforms

    def __call__(self, x, y, batch):
        for t in self.transforms:
            x, y = t(x, y, batch)
        return x, y

    def state_dict(self) -> dict:
        return {"parts": [t.state_dict() for t in self.transforms]}

    def load_state_dict(self, state: dict) -> None:
        for t, s in zip(self.transforms, state["parts"], strict=True):
            t.load_state_dict(s)


def build_augmentation(
    preset: str, input_shape, mean=None, std=None, seed: int = 0, segmentation: bool = False
):
    """(training transform, evaluation transform) of a preset; (None, None) for none."""
    if preset not in PRESETS:
        raise ValueError(
            f"augmentation preset {preset!r} is unknown; choose one of: {', '.join(PRESETS)}"
        )
    if preset == "none":
        return None, None
    evaluation = Augment(mean=mean, std=std) if mean is not None else None
    if preset == "digits":
        train = Augment(mean=mean, std=std, seed=seed, labels_too=segmentation)
    elif preset == "photo":
        h = int(input_shape[1])
        train = Augment(
            crop_padding=4 if h >= 32 else 2,
            flip=True,
            mean=mean,
            std=std,
            seed=seed,
            labels_too=segmentation,
        )
    else:  # microscopy: the dihedral group; normalization last
        train = Compose(
            Dihedral(seed, labels_too=segmentation),
            Augment(mean=mean, std=std, seed=seed, labels_too=segmentation),
        )
    return train, evaluation
