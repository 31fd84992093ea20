"""Data sets by name: ``get_dataset("fashion-mnist", split="test")``.

Every reader reads its files into memory once; nothing is ever downloaded.
"""
from __future__ import annotations

from pathlib import Path

from . import builtin, cifar, idx, image_folder, masks, streaming, text
from .dataset import ArrayDataset, check_split


def _load_fashion_mnist(data_dir, split="train", raw=False):
    return idx.load_idx_dataset(data_dir, split, raw, name="fashion-mnist",
                                class_names=idx.FASHION_MNIST_CLASSES)


def _load_mnist(data_dir, split="train", raw=False):
    return idx.load_idx_dataset(data_dir, split, raw, name="mnist")


def _load_image_folder(data_dir, split="train", size=None, grayscale=False, raw=False,
                       stream=False):
    """stream=True: a file-backed ImageFolderFiles (index in memory, decoded per batch)."""
    if stream:
        return streaming.ImageFolderFiles(data_dir, split, size=size, grayscale=grayscale)
    return image_folder.load_image_folder(data_dir, split, size=size, grayscale=grayscale, raw=raw)


# name -> (loader, needs a data dir?, default data dir or None)
_DATASETS = {
    "digits": (builtin.load_digits, False, None),
    "fashion-mnist": (_load_fashion_mnist, True, idx.FASHION_MNIST_DIR),
    "mnist": (_load_mnist, True, None),
    "cifar10": (cifar.load_cifar10, True, None),
    "cifar100": (cifar.load_cifar100, True, None),
    "image-folder": (_load_image_folder, True, None),
    "mask-folder": (masks.load_mask_folder, True, None),
    "synthetic": (builtin.load_synthetic, False, None),
    "synthetic-segmentation": (builtin.load_synthetic_segmentation, False, None),
    "python-source": (text.load_python_source, False, None),  # text: the stdlib's own source
}
DATASET_NAMES = tuple(_DATASETS)
DEFAULT_DATASET = "digits"

# Options each name accepts besides split and data_dir, checked up front for a clear message
# (tests check this table against the loaders' signatures).
_OPTIONS = {
    "digits": ("raw", "split_seed", "test_fraction"),
    "fashion-mnist": ("raw",),
    "mnist": ("raw",),
    "cifar10": ("raw",),
    "cifar100": ("raw", "label"),
    "image-folder": ("size", "grayscale", "raw", "stream"),
    "mask-folder": ("size", "grayscale", "mask_values"),
    "synthetic": ("num_samples", "input_shape", "num_classes", "seed", "raw"),
    "synthetic-segmentation": ("num_samples", "size", "channels", "max_shapes", "noise",
                               "shape_classes", "seed"),
    "python-source": ("seq_len", "max_chars", "test_fraction"),
}


def dataset_options(name: str) -> tuple[str, ...]:
    """The options ``get_dataset(name, ...)`` accepts besides split and data_dir."""
    if name not in _OPTIONS:
        raise ValueError(f"unknown data set {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
    return _OPTIONS[name]


def get_dataset(name: str, split: str = "train", data_dir=None, **opts) -> ArrayDataset:
    """Load a data set split by name. See each reader's docstring for ``opts``.

    Raises ValueError for an unknown name, split or option; FileNotFoundError when the data
    dir is missing (naming the path looked in and how to point at the files).
    """
    if name not in _DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
    check_split(split)
    unknown = sorted(set(opts) - set(_OPTIONS[name]))
    if unknown:
        raise ValueError(f"data set {name!r} has no option(s) {unknown}; its options are: "
                         f"{', '.join(_OPTIONS[name]) or 'none'}")
    loader, needs_dir, default_dir = _DATASETS[name]
    if not needs_dir:
        if data_dir is not None:
            raise ValueError(f"data set {name!r} is built in and reads no files, but "
                             f"data_dir={str(data_dir)!r} was given; drop --data-dir or pick a "
                             "file-based data set")
        return loader(split=split, **opts)
    if data_dir is None:
        if default_dir is None:
            raise FileNotFoundError(f"data set {name!r} has no default location; pass data_dir "
                                    f"(--data-dir) pointing at its files")
        data_dir = default_dir
    if not Path(data_dir).is_dir():
        hint = (" (install Debian's dataset-fashion-mnist package, or pass --data-dir)"
                if name == "fashion-mnist" else "")
        raise FileNotFoundError(f"data set {name!r}: data dir {data_dir} does not exist{hint}; "
                                "pass data_dir (--data-dir) pointing at its files")
    return loader(data_dir=data_dir, split=split, **opts)
