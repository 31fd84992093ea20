"""Decode workers (mpinet.data.workers): the same batches as without workers, across epochs and a
resume; a worker's exception or death ends the epoch with an error naming it, within seconds."""

import os
import signal
import time

import numpy as np
import pytest
from image_tree import write_image_tree

from mpinet.data import DataLoader, DistributedSampler, ShardSampler, get_dataset
from mpinet.data.streaming import ImageFolderFiles
from mpinet.data.workers import WorkerPool


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_image_tree(tmp_path_factory.mktemp("wtree"), per_class=(9, 7, 8))


def batches(loader):
    return [(x.copy(), y.copy(), n) for x, y, n in loader]


def test_workers_give_the_same_batches_over_epochs_and_resume(tree):
    files = ImageFolderFiles(tree)
    for rank, size in ((0, 1), (3, 4)):
        plain = DataLoader(files, DistributedSampler(len(files), 3, rank, size, seed=5), workers=0)
        loader = DataLoader(files, DistributedSampler(len(files), 3, rank, size, seed=5), workers=2)
        for epoch in range(2):
            plain.sampler.set_epoch(epoch)
            loader.sampler.set_epoch(epoch)
            want, got = batches(plain), batches(loader)
            assert len(got) == len(want) > 0
            for (xg, yg, ng), (xw, yw, nw) in zip(got, want, strict=True):
                np.testing.assert_array_equal(xg, xw)
                np.testing.assert_array_equal(yg, yw)
                assert ng == nw
    # break mid-epoch, resume at another world size: the rest of the epoch, from the workers
    loader = DataLoader(files, DistributedSampler(len(files), 2, 0, 1, seed=9), workers=2)
    for i, _ in enumerate(loader):
        if i == 3:
            break
    state = loader.state_dict()
    assert state["consumed"] == 8
    resumed = DistributedSampler(len(files), 3, 1, 2, seed=9)
    resumed.load_state_dict(state)
    expect = DistributedSampler(len(files), 3, 1, 2, seed=9)
    expect.load_state_dict(state)
    memory = get_dataset("image-folder", data_dir=tree)
    for (x, y, _), b in zip(DataLoader(files, resumed, workers=2), expect, strict=True):
        np.testing.assert_array_equal(x, memory.images[b.indices])
        np.testing.assert_array_equal(y, memory.labels[b.indices])


def test_evaluation_loader_with_workers(tree):
    files = ImageFolderFiles(tree)
    memory = get_dataset("image-folder", data_dir=tree)
    for x, y, _ in DataLoader(files, ShardSampler(len(files), 5, 1, 2), workers=1):
        assert x.shape[1:] == memory.images.shape[1:] and y.dtype == np.int64
    with pytest.raises(ValueError, match="in memory already"):
        DataLoader(memory, ShardSampler(len(memory), 5, 0, 1), workers=2)


def test_worker_exception_names_the_worker_and_file(tmp_path):
    root = write_image_tree(tmp_path, per_class=(4, 4))
    files = ImageFolderFiles(root)
    (root / "train" / "c1" / "002.png").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match=r"(?s)worker \d.*002.png.*cannot decode"):
        batches(
            DataLoader(files, DistributedSampler(len(files), 2, 0, 1, shuffle=False), workers=2)
        )


def test_killed_worker_ends_the_epoch_within_seconds(tree):
    files = ImageFolderFiles(tree)
    pool = WorkerPool(files, workers=2, max_batch=2)
    try:
        gen = pool.imap(DistributedSampler(len(files), 2, 0, 1, seed=1))
        next(gen)  # the workers are up and decoding
        os.kill(pool._procs[1].pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="worker 1 .*killed by signal SIGKILL"):
            for _ in gen:
                time.sleep(0.05)  # slow consumer: the dead worker's task is surely outstanding
        assert time.monotonic() - start < 10
    finally:
        pool.close()


def test_cpu_workers_augment_too_and_give_the_same_batches(tree):
    from mpinet.data import Augment
    from mpinet.data.presets import Compose, Dihedral

    files = ImageFolderFiles(tree, size=(6, 6))
    for transform in (Augment(crop_padding=2, flip=True, mean=[0.5] * 3, std=[0.2] * 3, seed=4),
                      Compose(Dihedral(seed=2), Augment(flip=True, seed=2)),
                      lambda x, y, b: (x * 2, y)):  # not one of mpinet's: stays in the thread
        plain = DataLoader(files, DistributedSampler(len(files), 4, 1, 2, seed=5),
                           transform=transform, workers=0)
        loader = DataLoader(files, DistributedSampler(len(files), 4, 1, 2, seed=5),
                            transform=transform, workers=2)
        for (xg, yg, _), (xw, yw, _) in zip(batches(loader), batches(plain), strict=True):
            assert xg.dtype == np.float32
            np.testing.assert_array_equal(xg, xw)  # bit for bit
            np.testing.assert_array_equal(yg, yw)
