"""python -m mpinet.label: classical bootstrap on a drawn cell image, LabelMe and COCO imports
(polygons; RLE both uncompressed and in COCO's compressed string), and clear errors."""

import json

import numpy as np
import pytest
from PIL import Image

from mpinet.data import get_dataset
from mpinet.label.__main__ import main
from mpinet.label.imports import rle_decode

pytest.importorskip("skimage")


def cells_image(size=64):
    """Two touching bright discs and one apart on a dark noisy background."""
    yy, xx = np.mgrid[0:size, 0:size]
    cells = np.zeros((size, size), bool)
    for cy, cx, r in ((20, 18, 8), (20, 33, 8), (46, 46, 7)):
        cells |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    rng = np.random.default_rng(0)
    img = np.clip(40 + cells * 150 + rng.normal(0, 8, cells.shape), 0, 255).astype(np.uint8)
    return img, cells


def test_bootstrap_finds_the_cells_and_splits_touching_ones(tmp_path):
    from skimage.measure import label

    img, cells = cells_image()
    Image.fromarray(img).save(tmp_path / "raw.png")
    assert main(["bootstrap", str(tmp_path / "raw.png"), str(tmp_path / "out")]) == 0
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "raw.png")) > 0
    iou = (mask & cells).sum() / (mask | cells).sum()
    assert iou > 0.85, iou
    assert label(mask, connectivity=1).max() == 3  # the watershed line parts the touching pair
    tiled = tmp_path / "tiled"
    assert main(["bootstrap", str(tmp_path / "raw.png"), str(tiled), "--tile", "32"]) == 0
    data = get_dataset("mask-folder", data_dir=tiled)
    assert len(data) == 4 and data.input_shape == (1, 32, 32)


def test_labelme_polygons_and_rectangles(tmp_path):
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "a.png")
    doc = {
        "imagePath": "a.png",
        "imageHeight": 10,
        "imageWidth": 12,
        "shapes": [
            {"label": "nucleus", "shape_type": "rectangle", "points": [[1, 1], [4, 3]]},
            {
                "label": "cell",
                "shape_type": "polygon",
                "points": [[6, 5], [10, 5], [10, 8], [6, 8]],
            },
        ],
    }
    (tmp_path / "a.json").write_text(json.dumps(doc))
    assert main(["labelme", str(tmp_path), str(tmp_path / "out")]) == 0
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "a.png"))
    want = np.zeros((10, 12), np.uint8)
    want[1:4, 1:5] = 2  # nucleus: the second of the sorted labels (cell, nucleus)
    want[5:9, 6:11] = 1
    np.testing.assert_array_equal(mask, want)
    data = get_dataset("mask-folder", data_dir=tmp_path / "out", mask_values=[0, 1, 2])
    assert data.num_classes == 3 and data.input_shape == (3, 10, 12)
    doc["shapes"][0]["label"] = "other"
    (tmp_path / "a.json").write_text(json.dumps(doc))
    assert main(["labelme", str(tmp_path), str(tmp_path / "out2"), "--classes", "cell"]) == 2


def _rle_string(counts):
    """pycocotools' rleToString, transcribed, for the test's compressed case."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def test_coco_rle_and_polygons(tmp_path):
    rng = np.random.default_rng(1)
    truth = rng.random((7, 9)) < 0.4
    flat = truth.T.ravel()  # column-major
    runs, value, count = [], False, 0
    for v in flat:
        if v != value:
            runs.append(count)
            value, count = v, 0
        count += 1
    runs.append(count)
    np.testing.assert_array_equal(rle_decode(runs, (7, 9)), truth)
    np.testing.assert_array_equal(rle_decode(_rle_string(runs), (7, 9)), truth)
    Image.fromarray(np.zeros((7, 9), np.uint8)).save(tmp_path / "im.png")
    coco = {
        "images": [{"id": 5, "file_name": "im.png", "height": 7, "width": 9}],
        "categories": [{"id": 3, "name": "nucleus"}, {"id": 1, "name": "cell"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 5,
                "category_id": 1,
                "iscrowd": 1,
                "segmentation": {"counts": _rle_string(runs), "size": [7, 9]},
            },
            {"id": 2, "image_id": 5, "category_id": 3, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]},
        ],
    }
    (tmp_path / "inst.json").write_text(json.dumps(coco))
    assert main(["coco", str(tmp_path / "inst.json"), str(tmp_path), str(tmp_path / "out")]) == 0
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "im.png"))
    want = truth.astype(np.uint8)  # cell (id 1) -> value 1
    want[0:3, 0:3] = 2  # nucleus (id 3) -> value 2, painted after
    np.testing.assert_array_equal(mask, want)
    coco["images"][0]["file_name"] = "missing.png"
    (tmp_path / "inst.json").write_text(json.dumps(coco))
    assert main(["coco", str(tmp_path / "inst.json"), str(tmp_path), str(tmp_path / "o2")]) == 2


def test_predict_writes_a_mask_per_image(tmp_path):
    from mpinet.checkpoint.store import write_weights_file
    from mpinet.models import build_model

    net = build_model("unet", num_classes=2, in_channels=1, input_size=16, base_width=4, depth=2)
    write_weights_file(str(tmp_path / "w.safetensors"), net.state_dict())  # as --save-weights
    rng = np.random.default_rng(0)
    (tmp_path / "new").mkdir()
    for i in range(2):  # 20 x 24: padded to 32 x 32 for the U-Net, cropped back
        pixels = rng.integers(0, 256, (20, 24), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "new" / f"{i}.png")
    img, cells = cells_image(16)
    for sub, arr in (("images", img), ("masks", cells.astype(np.uint8) * 255)):
        (tmp_path / "data" / "train" / sub).mkdir(parents=True)
        Image.fromarray(arr).save(tmp_path / "data" / "train" / sub / "a.png")
    for extra in ([], ["--normalize-like", str(tmp_path / "data")]):
        out = tmp_path / f"out{len(extra)}"
        args = ["predict", "--weights", str(tmp_path / "w.safetensors"), "--model-opt",
                "base_width=4", "--model-opt", "depth=2", *extra, str(tmp_path / "new"), str(out)]
        assert main(args) == 0
        masks = [np.asarray(Image.open(out / f"{i}.png")) for i in range(2)]
        assert all(m.shape == (20, 24) and set(np.unique(m)) <= {0, 255} for m in masks)
    assert main(["predict", "--weights", str(tmp_path / "missing"), str(tmp_path / "new"),
                 str(tmp_path / "o")]) == 2
