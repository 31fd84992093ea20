"""mask-folder (mpinet.data.masks): pairs matched by stem, PNG/JPEG/TIFF images, a value->class
map, resize with nearest-neighbour masks, per-class metrics, and every bad input named."""

import numpy as np
import pytest
from PIL import Image

from mpinet.data import get_dataset
from mpinet.data.dataset import DataFormatError
from mpinet.training.segmentation_metrics import confusion_matrix, scores_from_confusion

RNG = np.random.default_rng(3)


def write_pair(root, split, stem, image, mask, image_suffix=".png", mask_suffix=".png"):
    for sub in ("images", "masks"):
        (root / split / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / split / "images" / f"{stem}{image_suffix}")
    Image.fromarray(mask).save(root / split / "masks" / f"{stem}{mask_suffix}")


@pytest.fixture
def tree(tmp_path):
    masks = {}
    for split in ("train", "test"):
        for i, (isuf, msuf) in enumerate([(".png", ".png"), (".tif", ".tif"), (".jpg", ".png")]):
            img = RNG.integers(0, 256, (8, 12), dtype=np.uint8)
            mask = RNG.choice(np.array([0, 128, 255], np.uint8), size=(8, 12))
            write_pair(tmp_path, split, f"s{i}", img, mask, isuf, msuf)
            masks[(split, i)] = mask
    return tmp_path, masks


def test_pairs_values_and_binary_default(tree):
    root, masks = tree
    multi = get_dataset("mask-folder", data_dir=root, mask_values=[0, 128, 255])
    assert len(multi) == 3 and multi.num_classes == 3 and multi.is_segmentation
    assert multi.input_shape == (1, 8, 12)
    x, y = multi.read_batch([0, 1, 2])
    assert x.shape == (3, 1, 8, 12) and y.shape == (3, 8, 12) and y.dtype == np.int64
    for i in range(3):
        np.testing.assert_array_equal(y[i], np.searchsorted([0, 128, 255], masks[("train", i)]))
    binary = get_dataset("mask-folder", "test", data_dir=root)
    _, yb = binary.read_batch([1])
    np.testing.assert_array_equal(yb[0], (masks[("test", 1)] > 0).astype(np.int64))
    small = get_dataset("mask-folder", data_dir=root, size=(4, 6), mask_values=[0, 128, 255])
    xs, ys = small.read_batch([0])
    assert xs.shape == (1, 1, 4, 6) and set(np.unique(ys)) <= {0, 1, 2}  # nearest: no new values


def test_bad_inputs_name_the_file(tree, tmp_path_factory):
    root, _ = tree
    with pytest.raises(
        DataFormatError, match=r"s1\.tif: mask values \[255\] are not in the class map"
    ):
        get_dataset("mask-folder", data_dir=root, mask_values=[0, 128]).read_batch([1])
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "train" / "masks" / "s0.png")
    with pytest.raises(DataFormatError, match=r"s0\.png: mask is 5x5 but its image .* 8x12"):
        get_dataset("mask-folder", data_dir=root).read_batch([0])
    (root / "train" / "images" / "s2.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataFormatError, match=r"s2\.jpg: cannot decode image"):
        get_dataset("mask-folder", data_dir=root).read_batch([2])
    (root / "train" / "masks" / "s1.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"s1\.tif has no mask"):
        get_dataset("mask-folder", data_dir=root)
    empty = tmp_path_factory.mktemp("empty")
    (empty / "images").mkdir()
    (empty / "masks").mkdir()
    with pytest.raises(FileNotFoundError, match="no .* files in .*images"):
        get_dataset("mask-folder", data_dir=empty)
    with pytest.raises(FileNotFoundError, match="no test/images or val/images"):
        get_dataset("mask-folder", "test", data_dir=empty)


def test_image_folder_refuses_a_mask_tree(tree):
    root, _ = tree
    for stream in (False, True):
        with pytest.raises(ValueError, match="segmentation tree.*--dataset mask-folder"):
            get_dataset("image-folder", data_dir=root, stream=stream)


def test_per_class_scores_from_the_confusion_matrix():
    truth = np.array([[0, 0, 1, 1], [2, 2, 2, 0]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
    cm = confusion_matrix(pred, truth, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 2, 0], [1, 0, 2]])
    s = scores_from_confusion(cm)
    np.testing.assert_allclose(s["iou"], [2 / 4, 2 / 3, 2 / 3])
    np.testing.assert_allclose(s["dice"], [4 / 6, 4 / 5, 4 / 5])
    assert s["pixel_accuracy"] == 6 / 8
    assert np.isnan(scores_from_confusion(np.diag([3, 0]))["iou"][1])  # absent class: no score
