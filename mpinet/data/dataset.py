"""The in-memory data set every reader returns, and the error every reader raises on bad files.

Pixel convention (one rule for every reader):
  * default: ``images`` are float32 in [0, 1], shape (N, C, H, W);
  * ``raw=True``: ``images`` are uint8 in [0, 255], same shape — a quarter of the host memory and of
    the host-to-device traffic. ``DataLoader`` turns uint8 into float32 / 255 on the device, so a
    model sees the same values either way.
Labels are int64: (N,) class ids for classification, (N, H, W) class ids per pixel for
segmentation.
"""
from __future__ import annotations

import numpy as np


class DataFormatError(ValueError):
    """A data file exists but is not what its format promises (truncated, corrupt, wrong layout).

    The message always starts with the file's path, then says what was found and what was expected.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


SPLITS = ("train", "test")


def check_split(split: str) -> str:
    """Return ``split`` if it is one every reader knows, else raise naming the choices."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def to_pixels(images_u8: np.ndarray, raw: bool) -> np.ndarray:
    """uint8 pixels -> the reader's output convention (uint8 if raw, else float32 in [0, 1])."""
    if raw:
        return np.ascontiguousarray(images_u8, dtype=np.uint8)
    return images_u8.astype(np.float32) / np.float32(255.0)  # the same op as DataLoader on uint8


class ArrayDataset:
    """Images and labels held in host memory.

    images: (N, C, H, W) float32 in [0, 1] or uint8 in [0, 255] (see module docstring)
    labels: (N,) int64 class ids, or (N, H, W) int64 per-pixel class ids (segmentation)
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, name: str = "",
                 class_names: list[str] | None = None):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
        if images.dtype not in (np.float32, np.uint8):
            raise ValueError(f"images must be float32 in [0,1] or uint8, got dtype {images.dtype}")
        if labels.shape[:1] != images.shape[:1]:
            raise ValueError(f"{len(labels)} labels for {len(images)} images: counts must match")
        if labels.ndim not in (1, 3):
            raise ValueError(f"labels must be (N,) or (N, H, W), got shape {labels.shape}")
        if labels.dtype.kind not in "iub":
            # Truncating real-valued targets to int64 would train on wrong targets silently.
            raise TypeError(f"ArrayDataset: labels has dtype {labels.dtype} (shape "
                            f"{labels.shape}), but this data set holds integer class labels; "
                            f"for real-valued (regression) targets use "
                            f"mpinet.data.TensorDataset(x, y) or Model.fit(x, y)")
        if labels.dtype != np.int64:
            labels = labels.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"labels span [{labels.min()}, {labels.max()}] but num_classes is "
                             f"{num_classes}: labels must lie in [0, num_classes)")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.images = images
        self.labels = labels
        self.num_classes = int(num_classes)
        self.name = name
        self.class_names = class_names

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(int(d) for d in self.images.shape[1:])

    @property
    def is_segmentation(self) -> bool:
        """True when labels are per-pixel masks (N, H, W)."""
        return self.labels.ndim == 3

    @property
    def is_raw(self) -> bool:
        """True when images are uint8 in [0, 255] (converted to float32 / 255 by the loader)."""
        return self.images.dtype == np.uint8

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (f"ArrayDataset({self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes}, dtype={self.images.dtype})")
