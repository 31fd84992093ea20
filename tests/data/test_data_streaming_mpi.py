"""File-backed data under real MPI: each rank opens only the files of its shard, the shards of
an epoch are disjoint and cover every file once, and the batches equal the in-memory reader's."""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from image_tree import write_image_tree

from mpinet.data import DataLoader, DistributedSampler, get_dataset
from mpinet.data import image_folder as image_folder_mod

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture(scope="module")
def shared_tree():
    """One tree written by rank 0 in a folder every rank reads."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    root = tempfile.mkdtemp(prefix="mpinet-stream-") if comm.rank == 0 else None
    root = Path(comm.bcast(root))
    if comm.rank == 0:
        write_image_tree(root, per_class=(11, 9, 10))
    comm.Barrier()
    yield root
    comm.Barrier()
    if comm.rank == 0:
        shutil.rmtree(root)


@pytest.mark.parametrize("workers", [0, 1])
def test_each_rank_opens_only_its_shard(shared_tree, monkeypatch, workers):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    opened = []
    decode = image_folder_mod._decode
    monkeypatch.setattr(
        "mpinet.data.streaming._decode",
        lambda path, *a: (opened.append(str(path)), decode(path, *a))[1],
    )
    files = get_dataset("image-folder", data_dir=shared_tree, stream=True, size=(6, 5))
    memory = get_dataset("image-folder", data_dir=shared_tree)
    sampler = DistributedSampler(len(files), 3, comm.rank, comm.size, seed=11)
    mine = []
    for (x, y, _), batch in zip(
        DataLoader(files, sampler, workers=workers),
        DistributedSampler(len(files), 3, comm.rank, comm.size, seed=11),
        strict=True,
    ):
        np.testing.assert_array_equal(x, memory.images[batch.indices])
        np.testing.assert_array_equal(y, memory.labels[batch.indices])
        mine.extend(files.path(int(i)) for i in batch.indices)
    if workers:  # decoded in worker processes: the spy cannot see them, the batches matched
        return
    assert sorted(opened) == sorted(mine)  # only (and all of) this rank's samples, once each
    everyone = comm.allgather(opened)
    union = [p for part in everyone for p in part]
    assert len(union) == len(set(union)) == len(files)  # disjoint shards covering the epoch


def test_channel_stats_split_over_ranks_equal_one_process(shared_tree, monkeypatch):
    from mpi4py import MPI

    from mpinet.comm import create_communicator
    from mpinet.data.streaming import dataset_channel_stats

    files = get_dataset("image-folder", data_dir=shared_tree, stream=True)
    want = dataset_channel_stats(files)  # this process reads every sampled file
    opened = []
    decode = image_folder_mod._decode
    monkeypatch.setattr(
        "mpinet.data.streaming._decode",
        lambda path, *a: (opened.append(str(path)), decode(path, *a))[1],
    )
    comm = create_communicator("mpi", MPI.COMM_WORLD)
    mean, std = dataset_channel_stats(files, comm=comm)
    np.testing.assert_allclose(mean, want[0], rtol=1e-9)
    np.testing.assert_allclose(std, want[1], rtol=1e-9)
    everyone = [p for part in MPI.COMM_WORLD.allgather(opened) for p in part]
    assert len(everyone) == len(set(everyone)) == len(files)  # each sampled file read once
