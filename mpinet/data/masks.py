"""Segmentation on image files: an ``images/`` folder and a ``masks/`` folder matched by file stem.

Layout::

    data_dir/train/images/cell_001.png    data_dir/train/masks/cell_001.png
    data_dir/test/images/...              data_dir/test/masks/...
    (or data_dir/images + data_dir/masks alone: the train split; "test" is then an error)

Images: PNG, JPEG or TIFF, converted to L (``grayscale=True``) or RGB (``False``); the default
``None`` follows the first image (grey stays grey: fluorescence; colour stays RGB: stained slides).
Masks: single-channel PNG or TIFF (8 or 16 bit; a JPEG mask's compression would invent values)
whose pixel values map to classes through ``mask_values``: a list, value ``mask_values[k]`` is
class k (``[0, 128, 255]``: three classes); the default ``None`` is binary, 0 background and any
other value foreground. A mask value outside the map, a mask of another size than its image, an
image without a mask (or a mask without an image), an empty folder, a corrupt file: each a
``DataFormatError`` / ``FileNotFoundError`` naming the file.

``size``: resize images (bilinear) and masks (nearest: classes stay classes) to (H, W); without it
every image must have the first image's size. File-backed like ``ImageFolderFiles``: an index in
memory, pairs decoded per batch, each rank opening only its shard's files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dataset import DataFormatError, check_split
from .image_folder import _decode, _parse_size, looks_like_mask_tree  # noqa: F401 - re-exported
from .streaming import FileDataset, _probe_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff")
_SPLIT_DIRS = {"train": ("train",), "test": ("test", "val")}


def _files_by_stem(folder: Path, suffixes) -> dict[str, str]:
    if not folder.is_dir():
        return {}
    found: dict[str, str] = {}
    with os.scandir(folder) as entries:
        for e in entries:
            stem, suffix = os.path.splitext(e.name)
            if suffix.lower() in suffixes and not e.name.startswith("."):
                if stem in found:
                    raise DataFormatError(
                        folder / e.name,
                        f"two files share the stem {stem!r} ({found[stem]} and {e.name}); keep one",
                    )
                found[stem] = e.name
    return found


def _split_dir(data_dir: Path, split: str) -> Path:
    for name in _SPLIT_DIRS[split]:
        if (data_dir / name / "images").is_dir():
            return data_dir / name
    if split == "train" and (data_dir / "images").is_dir():
        return data_dir
    raise FileNotFoundError(
        f"mask-folder: no {' or '.join(n + '/images' for n in _SPLIT_DIRS[split])}"
        f" folder under {data_dir} for split {split!r}; expected "
        f"{data_dir}/{_SPLIT_DIRS[split][0]}/images/<name>.png and "
        f"{data_dir}/{_SPLIT_DIRS[split][0]}/masks/<name>.png"
    )


def read_mask(path, size_hw=None) -> np.ndarray:
    """A mask file -> (H, W) integer array of its raw values (resized by nearest neighbour)."""
    from PIL import Image, UnidentifiedImageError  # optional dependency (pillow)

    try:
        with Image.open(path) as im:
            im.load()
            if size_hw is not None and im.size != (size_hw[1], size_hw[0]):
                im = im.resize((size_hw[1], size_hw[0]), Image.NEAREST)
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataFormatError(
            path, f"cannot decode mask ({type(e).__name__}: {e}); remove or replace the file"
        ) from e
    if arr.ndim == 3:  # RGB(A) written by a tool: fine if it is grey
        if not (arr[..., :3] == arr[..., :1]).all():
            raise DataFormatError(
                path,
                "mask has colours; save masks as one channel of class "
                "values (e.g. 0 and 255, or 0, 1, 2, ...)",
            )
        arr = arr[..., 0]
    return arr.astype(np.int64)


def values_to_classes(raw: np.ndarray, mask_values, path) -> np.ndarray:
    """Raw mask values -> class ids (see module docstring); names the file on a stray value."""
    if mask_values is None:
        return (raw != 0).astype(np.int64)
    lookup = {int(v): k for k, v in enumerate(mask_values)}
    values = np.unique(raw)
    stray = [int(v) for v in values if int(v) not in lookup]
    if stray:
        raise DataFormatError(
            path,
            f"mask values {stray[:8]} are not in the class map "
            f"{list(mask_values)} (value k -> class k); fix the mask or "
            "pass mask_values listing every value",
        )
    out = np.empty(raw.shape, dtype=np.int64)
    for v in values:
        out[raw == v] = lookup[int(v)]
    return out


def _resize_pair(img: np.ndarray, raw: np.ndarray, size_hw) -> tuple[np.ndarray, np.ndarray]:
    """Image (C, H, W) uint8 bilinear, mask (H, W) nearest, both to size_hw."""
    from PIL import Image  # optional dependency (pillow)

    wh = (size_hw[1], size_hw[0])
    channels = [np.asarray(Image.fromarray(c).resize(wh, Image.BILINEAR)) for c in img]
    mask = np.asarray(Image.fromarray(raw.astype(np.int32)).resize(wh, Image.NEAREST))
    return np.stack(channels), mask.astype(np.int64)


def _probe_mode(path) -> str:
    """Pillow's mode of an image (header only)."""
    from PIL import Image, UnidentifiedImageError  # optional dependency (pillow)

    try:
        with Image.open(path) as im:
            return im.mode
    except (UnidentifiedImageError, OSError) as e:
        raise DataFormatError(
            path, f"cannot read the image header ({e}); remove or replace it"
        ) from e


