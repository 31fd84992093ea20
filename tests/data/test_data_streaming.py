"""File-backed data sets (mpinet.data.streaming): an index in memory, files decoded per batch.
Same samples as the in-memory reader, the loader's batches unchanged, only the batch's files
opened, and exact resume at another world size (simulated: the sampler takes rank and size)."""

import numpy as np
import pytest
from image_tree import write_image_tree

from mpinet.data import DataLoader, DistributedSampler, get_dataset
from mpinet.data import image_folder as image_folder_mod
from mpinet.data.dataset import DataFormatError
from mpinet.data.streaming import ImageFolderFiles, dataset_channel_stats


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = write_image_tree(tmp_path_factory.mktemp("tree"), per_class=(9, 7, 8))
    write_image_tree(root, per_class=(2, 2, 2), seed=1, split="test")
    return root


@pytest.fixture
def opened(monkeypatch):
    """Paths the image decoder opens, in order."""
    paths = []
    decode = image_folder_mod._decode

    def spy(path, *args):
        paths.append(str(path))
        return decode(path, *args)

    monkeypatch.setattr("mpinet.data.streaming._decode", spy)
    return paths


def test_same_samples_as_the_in_memory_reader(tree, opened):
    files = get_dataset("image-folder", data_dir=tree, stream=True)
    memory = get_dataset("image-folder", data_dir=tree, raw=True)
    assert opened == []  # listing decodes nothing
    assert isinstance(files, ImageFolderFiles) and len(files) == len(memory) == 24
    assert (files.input_shape, files.num_classes, files.class_names, files.is_raw) == (
        memory.input_shape,
        memory.num_classes,
        memory.class_names,
        True,
    )
    x, y = files.read_batch(np.arange(len(files)))
    np.testing.assert_array_equal(x, memory.images)
    np.testing.assert_array_equal(y, memory.labels)
    test = get_dataset("image-folder", "test", data_dir=tree, stream=True)
    assert len(test) == 6 and test.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_loader_batches_equal_and_open_only_the_batch_files(tree, opened):
    files = ImageFolderFiles(tree, size=(6, 5))
    memory = get_dataset("image-folder", data_dir=tree)
    for rank in range(3):
        opened.clear()
        got = list(DataLoader(files, DistributedSampler(len(files), 4, rank, 3, seed=7), workers=0))
        want = list(DataLoader(memory, DistributedSampler(len(memory), 4, rank, 3, seed=7)))
        for (xg, yg, cg), (xw, yw, cw) in zip(got, want, strict=True):
            np.testing.assert_array_equal(xg, xw)
            np.testing.assert_array_equal(yg, yw)
            assert cg == cw
        mine = np.concatenate(
            [b.indices for b in DistributedSampler(len(files), 4, rank, 3, seed=7)]
        )
        assert sorted(opened) == sorted(files.path(int(i)) for i in mine)  # its shard, once each


def _images(x) -> list[bytes]:
    """The loader's float images back to their file bytes (x * 255 is exact for uint8 pixels)."""
    return [img.tobytes() for img in np.rint(np.asarray(x) * 255).astype(np.uint8)]


def test_resume_at_another_world_size_covers_each_file_once(tree):
    files = ImageFolderFiles(tree, size=(6, 5))
    seen = []
    loaders = [
        DataLoader(files, DistributedSampler(len(files), 2, r, 4, seed=3), workers=0)
        for r in range(4)
    ]
    iters = [iter(ld) for ld in loaders]
    for _ in range(2):  # two global steps on 4 ranks, then "save"
        for it in iters:
            seen.extend(_images(next(it)[0]))
    state = loaders[0].state_dict()
    assert all(ld.state_dict() == state for ld in loaders) and state["consumed"] == 16
    for ld in loaders:
        ld.close()
    for r in range(2):  # resume on 2 ranks with another batch size
        sampler = DistributedSampler(len(files), 3, r, 2, seed=3)
        sampler.load_state_dict(state)
        for x, _, _ in DataLoader(files, sampler, workers=0):
            seen.extend(_images(x))
    everything = [img.tobytes() for img in files.read_batch(np.arange(len(files)))[0]]
    assert sorted(seen) == sorted(everything)  # each file exactly once over the two world sizes


def test_errors_name_the_file(tmp_path):
    root = write_image_tree(tmp_path, per_class=(2, 2))
    (root / "train" / "c1" / "001.png").write_bytes(b"not a png")
    files = ImageFolderFiles(root)
    with pytest.raises(DataFormatError, match="001.png.*cannot decode"):
        files.read_batch(np.arange(len(files)))
    write_image_tree(tmp_path / "odd", per_class=(1,), size=(6, 5))
    from PIL import Image

    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(
        tmp_path / "odd" / "train" / "c0" / "002.png"
    )
    odd = ImageFolderFiles(tmp_path / "odd")
    with pytest.raises(DataFormatError, match="002.png: image is 3x3 but .* 6x5"):
        odd.read_batch([1])
    (tmp_path / "empty" / "train" / "c0").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no .png"):
        ImageFolderFiles(tmp_path / "empty")


def test_subset_and_channel_stats(tree):
    files = ImageFolderFiles(tree)
    part = files.subset(5)
    assert len(part) == 5 and len(files) == 24 and part.path(4) == files.path(4)
    memory = get_dataset("image-folder", data_dir=tree)
    mean, std = dataset_channel_stats(files)
    want_mean, want_std = dataset_channel_stats(memory)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6)
    np.testing.assert_allclose(std, want_std, rtol=1e-6)
