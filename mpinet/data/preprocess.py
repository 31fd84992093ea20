"""What a trained model expects of its input, and the deterministic step that gets it there.

    pre = Preprocess(input_shape=(3, 32, 32), mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26])
    x, _ = pre(x, None, None)   # the DataLoader transform signature; x (N, C, H, W) in [0, 1]
    Preprocess.from_dict(pre.to_dict()) == pre

Pixels follow the data readers' convention: float in [0, 1], or uint8 in [0, 255] which the
DataLoader (and ``mpinet.predict``) turn into float32 / 255 first. ``Preprocess`` then applies the
per-channel normalisation the model was trained with (``(x - mean[c]) / std[c]``, the same
function as the training transform ``Augment`` uses, so evaluation numbers match exactly), or
nothing when the model was trained on plain [0, 1] pixels.

It is stored on ``Model.preprocess``, in checkpoints (``--resume`` restores it) and in the model
file (``mpinet.training.model_file``), so a model reloaded in a fresh process normalises as in
training.
"""
from __future__ import annotations

import numpy as np

from .augment import normalize

PIXELS = "float in [0, 1] (uint8 images are divided by 255 first)"


class Preprocess:
    """input_shape: (C, H, W) of one sample (or (F,) for feature vectors);
    mean, std: per-channel normalisation, C values each, or both None for none."""

    def __init__(self, input_shape, mean=None, std=None):
        self.input_shape = tuple(int(d) for d in input_shape)
        if not self.input_shape or min(self.input_shape) <= 0:
            raise ValueError(f"Preprocess: input_shape must be positive sizes, e.g. (3, 32, 32); "
                             f"got {input_shape!r}")
        if (mean is None) != (std is None):
            raise ValueError("Preprocess: normalisation needs both mean and std (or neither)")
        self.mean = self.std = None
        if mean is not None:
            channels = self.input_shape[0]
            mean = np.asarray(mean, dtype=np.float64).reshape(-1)
            std = np.asarray(std, dtype=np.float64).reshape(-1)
            if len(self.input_shape) != 3 or mean.shape != (channels,) or std.shape != (channels,):
                raise ValueError(f"Preprocess: per-channel mean/std need an input_shape (C, H, W) "
                                 f"and C values each; got input_shape {self.input_shape}, "
                                 f"{mean.size} means, {std.size} stds")
            if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
                raise ValueError(f"Preprocess: mean must be finite and std positive, got "
                                 f"mean={mean.tolist()}, std={std.tolist()}")
            self.mean, self.std = mean, std

    @classmethod
    def from_transform(cls, transform, input_shape) -> "Preprocess":
        """The Preprocess equivalent to an evaluation transform: None, a Preprocess, or an
        ``Augment`` that only normalises. Anything else has no faithful description here."""
        if transform is None:
            return cls(input_shape)
        if isinstance(transform, Preprocess):
            return transform
        random_parts = getattr(transform, "crop_padding", 0) or getattr(transform, "flip", False)
        if hasattr(transform, "mean") and hasattr(transform, "std") and not random_parts:
            return cls(input_shape, transform.mean, transform.std)
        raise ValueError(f"the evaluation transform {type(transform).__name__} is not a plain "
                         f"per-channel normalisation, so it cannot be recorded; set "
                         f"model.preprocess = mpinet.data.preprocess.Preprocess(input_shape, "
                         f"mean, std) to what the model needs")

    def __call__(self, x, y, batch=None):
        """The DataLoader transform signature: x (N, *input_shape) float on the device."""
        if self.mean is not None:
            x = normalize(x, self.mean, self.std)
        return x, y

    def to_dict(self) -> dict:
        """JSON data; floats written with repr, so ``from_dict`` gives back the same bits."""
        return {"input_shape": list(self.input_shape), "layout": "NCHW" if
                len(self.input_shape) == 3 else "NF", "pixels": PIXELS,
                "mean": None if self.mean is None else [float(v) for v in self.mean],
                "std": None if self.std is None else [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        return cls(data["input_shape"], data.get("mean"), data.get("std"))

    def __eq__(self, other) -> bool:
        return isinstance(other, Preprocess) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        norm = "" if self.mean is None else f", mean={self.mean.tolist()}, std={self.std.tolist()}"
        return f"Preprocess(input_shape={self.input_shape}{norm})"


__all__ = ["Preprocess"]
