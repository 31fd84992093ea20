"""Masks bootstrapped from raw cell images by classical segmentation, for a person to correct.

    Otsu threshold -> remove small objects -> distance transform -> peaks as markers ->
    watershed (with lines between touching cells) -> mask: 255 cell, 0 background

The foreground signal: the grey image itself (bright cells on dark, or dark on bright: the
polarity where cells are the minority is chosen), or for stained RGB slides (IHC, H&E) the
hematoxylin channel from colour deconvolution (``stain="hematoxylin"``): nuclei. Large images
are cut into tiles (``tile``) so the pairs suit a U-Net's fixed input. Needs scikit-image
(``pip install mpinet[label]``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _skimage():
    try:
        import skimage  # noqa: F401 - optional dependency (extra "label")
    except ImportError:
        raise SystemExit(
            "mpinet.label bootstrap needs scikit-image: pip install 'mpinet[label]'"
        ) from None


def foreground_signal(image: np.ndarray, stain: str = "gray") -> np.ndarray:
    """(H, W) float in [0, 1] where cells are high. image: (H, W) grey or (H, W, 3) RGB uint8."""
    from skimage.color import rgb2gray, rgb2hed  # label extra

    if stain == "hematoxylin":
        if image.ndim != 3:
            raise ValueError("stain='hematoxylin' needs an RGB image (a stained slide)")
        h = rgb2hed(image)[..., 0]
        return (h - h.min()) / max(float(np.ptp(h)), 1e-12)
    if stain != "gray":
        raise ValueError(f"stain must be 'gray' or 'hematoxylin', got {stain!r}")
    grey = (
        rgb2gray(image) if image.ndim == 3 else image.astype(np.float64) / np.iinfo(image.dtype).max
    )
    return grey


def segment_cells(
    signal: np.ndarray, min_size: int = 20, min_distance: int = 4, polarity: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """(binary mask (H, W) bool with watershed lines cut out, instance labels (H, W) int32)."""
    from scipy import ndimage  # label extra
    from skimage.feature import peak_local_max  # label extra
    from skimage.filters import gaussian, threshold_otsu  # label extra
    from skimage.morphology import remove_small_objects  # label extra
    from skimage.segmentation import watershed  # label extra

    smooth = gaussian(signal, sigma=1.0)
    fg = smooth > threshold_otsu(smooth)
    if polarity == "dark" or (polarity == "auto" and fg.mean() > 0.5):
        fg = ~fg  # cells are the minority
    fg = ndimage.binary_fill_holes(remove_small_objects(fg, max_size=min_size))
    distance = ndimage.distance_transform_edt(fg)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=fg, exclude_border=False)
    markers = np.zeros(fg.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    instances = watershed(-distance, markers, mask=fg, watershed_line=True)
    return instances > 0, instances.astype(np.int32)


def tiles(array: np.ndarray, tile: int | None):
    """Yield ((row, col), tile array) for non-overlapping tile x tile pieces (edges dropped)."""
    if not tile:
        yield (0, 0), array
        return
    h, w = array.shape[:2]
    for r in range(0, h - tile + 1, tile):
        for c in range(0, w - tile + 1, tile):
            yield (r, c), array[r : r + tile, c : c + tile]


def bootstrap_folder(
    src,
    out,
    tile: int | None = None,
    stain: str = "gray",
    min_size: int = 20,
    min_distance: int = 4,
    polarity: str = "auto",
) -> int:
    """Every image in ``src`` (a folder, or one image file) -> out/images + out/masks pairs,
    tiled when ``tile``. Returns the number of pairs written."""
    _skimage()
    from PIL import Image  # optional dependency (pillow)

    src, out = Path(src), Path(out)
    files = (
        [src]
        if src.is_file()
        else sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    )
    if not files:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {src}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    written = 0
    for path in files:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB" if im.mode not in ("L", "I;16") else im.mode))
        mask, _ = segment_cells(foreground_signal(image, stain), min_size, min_distance, polarity)
        pieces = zip(tiles(image, tile), tiles(mask, tile), strict=True)
        for ((r, c), img_tile), (_, mask_tile) in pieces:
            stem = f"{path.stem}_r{r:04d}_c{c:04d}" if tile else path.stem
            Image.fromarray(img_tile).save(out / "images" / f"{stem}.png")
            Image.fromarray(mask_tile.astype(np.uint8) * 255).save(out / "masks" / f"{stem}.png")
            written += 1
    return written
