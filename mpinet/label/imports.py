"""Masks from labelling tools' exports, written in the mask-folder layout (mpinet.data.masks).

    LabelMe: one JSON per image ({"imagePath", "imageHeight", "imageWidth", "shapes": [{"label",
        "points", "shape_type": "polygon" | "rectangle" | "circle"}], optional "imageData"}).
    COCO: one instances JSON ({"images", "annotations", "categories"}); each annotation's
        "segmentation" is polygons ([[x1, y1, x2, y2, ...], ...]) or RLE ({"counts", "size"},
        counts a list (uncompressed) or COCO's compressed string).

Output: out/images/<stem>.png (the image, copied as PNG) and out/masks/<stem>.png whose pixel
value is the class: 0 background, k for the k-th class of ``classes`` (LabelMe: the sorted labels
found, unless given; COCO: categories sorted by id). Train with ``--mask-values 0,1,...,K``.
Shapes are painted in file order, a later one over an earlier one.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

from ..data.dataset import DataFormatError


def _paint_polygon(mask: np.ndarray, points, value: int) -> None:
    from PIL import Image, ImageDraw  # optional dependency (pillow)

    canvas = Image.fromarray(mask)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in points], fill=int(value))
    mask[...] = np.asarray(canvas)


def _write_pair(out: Path, stem: str, image, mask: np.ndarray) -> None:
    from PIL import Image  # optional dependency (pillow)

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    if image.size != (mask.shape[1], mask.shape[0]):
        raise DataFormatError(
            stem,
            f"image is {image.size[1]}x{image.size[0]} but the annotation "
            f"says {mask.shape[0]}x{mask.shape[1]}",
        )
    image.save(out / "images" / f"{stem}.png")
    Image.fromarray(mask).save(out / "masks" / f"{stem}.png")


# ---- LabelMe ---------------------------------------------------------------------------------
def labelme_shapes_to_mask(doc: dict, classes: list[str], path) -> np.ndarray:
    """(H, W) uint8 class mask from a LabelMe document."""
    h, w = int(doc["imageHeight"]), int(doc["imageWidth"])
    mask = np.zeros((h, w), dtype=np.uint8)
    for shape in doc.get("shapes", []):
        label, kind, pts = shape["label"], shape.get("shape_type", "polygon"), shape["points"]
        if label not in classes:
            raise DataFormatError(path, f"label {label!r} is not among the classes {classes}")
        value = classes.index(label) + 1
        if kind == "rectangle":
            (x0, y0), (x1, y1) = pts
            pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        elif kind == "circle":
            (cx, cy), (px, py) = pts
            r = float(np.hypot(px - cx, py - cy))
            a = np.linspace(0, 2 * np.pi, 64, endpoint=False)
            pts = list(zip(cx + r * np.cos(a), cy + r * np.sin(a), strict=True))
        elif kind != "polygon":
            raise DataFormatError(
                path, f"shape_type {kind!r} is not supported (polygon, rectangle, circle)"
            )
        _paint_polygon(mask, pts, value)
    return mask


def import_labelme(json_dir, out, classes: list[str] | None = None) -> list[str]:
    """Every *.json in json_dir -> out/images + out/masks. Returns the class list (value k+1)."""
    from PIL import Image  # optional dependency (pillow)

    json_dir, out = Path(json_dir), Path(out)
    files = sorted(json_dir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no LabelMe .json files in {json_dir}")
    docs = []
    for f in files:
        try:
            docs.append((f, json.loads(f.read_text())))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataFormatError(f, f"not a LabelMe JSON file ({e})") from e
    if classes is None:
        classes = sorted({s["label"] for _, d in docs for s in d.get("shapes", [])})
    for f, doc in docs:
        for key in ("imageHeight", "imageWidth", "shapes"):
            if key not in doc:
                raise DataFormatError(f, f"LabelMe file lacks {key!r}")
        mask = labelme_shapes_to_mask(doc, classes, f)
        if doc.get("imageData"):
            image = Image.open(io.BytesIO(base64.b64decode(doc["imageData"])))
        else:
            image_path = (f.parent / doc["imagePath"]).resolve()
            if not image_path.is_file():
                raise FileNotFoundError(
                    f"{f}: its image {image_path} does not exist and the file has no imageData"
                )
            image = Image.open(image_path)
        _write_pair(out, f.stem, image, mask)
    return classes


# ---- COCO ------------------------------------------------------------------------------------
def rle_decode(counts, size) -> np.ndarray:
    """COCO RLE -> (H, W) bool. counts: list of run lengths or the compressed string; runs
    alternate 0s and 1s, starting with 0s, over the mask in column-major (Fortran) order."""
    h, w = int(size[0]), int(size[1])
    if isinstance(counts, str):
        counts = _rle_string_to_counts(counts)
    flat = np.zeros(h * w, dtype=bool)
    pos, value = 0, False
    for run in counts:
        if value:
            flat[pos : pos + run] = True
        pos += run
        value = not value
    if pos != h * w:
        raise ValueError(f"RLE counts sum to {pos}, not {h}x{w} = {h * w} pixels")
    return flat.reshape((w, h)).T


def _rle_string_to_counts(s: str) -> list[int]:
    """pycocotools' compressed counts: 5 bits per char (+48), continuation bit 0x20, sign bit
    0x10 on the last char, and every count after the second stored as a difference."""
    counts: list[int] = []
    i = 0
    while i < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[i]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def import_coco(annotations, image_dir, out) -> list[str]:
    """A COCO instances JSON + its image folder -> out/images + out/masks; returns class names."""
    from PIL import Image  # optional dependency (pillow)

    annotations, image_dir, out = Path(annotations), Path(image_dir), Path(out)
    try:
        doc = json.loads(annotations.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(annotations, f"not a COCO JSON file ({e})") from e
    for key in ("images", "annotations", "categories"):
        if key not in doc:
            raise DataFormatError(annotations, f"COCO file lacks {key!r}")
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    value_of = {c["id"]: k + 1 for k, c in enumerate(cats)}
    by_image: dict[int, list] = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for info in doc["images"]:
        h, w = int(info["height"]), int(info["width"])
        mask = np.zeros((h, w), dtype=np.uint8)
        for a in by_image.get(info["id"], []):
            if a["category_id"] not in value_of:
                raise DataFormatError(
                    annotations,
                    f"annotation {a.get('id')} has category "
                    f"{a['category_id']}, not among the categories",
                )
            seg, value = a["segmentation"], value_of[a["category_id"]]
            if isinstance(seg, dict):
                mask[rle_decode(seg["counts"], seg["size"])] = value
            else:
                for poly in seg:
                    _paint_polygon(mask, list(zip(poly[0::2], poly[1::2], strict=False)), value)
        path = image_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(
                f"{annotations}: image {path} (file_name of image {info['id']}) does not exist"
            )
        _write_pair(out, Path(info["file_name"]).stem, Image.open(path), mask)
    return [c["name"] for c in cats]
