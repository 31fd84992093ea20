"""File-backed data sets: only an index (relative paths and labels) in memory, samples decoded
when a batch asks for them.

    train = ImageFolderFiles("/data/imagenet", "train", size=224)   # lists files, decodes nothing
    x, y = train.read_batch(np.array([5, 17]))                      # (2, 3, 224, 224) uint8, (2,)

Why: an in-memory reader holds the whole data set on every rank (ImageNet at 224 px: ~190 GB per
rank). Here a rank's memory is the index (a few tens of bytes per file) plus the batches in
flight, whatever the data set's size; and a rank opens only the files the sampler gives it, so
each file is read by one rank per epoch. The sampler and the loader are the in-memory ones:
the order, exact once-per-epoch coverage and resume at another world size are unchanged.

A ``FileDataset`` looks like an ``ArrayDataset`` to the loader and the trainer (``len``,
``input_shape``, ``num_classes``, ``class_names``, ``is_raw``, ``is_segmentation``) but has
``read_batch(indices)`` instead of ``images``; it is picklable (plain arrays and strings), so
decode worker processes (``mpinet.data.workers``) can each hold a copy of the index.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dataset import DataFormatError, check_split
from .image_folder import IMAGE_SUFFIXES, _class_dirs, _decode, _parse_size, _split_root


class FileDataset:
    """Base of the file-backed data sets. Subclasses set ``_shape`` (C, H, W), ``num_classes``,
    ``name``, ``class_names`` and implement ``read(i) -> (image (C, H, W) uint8, label)``, where
    label is an int (classification) or an (H, W) int64 mask (segmentation)."""

    is_raw = True  # samples come as uint8; the loader converts them on the device
    is_segmentation = False

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def label_shape(self) -> tuple[int, ...]:
        """Shape of one sample's label: () for a class id, (H, W) for a mask."""
        return tuple(self._shape[1:]) if self.is_segmentation else ()

    def read(self, i: int):
        raise NotImplementedError

    def _copy_with(self, **attributes):
        """A shallow copy with ``attributes`` replaced: what ``subset`` returns (the index lists
        it slices are new; everything else is shared and never mutated)."""
        part = object.__new__(type(self))
        part.__dict__.update(self.__dict__)
        part.__dict__.update(attributes)
        return part

    def read_batch(self, indices, out=None):
        """Samples ``indices`` -> (x (n, C, H, W) uint8, y (n,) or (n, H, W) int64), decoded now.

        out: optional (x, y) arrays of those shapes to fill (e.g. pinned or shared memory)."""
        indices = np.asarray(indices, dtype=np.int64)
        n = len(indices)
        if out is None:
            out = (
                np.empty((n, *self._shape), dtype=np.uint8),
                np.empty((n, *self.label_shape), dtype=np.int64),
            )
        x, y = out
        for k, i in enumerate(indices):
            x[k], y[k] = self.read(int(i))
        return x, y

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, files read on demand)"
        )


def _list_images(folder: Path) -> list[str]:
    """Image file names in ``folder``, sorted (os.scandir: no stat per file)."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        return sorted(
            e.name
            for e in entries
            if e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith(".")
        )


def _probe_size(path: Path, what: str) -> tuple[int, int]:
    """(H, W) from an image's header (Pillow reads a few bytes, decodes nothing)."""
    from PIL import Image, UnidentifiedImageError  # optional dependency (pillow)

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (UnidentifiedImageError, OSError) as e:
        raise DataFormatError(
            path,
            f"cannot read the {what} header ({type(e).__name__}: {e}); remove or replace the file",
        ) from e