class MaskFolderFiles(FileDataset):
    """images/ + masks/ pairs, read per batch: x (C, H, W) uint8, y (H, W) int64 class ids."""

    is_segmentation = True

    def __init__(
        self,
        data_dir,
        split: str = "train",
        size=None,
        grayscale: bool | None = None,
        mask_values=None,
    ):
        check_split(split)
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(
                f"mask-folder data dir {data_dir} does not exist; point "
                "data_dir (--data-dir) at a folder with images/ and masks/"
            )
        root = _split_dir(data_dir, split)
        images = _files_by_stem(root / "images", IMAGE_SUFFIXES)
        masks = _files_by_stem(root / "masks", MASK_SUFFIXES)
        if not images:
            raise FileNotFoundError(
                f"mask-folder: no {'/'.join(IMAGE_SUFFIXES)} files in {root / 'images'}"
            )
        lonely = sorted(set(images) - set(masks))
        if lonely:
            raise FileNotFoundError(
                f"mask-folder: {root / 'images' / images[lonely[0]]} has no "
                f"mask {root / 'masks'}/{lonely[0]}.png (or .tif)"
                + (f", nor do {len(lonely) - 1} more" if len(lonely) > 1 else "")
            )
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise FileNotFoundError(
                f"mask-folder: mask {root / 'masks' / masks[orphans[0]]} has no "
                f"image of the same name in {root / 'images'}"
            )
        if mask_values is not None:
            mask_values = [int(v) for v in mask_values]
            if len(set(mask_values)) != len(mask_values) or len(mask_values) < 2:
                raise ValueError(
                    f"mask_values must list >= 2 distinct pixel values (value k -> "
                    f"class k), got {mask_values}"
                )
        stems = sorted(images)
        self.root = str(root)
        self._images = np.array([os.fsencode(images[s]) for s in stems])
        self._masks = np.array([os.fsencode(masks[s]) for s in stems])
        if grayscale is None:
            grayscale = _probe_mode(self.image_path(0)) in ("1", "L", "I", "I;16", "F", "LA")
        self.mode = "L" if grayscale else "RGB"
        self.size_hw = _parse_size(size)
        self.mask_values = mask_values
        hw = self.size_hw or _probe_size(self.image_path(0), "first image's")
        self._shape = (1 if grayscale else 3, *hw)
        self.num_classes = 2 if mask_values is None else len(mask_values)
        self.class_names = (
            ["background", "foreground"]
            if mask_values is None
            else [f"value {v}" for v in mask_values]
        )
        self.name = "mask-folder"

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def image_path(self, i: int) -> str:
        return os.path.join(self.root, "images", os.fsdecode(self._images[i]))

    def mask_path(self, i: int) -> str:
        return os.path.join(self.root, "masks", os.fsdecode(self._masks[i]))

    def read(self, i: int):
        image_path, mask_path = self.image_path(i), self.mask_path(i)
        img = _decode(Path(image_path), self.mode, None)
        raw = read_mask(mask_path)
        if raw.shape != img.shape[1:]:
            raise DataFormatError(
                mask_path,
                f"mask is {raw.shape[0]}x{raw.shape[1]} but its image "
                f"{image_path} is {img.shape[1]}x{img.shape[2]}; "
                "masks must match their images pixel for pixel",
            )
        if self.size_hw is not None and img.shape[1:] != self.size_hw:
            img, raw = _resize_pair(img, raw, self.size_hw)
        if img.shape != self._shape:
            raise DataFormatError(
                image_path,
                f"image is {img.shape[1]}x{img.shape[2]} but the data "
                f"set's images are {self._shape[1]}x{self._shape[2]} "
                "(from the first file); pass size=(H, W) to resize",
            )
        return img, values_to_classes(raw, self.mask_values, mask_path)

    def subset(self, n: int) -> MaskFolderFiles:
        """The first n samples (``--train-samples``)."""
        return self._copy_with(_images=self._images[:n], _masks=self._masks[:n])


def load_mask_folder(
    data_dir, split: str = "train", size=None, grayscale: bool | None = None, mask_values=None
) -> MaskFolderFiles:
    """The registry's entry: ``get_dataset("mask-folder", data_dir=..., mask_values=[0, 255])``."""
    return MaskFolderFiles(data_dir, split, size=size, grayscale=grayscale, mask_values=mask_values)
