"""Readers of real formats: the real Fashion-MNIST files from Debian's package, and IDX / CIFAR /
image-folder fixtures written here in the formats' real byte layouts, intact and damaged."""
import gzip
import inspect
import struct
from pathlib import Path

import numpy as np
import pytest

from mpinet.data import DATASET_NAMES, ArrayDataset, DataFormatError, get_dataset
from mpinet.data import registry
from mpinet.data.builtin import load_synthetic, load_synthetic_segmentation
from mpinet.data.cifar import load_cifar10
from mpinet.data.idx import FASHION_MNIST_DIR, read_idx
from mpinet.data.image_folder import load_image_folder

# ---------------------------------------------------------------- real Fashion-MNIST (Debian)

needs_fashion = pytest.mark.skipif(
    not Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed")


@pytest.fixture(scope="module")
def fashion_train():
    return get_dataset("fashion-mnist", split="train")


@needs_fashion
def test_fashion_mnist_train_is_the_real_set(fashion_train):
    d = fashion_train
    assert d.images.shape == (60000, 1, 28, 28) and d.images.dtype == np.float32
    assert d.labels.shape == (60000,) and d.labels.dtype == np.int64
    assert d.num_classes == 10 and d.input_shape == (1, 28, 28) and len(d) == 60000
    # The published training set is balanced: 6,000 images per class.
    assert np.bincount(d.labels, minlength=10).tolist() == [6000] * 10
    # First labels of the published file (ankle boot, T-shirt, T-shirt, dress, ...).
    assert d.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert d.images.min() == 0.0 and d.images.max() == 1.0
    assert d.class_names[9] == "Ankle boot"


@needs_fashion
def test_fashion_mnist_values_match_an_independent_parse(fashion_train):
    # Parse the raw bytes here with struct, independently of read_idx, and compare pixels.
    with gzip.open(Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"), "rb") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        first_two = np.frombuffer(f.read(2 * 28 * 28), dtype=np.uint8).reshape(2, 1, 28, 28)
    assert (magic, n, rows, cols) == (0x803, 60000, 28, 28)
    np.testing.assert_array_equal(fashion_train.images[:2], first_two / np.float32(255))


@needs_fashion
def test_fashion_mnist_test_split_and_raw():
    d = get_dataset("fashion-mnist", split="test", raw=True)
    assert d.images.shape == (10000, 1, 28, 28) and d.images.dtype == np.uint8 and d.is_raw
    assert np.bincount(d.labels, minlength=10).tolist() == [1000] * 10
    assert d.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]


# ---------------------------------------------------------------- IDX fixtures

def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_mnist(root: Path, split="train", n=12, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    prefix = "train" if split == "train" else "t10k"
    root.mkdir(parents=True, exist_ok=True)
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", images),
                      (f"{prefix}-labels-idx1-ubyte", labels)):
        data = idx_bytes(arr)
        if gz:
            (root / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip_gzip_and_raw(tmp_path, gz):
    images, labels = write_mnist(tmp_path, "test", gz=gz)
    d = get_dataset("mnist", split="test", data_dir=tmp_path)
    np.testing.assert_array_equal(d.images[:, 0], images / np.float32(255))
    np.testing.assert_array_equal(d.labels, labels)
    raw = get_dataset("mnist", split="test", data_dir=tmp_path, raw=True)
    np.testing.assert_array_equal(raw.images[:, 0], images)


def test_idx_other_element_types(tmp_path):
    arr = np.arange(24, dtype=">i4").reshape(2, 3, 4) - 5
    (tmp_path / "a.idx").write_bytes(idx_bytes(arr, 0x0C))
    out = read_idx(tmp_path / "a.idx")
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == np.int32 and out.dtype.isnative


def test_idx_truncated_data_names_file_and_counts(tmp_path):
    write_mnist(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataFormatError) as e:
        get_dataset("mnist", data_dir=tmp_path)
    msg = str(e.value)
    assert str(p) in msg and "truncated" in msg and str(12 * 28 * 28) in msg


def test_idx_truncated_gzip_names_file(tmp_path):
    write_mnist(tmp_path, gz=True)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DataFormatError, match="truncated") as e:
        get_dataset("mnist", data_dir=tmp_path)
    assert str(p) in str(e.value)


def test_idx_corrupt_gzip_names_file(tmp_path):
    write_mnist(tmp_path, gz=True)
    p = tmp_path / "train-labels-idx1-ubyte.gz"
    data = bytearray(p.read_bytes())
    data[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    p.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="corrupt") as e:
        get_dataset("mnist", data_dir=tmp_path)
    assert str(p) in str(e.value)


def test_idx_bad_magic_names_file(tmp_path):
    write_mnist(tmp_path, gz=False)
    p = tmp_path / "train-labels-idx1-ubyte"
    p.write_bytes(b"PK\x03\x04" + p.read_bytes()[4:])  # e.g. a zip file under the IDX name
    with pytest.raises(DataFormatError, match="magic") as e:
        get_dataset("mnist", data_dir=tmp_path)
    assert str(p) in str(e.value)


def test_idx_trailing_bytes_and_count_mismatch(tmp_path):
    write_mnist(tmp_path, gz=False)
    p = tmp_path / "train-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes() + b"\0")
    with pytest.raises(DataFormatError, match="trailing"):
        get_dataset("mnist", data_dir=tmp_path)
    p.write_bytes(idx_bytes(np.zeros(11, np.uint8)))  # 11 labels for 12 images
    with pytest.raises(DataFormatError, match="11 labels but") as e:
        get_dataset("mnist", data_dir=tmp_path)
    assert str(p) in str(e.value)


def test_idx_missing_file_and_dir(tmp_path):
    write_mnist(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte") as e:
        get_dataset("mnist", split="test", data_dir=tmp_path)
    assert str(tmp_path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="no default location"):
        get_dataset("mnist")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_dataset("fashion-mnist", data_dir=tmp_path / "nope")


# ---------------------------------------------------------------- CIFAR fixtures

def cifar_records(labels: np.ndarray, images: np.ndarray) -> bytes:
    """labels: (n, k) uint8 label bytes; images: (n, 3, 32, 32) uint8 -> the binary-version
    records."""
    return np.concatenate([labels, images.reshape(len(images), -1)],
                          axis=1).astype(np.uint8).tobytes()


def write_cifar10(root: Path, per_file=3, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, size=(per_file, 1)).astype(np.uint8)
        images = rng.integers(0, 256, size=(per_file, 3, 32, 32), dtype=np.uint8)
        (root / name).write_bytes(cifar_records(labels, images))
        out[name] = (labels[:, 0], images)
    return out


def test_cifar10_layout_and_order(tmp_path):
    files = write_cifar10(tmp_path / "cifar-10-batches-bin")
    d = load_cifar10(tmp_path, "train")  # the parent folder works too
    assert d.images.shape == (15, 3, 32, 32) and d.num_classes == 10
    want_labels = np.concatenate([files[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    want_images = np.concatenate([files[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(d.labels, want_labels)
    np.testing.assert_array_equal(d.images, want_images / np.float32(255))
    # Byte 1 of a record is the red channel's top-left pixel (CHW order, not HWC).
    raw = (tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes()
    assert d.images[0, 0, 0, 0] == np.float32(raw[1] / 255)
    assert d.images[0, 1, 0, 0] == np.float32(raw[1 + 1024] / 255)
    t = get_dataset("cifar10", split="test", data_dir=tmp_path / "cifar-10-batches-bin", raw=True)
    np.testing.assert_array_equal(t.images, files["test_batch.bin"][1])


def test_cifar10_truncated_names_file(tmp_path):
    write_cifar10(tmp_path)
    p = tmp_path / "data_batch_3.bin"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(DataFormatError, match="3073-byte record") as e:
        load_cifar10(tmp_path)
    assert str(p) in str(e.value)


def test_cifar10_bad_label_and_missing_batch(tmp_path):
    write_cifar10(tmp_path)
    p = tmp_path / "test_batch.bin"
    data = bytearray(p.read_bytes())
    data[3073] = 200  # second record's label byte
    p.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="record 1 has label byte 0 = 200") as e:
        load_cifar10(tmp_path, "test")
    assert str(p) in str(e.value)
    (tmp_path / "data_batch_4.bin").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4.bin"):
        load_cifar10(tmp_path, "train")


def test_cifar100_fine_and_coarse(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.stack([rng.integers(0, 20, 4), rng.integers(0, 100, 4)], axis=1).astype(np.uint8)
    images = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    (tmp_path / "train.bin").write_bytes(cifar_records(labels, images))
    fine = get_dataset("cifar100", data_dir=tmp_path)
    coarse = get_dataset("cifar100", data_dir=tmp_path, label="coarse")
    assert fine.num_classes == 100 and coarse.num_classes == 20
    np.testing.assert_array_equal(fine.labels, labels[:, 1])
    np.testing.assert_array_equal(coarse.labels, labels[:, 0])
    np.testing.assert_array_equal(fine.images, images / np.float32(255))
    (tmp_path / "test.bin").write_bytes(cifar_records(labels, images)[:5000])
    with pytest.raises(DataFormatError, match="3074-byte record") as e:
        get_dataset("cifar100", split="test", data_dir=tmp_path)
    assert str(tmp_path / "test.bin") in str(e.value)


# ---------------------------------------------------------------- image-folder fixtures

def write_image(path: Path, rgb: np.ndarray):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def test_image_folder_classes_sorted_and_pixels(tmp_path):
    rng = np.random.default_rng(0)
    pics = {}
    for split in ("train", "test"):
        for cls in ("zebra", "ant", "cat"):
            for i in range(2):
                rgb = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
                write_image(tmp_path / split / cls / f"{i}.png", rgb)
                pics[(split, cls, i)] = rgb
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    d = get_dataset("image-folder", data_dir=tmp_path)
    assert d.class_names == ["ant", "cat", "zebra"] and d.num_classes == 3
    assert d.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert d.images.shape == (6, 3, 6, 5)
    zebra0 = pics[("train", "zebra", 0)].transpose(2, 0, 1)  # HWC file -> CHW
    np.testing.assert_array_equal(d.images[4], zebra0 / np.float32(255))
    t = get_dataset("image-folder", split="test", data_dir=tmp_path, size=(4, 4), raw=True)
    assert t.images.shape == (6, 3, 4, 4) and t.images.dtype == np.uint8


def test_image_folder_jpeg_grayscale_and_resize(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        p = tmp_path / cls / "x.jpg"
        p.parent.mkdir(parents=True)
        Image.new("RGB", (10, 7), (200, 100, 50)).save(p, quality=95)
    d = load_image_folder(tmp_path, size=8, grayscale=True)
    assert d.images.shape == (2, 1, 8, 8)
    # L = 0.299 R + 0.587 G + 0.114 B = 124.2 (JPEG is lossy: a few levels of slack)
    assert abs(float(d.images.mean()) * 255 - 124.2) < 3
    with pytest.raises(FileNotFoundError, match="no test/ or val/"):
        load_image_folder(tmp_path, split="test")


def test_image_folder_truncated_and_garbage_files_named(tmp_path):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "train" / "a" / "ok.png",
                rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    bad = tmp_path / "train" / "a" / "bad.png"
    write_image(bad, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DataFormatError, match="cannot decode") as e:
        load_image_folder(tmp_path)
    assert str(bad) in str(e.value)
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataFormatError) as e:
        load_image_folder(tmp_path)
    assert str(bad) in str(e.value)


def test_image_folder_mixed_sizes_need_size(tmp_path):
    write_image(tmp_path / "a" / "0.png", np.zeros((8, 8, 3), np.uint8))
    write_image(tmp_path / "b" / "1.png", np.zeros((9, 8, 3), np.uint8))
    with pytest.raises(DataFormatError, match="size=") as e:
        load_image_folder(tmp_path)
    assert "1.png" in str(e.value)
    assert load_image_folder(tmp_path, size=8).images.shape == (2, 3, 8, 8)


# ---------------------------------------------------------------- built-in and registry

def test_digits_split_is_fixed_stratified_and_disjoint():
    tr, te = get_dataset("digits"), get_dataset("digits", split="test")
    assert (len(tr), len(te)) == (1438, 359)
    assert tr.input_shape == (1, 8, 8) and tr.images.max() == 1.0
    from sklearn.datasets import load_digits

    full = load_digits()
    # Every real image lands in exactly one split: compare as byte rows.
    rows = {r.tobytes() + bytes([t])
            for r, t in zip((full.images / 16).astype(np.float32), full.target, strict=True)}
    got = [r[0].tobytes() + bytes([t])
           for r, t in zip(np.concatenate([tr.images, te.images]),
                           np.concatenate([tr.labels, te.labels]), strict=True)]
    assert len(got) == 1797 and set(got) == rows
    frac = np.bincount(te.labels, minlength=10) / np.bincount(full.target, minlength=10)
    assert np.all(np.abs(frac - 0.2) < 0.02)
    np.testing.assert_array_equal(get_dataset("digits", split="test").labels, te.labels)


def test_synthetic_is_seeded():
    a = load_synthetic("train", num_samples=8, input_shape=(3, 5, 5), num_classes=4, seed=3)
    b = get_dataset("synthetic", num_samples=8, input_shape=(3, 5, 5), num_classes=4, seed=3)
    c = load_synthetic("test", num_samples=8, input_shape=(3, 5, 5), num_classes=4, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (8, 3, 5, 5) and a.labels.max() < 4


def test_synthetic_segmentation_masks_match_bright_pixels():
    d = load_synthetic_segmentation("train", num_samples=16, size=32, noise=0.0, shape_classes=True)
    assert d.labels.shape == (16, 32, 32) and d.num_classes == 3 and d.input_shape == (1, 32, 32)
    assert set(np.unique(d.labels)) == {0, 1, 2}
    # Without noise, pixel value alone tells shape from background.
    np.testing.assert_array_equal(d.images[:, 0] > 0.5, d.labels > 0)


def test_registry_errors_list_the_valid_choices(tmp_path):
    with pytest.raises(ValueError) as e:
        get_dataset("imagenet")
    for name in DATASET_NAMES:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="'digits' has no option"):
        get_dataset("digits", size=3)
    with pytest.raises(ValueError, match="split"):
        get_dataset("digits", split="val")
    with pytest.raises(ValueError, match="built in"):
        get_dataset("digits", data_dir=tmp_path)


def test_registry_option_table_matches_loader_signatures():
    for name, (loader, _, _) in registry._DATASETS.items():
        params = set(inspect.signature(loader).parameters) - {"split", "data_dir"}
        assert params == set(registry._OPTIONS[name]), name


def test_array_dataset_checks_shapes_and_labels():
    with pytest.raises(ValueError, match="counts must match"):
        ArrayDataset(np.zeros((3, 1, 2, 2), np.float32), np.zeros(2), 2)
    with pytest.raises(ValueError, match="num_classes"):
        ArrayDataset(np.zeros((2, 1, 2, 2), np.float32), np.array([0, 5]), 2)


def test_every_reader_refuses_an_unknown_split(tmp_path):
    from mpinet.data.builtin import load_digits
    from mpinet.data.cifar import load_cifar100
    from mpinet.data.idx import load_idx_dataset
    from mpinet.data.image_folder import load_image_folder

    readers = [lambda: load_digits("val"), lambda: load_synthetic("val"),
               lambda: load_synthetic_segmentation("val"),
               lambda: load_cifar10(tmp_path, "val"), lambda: load_cifar100(tmp_path, "val"),
               lambda: load_idx_dataset(tmp_path, "val"),
               lambda: load_image_folder(tmp_path, "val"),
               lambda: get_dataset("synthetic", "val")]
    for read in readers:
        with pytest.raises(ValueError, match=r"split must be 'train' or 'test', got 'val'"):
            read()