class ImageFolderFiles(FileDataset):
    """The image-folder layout (see ``mpinet.data.image_folder``) read file by file.

    Same classes, labels and sample order as ``load_image_folder`` (sorted classes, then sorted
    file names), so ``read_batch(range(N))`` equals the in-memory reader's arrays. Without
    ``size`` the first file's header gives the shape and any other size is an error naming the
    file when it is read; with ``size`` every image is resized and no file is opened up front.
    """

    def __init__(self, data_dir, split: str = "train", size=None, grayscale: bool = False):
        check_split(split)
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(
                f"image-folder data dir {data_dir} does not exist; point "
                "data_dir (--data-dir) at a folder of <class>/ subfolders"
            )
        root, class_root = _split_root(data_dir, split)
        classes = _class_dirs(class_root)
        if not classes:
            raise FileNotFoundError(
                f"image-folder: {class_root} has no class subfolders; expected "
                f"{class_root}/<class name>/<image>{IMAGE_SUFFIXES[0]}"
            )
        unknown = sorted(set(_class_dirs(root)) - set(classes))
        if unknown:
            raise ValueError(
                f"image-folder: {root} has classes {unknown} that {class_root} lacks; "
                "the splits must use the same class folders"
            )
        names, labels = [], []
        for label, cls in enumerate(classes):
            files = _list_images(root / cls)
            names.extend(f"{cls}/{f}" for f in files)
            labels.extend([label] * len(files))
        if not names:
            raise FileNotFoundError(
                f"image-folder: no {'/'.join(IMAGE_SUFFIXES)} files under {root}/<class>/"
            )
        self.root = str(root)
        # One bytes array, not N Python strings: ~1 byte per character of the relative path.
        self._names = np.array([os.fsencode(n) for n in names])
        self.labels = np.asarray(labels, dtype=np.int64)  # (N,)
        self.mode = "L" if grayscale else "RGB"
        self.size_hw = _parse_size(size)
        hw = self.size_hw or _probe_size(self.path(0), "first image's")
        self._shape = (1 if grayscale else 3, *hw)
        self.num_classes = len(classes)
        self.class_names = classes
        self.name = "image-folder"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self._names[i]))

    def read(self, i: int):
        path = self.path(i)
        img = _decode(Path(path), self.mode, self.size_hw)
        if img.shape != self._shape:
            raise DataFormatError(
                path,
                f"image is {img.shape[1]}x{img.shape[2]} but the data set's "
                f"images are {self._shape[1]}x{self._shape[2]} (from the first "
                "file); pass size=(H, W) to resize all images",
            )
        return img, int(self.labels[i])

    def subset(self, n: int) -> ImageFolderFiles:
        """The first n samples (``--train-samples``): a copy sharing nothing mutable."""
        return self._copy_with(_names=self._names[:n], labels=self.labels[:n])


def dataset_channel_stats(
    dataset, max_samples: int = 2048, comm=None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std in [0, 1] for normalization: over all images of an in-memory data
    set; over ``max_samples`` evenly spaced samples of a file-backed one. With ``comm`` (an
    mpinet communicator) each rank decodes every size-th of those samples and one allreduce adds
    the sums, so no file is read twice and every rank gets the same statistics."""
    from .augment import channel_stats  # lazy: augment's home may move

    if not isinstance(dataset, FileDataset):
        return channel_stats(dataset.images)
    picks = np.unique(
        np.linspace(0, len(dataset) - 1, min(max_samples, len(dataset))).astype(np.int64)
    )
    if comm is None or comm.size == 1:
        return channel_stats(dataset.read_batch(picks)[0])
    mine = picks[comm.rank :: comm.size]
    c = dataset.input_shape[0]
    sums = np.zeros(2 * c + 1)  # per channel: sum, sum of squares; then the pixel count
    if len(mine):
        x = dataset.read_batch(mine)[0].astype(np.float64) / 255.0  # (n, C, H, W)
        sums[:c] = x.sum(axis=(0, 2, 3))
        sums[c : 2 * c] = np.square(x).sum(axis=(0, 2, 3))
        sums[-1] = x.shape[0] * x.shape[2] * x.shape[3]
    total = np.asarray(comm.allreduce_obj(sums, op="sum"), dtype=np.float64)
    mean = total[:c] / total[-1]
    return mean, np.sqrt(np.maximum(total[c : 2 * c] / total[-1] - mean * mean, 0.0))
