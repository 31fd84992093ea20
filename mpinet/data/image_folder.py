"""A class-per-folder tree of PNG/JPEG images, decoded with Pillow.

Layout (the ImageNet / torchvision ImageFolder convention)::

    data_dir/train/<class name>/*.png|*.jpg|*.jpeg
    data_dir/test/<class name>/...          ("val" is accepted for "test")

Without train/ and test/ subfolders, ``data_dir`` itself is the class tree of the train split and
asking for "test" is an error (silently testing on training images would mislead).
Classes are the sorted folder names of the train tree, so the test split gets the same label ids.
Images are converted to RGB (or L with ``grayscale=True``) and resized to ``size`` (bilinear);
without ``size`` all images must share one size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import ArrayDataset, DataFormatError, check_split, to_pixels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_SPLIT_DIRS = {"train": ("train",), "test": ("test", "val")}


def _class_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def looks_like_mask_tree(data_dir) -> bool:
    """True when data_dir (or its train/ split) holds images/ and masks/ folders: a segmentation
    tree (mpinet.data.masks), which read as classes would be two classes named images and masks."""
    data_dir = Path(data_dir)
    return any((d / "images").is_dir() and (d / "masks").is_dir()
               for d in (data_dir, data_dir / "train"))


def _split_root(data_dir: Path, split: str) -> tuple[Path, Path]:
    """(folder of this split's class tree, folder whose subfolders define the classes)."""
    if looks_like_mask_tree(data_dir):
        raise ValueError(f"image-folder: {data_dir} holds images/ and masks/ folders: a "
                         "segmentation tree, not classes; read it with the mask reader "
                         "(--dataset mask-folder, or get_dataset('mask-folder', ...))")
    train_root = data_dir / "train"
    for name in _SPLIT_DIRS[split]:
        if (data_dir / name).is_dir():
            return data_dir / name, (train_root if train_root.is_dir() else data_dir / name)
    if any((data_dir / n).is_dir() for names in _SPLIT_DIRS.values() for n in names):
        raise FileNotFoundError(f"image-folder: {data_dir} has no "
                                f"{'/ or '.join(_SPLIT_DIRS[split])}/ folder for split {split!r}")
    if split == "test":
        raise FileNotFoundError(f"image-folder: {data_dir} has no test/ or val/ folder; put "
                                "held-out images in data_dir/test/<class>/ (the class tree itself "
                                "is the train split)")
    return data_dir, data_dir


def _parse_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive (H, W) or an int, got {size!r}")
    return int(h), int(w)


def _decode(path: Path, mode: str, size_hw: tuple[int, int] | None) -> np.ndarray:
    """One image file -> (C, H, W) uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert(mode)  # decodes the whole file: truncation surfaces here
            if size_hw is not None and im.size != (size_hw[1], size_hw[0]):
                im = im.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataFormatError(path, f"cannot decode image ({type(e).__name__}: {e}); remove or "
                                    "replace the file") from e
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_image_folder(data_dir, split: str = "train", size=None, grayscale: bool = False,
                      raw: bool = False) -> ArrayDataset:
    """Decode a class-per-folder tree: images (N, 3 or 1, H, W), labels (N,) = index of sorted
    class."""
    check_split(split)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"image-folder data dir {data_dir} does not exist; point data_dir "
                                "(--data-dir) at a folder of <class>/ subfolders (or train/ and "
                                "test/)")
    size_hw = _parse_size(size)
    root, class_root = _split_root(data_dir, split)
    classes = _class_dirs(class_root)
    if not classes:
        raise FileNotFoundError(f"image-folder: {class_root} has no class subfolders; expected "
                                f"{class_root}/<class name>/<image>{IMAGE_SUFFIXES[0]}")
    unknown = sorted(set(_class_dirs(root)) - set(classes))
    if unknown:
        raise ValueError(f"image-folder: {root} has classes {unknown} that {class_root} lacks; the "
                         "splits must use the same class folders")
    mode = "L" if grayscale else "RGB"
    images, labels = [], []
    for label, cls in enumerate(classes):
        folder = root / cls
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if folder.is_dir() else []
        for path in files:
            img = _decode(path, mode, size_hw)
            if images and img.shape != images[0].shape:
                raise DataFormatError(path, f"image is {img.shape[1]}x{img.shape[2]} but earlier "
                                            "images are "
                                            f"{images[0].shape[1]}x{images[0].shape[2]}; pass "
                                            "size=(H, W) to resize all images")
            images.append(img)
            labels.append(label)
    if not images:
        raise FileNotFoundError(f"image-folder: no {'/'.join(IMAGE_SUFFIXES)} files under "
                                f"{root}/<class>/")
    return ArrayDataset(to_pixels(np.stack(images), raw), np.asarray(labels, dtype=np.int64),
                        num_classes=len(classes), name="image-folder", class_names=classes)
