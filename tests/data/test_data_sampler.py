"""DistributedSampler / shard_indices: partitions, world-size independence, reshuffling, and
resume at the same and at another world size — all ranks simulated in one process."""
import json

import numpy as np
import pytest

from mpinet.data import DistributedSampler, ShardSampler, even_split, shard_indices


def all_ranks(n, batch, world, **kw):
    return [DistributedSampler(n, batch, r, world, **kw) for r in range(world)]


def run_epoch(samplers):
    """Iterate all ranks in lockstep -> list of steps, each a list of per-rank Batches."""
    steps = list(zip(*[list(s) for s in samplers], strict=True))
    assert all(len(s) == len(steps[0]) for s in steps)
    return steps


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n,batch", [(40, 5), (37, 4), (10, 3), (5, 2), (1, 1)])
def test_each_sample_exactly_once_per_epoch(n, batch, world):
    samplers = all_ranks(n, batch, world, seed=7)
    n_steps = len(samplers[0])
    assert all(len(s) == n_steps == s.steps_per_epoch for s in samplers)
    steps = run_epoch(samplers)
    assert len(steps) == n_steps == -(-n // (batch * world))  # ceil: the short last step is kept
    seen = np.concatenate([b.indices for step in steps for b in step])
    assert np.array_equal(np.sort(seen), np.arange(n))
    for step in steps:
        sizes = [b.local_count for b in step]
        assert max(sizes) - min(sizes) <= 1  # as even as possible
        assert max(sizes) <= batch
        assert all(b.global_count == sum(sizes) for b in step)
        assert all(b.indices.dtype == np.int64 for b in step)


@pytest.mark.parametrize("n,batch", [(37, 4), (100, 7)])
def test_global_order_does_not_depend_on_world_size(n, batch):
    orders = []
    for world in (1, 2, 3, 4):
        steps = run_epoch(all_ranks(n, batch, world, seed=3))
        # Ranks' slices in rank order, steps in step order: the global sequence.
        orders.append(np.concatenate([b.indices for step in steps for b in step]))
    for order in orders[1:]:
        np.testing.assert_array_equal(order, orders[0])
    np.testing.assert_array_equal(orders[0], DistributedSampler(n, 1, 0, 1, seed=3).epoch_order(0))


def test_contiguous_sub_slices_of_each_step():
    s = all_ranks(23, 3, 4, seed=1)  # G = 12: one full step, then 11 over 4 ranks = 3,3,3,2
    order = s[0].epoch_order(0)
    steps = run_epoch(s)
    assert [b.local_count for b in steps[1]] == [3, 3, 3, 2]
    for step in steps:
        joined = np.concatenate([b.indices for b in step])
        off = step[0].offset
        np.testing.assert_array_equal(joined, order[off:off + step[0].global_count])


def test_more_ranks_than_a_short_step_gives_empty_batches_not_fewer_steps():
    steps = run_epoch(all_ranks(5, 2, 4))  # G = 8 > 5: one step, sizes 2,1,1,1
    assert len(steps) == 1 and [b.local_count for b in steps[0]] == [2, 1, 1, 1]
    steps = run_epoch(all_ranks(2, 1, 4))  # a rank with nothing still yields one (empty) batch
    assert [b.local_count for b in steps[0]] == [1, 1, 0, 0]
    assert all(b.global_count == 2 for b in steps[0])


def test_reshuffle_by_epoch_and_seed_and_no_shuffle():
    s = DistributedSampler(50, 5, 0, 1, seed=0)
    e0, e1 = s.epoch_order(0).copy(), s.epoch_order(1).copy()
    assert not np.array_equal(e0, e1)
    assert np.array_equal(np.sort(e1), np.arange(50))
    np.testing.assert_array_equal(DistributedSampler(50, 9, 0, 3, seed=0).epoch_order(1), e1)
    assert not np.array_equal(DistributedSampler(50, 5, 0, 1, seed=1).epoch_order(0), e0)
    plain = DistributedSampler(50, 5, 0, 1, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([b.indices for b in plain]), np.arange(50))


def test_state_advances_into_the_next_epoch():
    s = DistributedSampler(10, 2, 0, 2, seed=5)
    it = iter(s)
    b = next(it)
    assert b.state == s.state_dict() == {"seed": 5, "epoch": 0, "consumed": 4}
    rest = list(it)
    assert rest[-1].state == s.state_dict() == {"seed": 5, "epoch": 1, "consumed": 0}
    s.set_epoch(1)  # already there: keeps the position
    assert s.state_dict()["epoch"] == 1
    second = [b.epoch for b in s]
    assert second == [1, 1, 1]
    json.dumps(s.state_dict())  # plain ints


def test_drop_last():
    steps = run_epoch(all_ranks(37, 4, 2, drop_last=True))  # G = 8: 4 full steps, 5 dropped
    assert len(steps) == 4 and all(b.local_count == 4 for st in steps for b in st)
    with pytest.raises(ValueError, match="leaves no step"):
        DistributedSampler(5, 4, 0, 2, drop_last=True)


def remaining_after_resume(n, batch, world_before, world_after, steps_before, seed=11,
                           drop_last=False):
    """Take steps_before steps at world_before, save, resume at world_after: indices of the rest."""
    before = all_ranks(n, batch, world_before, seed=seed, drop_last=drop_last)
    its = [iter(s) for s in before]
    taken = []
    for _ in range(steps_before):
        taken += [next(it).indices for it in its]
    state = json.loads(json.dumps(before[0].state_dict()))  # what a checkpoint stores
    assert all(s.state_dict() == state for s in before)
    after = all_ranks(n, batch, world_after, drop_last=drop_last)  # seed comes from the state
    for s in after:
        s.load_state_dict(state)
    steps = run_epoch(after)
    rest = [np.concatenate([b.indices for b in st]) for st in steps]
    return state, np.concatenate(taken), (np.concatenate(rest) if rest else np.zeros(0, np.int64))


@pytest.mark.parametrize("world_before,world_after",
                         [(4, 4), (4, 2), (2, 4), (3, 1), (1, 3), (2, 3)])
def test_resume_continues_with_order_from_consumed(world_before, world_after):
    n, batch = 53, 3
    state, taken, rest = remaining_after_resume(n, batch, world_before, world_after, steps_before=2)
    order = DistributedSampler(n, 1, 0, 1, seed=11).epoch_order(0)
    assert state == {"seed": 11, "epoch": 0, "consumed": 2 * batch * world_before}
    np.testing.assert_array_equal(taken, order[:state["consumed"]])
    # The union of what the new ranks take is exactly the rest of the epoch, each once, in order.
    np.testing.assert_array_equal(rest, order[state["consumed"]:])


def test_resume_into_the_short_tail_and_at_the_epoch_end():
    n, batch = 20, 3
    # 4 ranks x 3 = 12 per step: after 1 step 8 remain; at 2 ranks (G = 6) that is 6 + 2.
    state, _, rest = remaining_after_resume(n, batch, 4, 2, steps_before=1)
    assert len(rest) == 8
    s = DistributedSampler(n, batch, 0, 1)
    s.load_state_dict({"seed": 0, "epoch": 3, "consumed": n})  # a finished epoch resumes the next
    assert s.state_dict() == {"seed": 0, "epoch": 4, "consumed": 0}
    # drop_last: what is left is shorter than a global batch at the new size -> next epoch.
    s = DistributedSampler(n, batch, 0, 2, drop_last=True)
    s.load_state_dict({"seed": 0, "epoch": 0, "consumed": 16})
    assert s.state_dict()["epoch"] == 1 and len(s) == 3


def test_load_state_dict_rejects_bad_states():
    s = DistributedSampler(10, 2, 0, 1)
    with pytest.raises(ValueError, match="lacks"):
        s.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="another data set"):
        s.load_state_dict({"seed": 0, "epoch": 0, "consumed": 11})


def test_constructor_checks():
    with pytest.raises(ValueError, match="rank"):
        DistributedSampler(10, 2, 2, 2)
    with pytest.raises(ValueError, match="batch_size"):
        DistributedSampler(10, 0, 0, 1)
    with pytest.raises(ValueError, match="empty"):
        DistributedSampler(0, 1, 0, 1)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [0, 1, 10, 13])
def test_shard_indices_partition_without_padding(n, world):
    shards = [shard_indices(n, r, world) for r in range(world)]
    np.testing.assert_array_equal(np.concatenate(shards), np.arange(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert [even_split(n, world, r) for r in range(world)][-1][1] == n


@pytest.mark.parametrize("world", [1, 3, 4])
def test_shard_sampler_same_steps_everywhere_and_counts(world):
    n, batch = 13, 2
    samplers = [ShardSampler(n, batch, r, world) for r in range(world)]
    steps = list(zip(*[list(s) for s in samplers], strict=False))  # lengths asserted below
    assert all(len(s) == len(steps) for s in samplers)
    seen = np.concatenate([b.indices for st in steps for b in st])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    for st in steps:
        assert all(b.global_count == sum(x.local_count for x in st) for b in st)
