"""The sampler under real MPI: each rank builds its own sampler from (rank, size) and the
allgathered indices must partition the epoch, step by step, in the world-size-free order."""
import numpy as np
import pytest

from mpinet.data import DataLoader, DistributedSampler, ShardSampler, get_dataset


def _world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("n,batch", [(101, 4), (7, 3)])
def test_allgathered_indices_partition_each_step_and_epoch(n, batch):
    comm = _world()
    rank, size = comm.Get_rank(), comm.Get_size()
    sampler = DistributedSampler(n, batch, rank, size, seed=42)
    order = DistributedSampler(n, 1, 0, 1, seed=42).epoch_order(0)
    n_steps = comm.allgather(len(sampler))
    assert len(set(n_steps)) == 1  # all ranks agree on the number of steps
    seen = []
    for batch_ in sampler:
        parts = comm.allgather(batch_.indices)  # every rank joins every step, empty or not
        joined = np.concatenate(parts)
        assert batch_.global_count == len(joined)
        np.testing.assert_array_equal(joined, order[batch_.offset:batch_.offset + len(joined)])
        seen.append(joined)
    np.testing.assert_array_equal(np.concatenate(seen), order)


@pytest.mark.mpi(min_size=2)
def test_eval_shards_count_each_test_sample_once():
    comm = _world()
    rank, size = comm.Get_rank(), comm.Get_size()
    test = get_dataset("digits", split="test")
    loader = DataLoader(test, ShardSampler(len(test), 50, rank, size), prefetch=1)
    label_sum = count = 0
    for _, y, _ in loader:
        label_sum += int(y.sum())
        count += len(y)
    totals = comm.allreduce(np.array([label_sum, count]))
    assert totals.tolist() == [int(test.labels.sum()), len(test)]
