"""DataLoader: batches equal a direct gather, the thread really runs ahead, exceptions reach the
consumer with context, leaving early stops the thread, and the delivered state resumes exactly."""
import gc
import threading
import time

import numpy as np
import pytest

from mpinet import backend
from mpinet.data import Augment, DataLoader, DistributedSampler, ShardSampler, get_dataset
from mpinet.data.builtin import load_synthetic


def loader_threads():
    return [t for t in threading.enumerate() if t.name == "mpinet-data-loader" and t.is_alive()]


def wait_no_loader_threads(timeout=5.0):
    end = time.monotonic() + timeout
    while loader_threads() and time.monotonic() < end:
        time.sleep(0.01)
    return not loader_threads()


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_batches_equal_direct_gather(digits, prefetch):
    sampler = DistributedSampler(len(digits), 32, 1, 3, seed=4)
    reference = DistributedSampler(len(digits), 32, 1, 3, seed=4)
    got = list(DataLoader(digits, sampler, prefetch=prefetch))
    want = list(reference)
    assert len(got) == len(want) == 15
    for (x, y, count), b in zip(got, want, strict=True):
        np.testing.assert_array_equal(x, digits.images[b.indices])
        np.testing.assert_array_equal(y, digits.labels[b.indices])
        assert count == b.global_count and x.dtype == np.float32 and y.dtype == np.int64
    assert wait_no_loader_threads()


def test_raw_uint8_gives_the_same_floats_and_transform_is_applied():
    raw = load_synthetic(num_samples=40, input_shape=(3, 8, 8), raw=True)
    flt = load_synthetic(num_samples=40, input_shape=(3, 8, 8))
    aug = Augment(crop_padding=2, flip=True, mean=[0.5] * 3, std=[0.25] * 3, seed=3)
    a = list(DataLoader(raw, DistributedSampler(40, 8, 0, 1), transform=aug))
    b = list(DataLoader(flt, DistributedSampler(40, 8, 0, 1), transform=aug, prefetch=0))
    for (xa, _, _), (xb, _, _), batch in zip(a, b, DistributedSampler(40, 8, 0, 1), strict=True):
        np.testing.assert_array_equal(xa, xb)
        want, _ = aug(flt.images[batch.indices], None, batch)
        np.testing.assert_array_equal(xa, want)


class RecordingSampler(DistributedSampler):
    """Counts the batches the loader's thread has pulled from the sampler."""

    produced = 0

    def __iter__(self):
        for b in super().__iter__():
            self.produced += 1
            yield b


def test_thread_prepares_ahead_while_consumer_works(digits):
    sampler = RecordingSampler(len(digits), 10, 0, 1)
    loader = DataLoader(digits, sampler, prefetch=3)
    it = iter(loader)
    next(it)  # the consumer now "trains" on batch 0 and asks for nothing
    end = time.monotonic() + 5
    while sampler.produced < 5 and time.monotonic() < end:  # 1 delivered + 3 queued + 1 in hand
        time.sleep(0.01)
    assert sampler.produced == 5  # ahead by exactly the prefetch depth, and no further
    it.close()
    assert wait_no_loader_threads()


def test_exception_in_thread_reraises_with_the_batch(digits):
    def transform(x, y, batch):
        if batch.offset == 64:
            raise ZeroDivisionError("boom in augmentation")
        return x, y

    loader = DataLoader(digits, DistributedSampler(len(digits), 16, 0, 2, shuffle=False),
                        transform=transform)
    seen = []
    with pytest.raises(RuntimeError, match=r"epoch 0, offset 64 .*ZeroDivisionError: boom") as e:
        for x, _, _ in loader:
            seen.append(len(x))
    assert isinstance(e.value.__cause__, ZeroDivisionError)
    assert seen == [16, 16]  # the two good batches before it arrived intact
    assert wait_no_loader_threads()
    # The sampler is rewound to what was delivered: two steps of 32 global samples.
    assert loader.sampler.state_dict() == {"seed": 0, "epoch": 0, "consumed": 64}


def test_exception_in_sampler_reraises(digits):
    class Broken(DistributedSampler):
        def __iter__(self):
            yield from []
            raise KeyError("sampler broke")

    with pytest.raises(RuntimeError, match="sampler, before the first batch.*sampler broke"):
        list(DataLoader(digits, Broken(len(digits), 8, 0, 1)))
    assert wait_no_loader_threads()


def test_break_stops_thread_and_state_resumes_exactly(digits):
    sampler = DistributedSampler(len(digits), 50, 0, 2, seed=8)
    loader = DataLoader(digits, sampler, prefetch=2)
    taken = []
    for i, (_, y, _) in enumerate(loader):
        taken.append(y)
        if i == 3:
            break
    assert wait_no_loader_threads()  # dropping the loop's generator stopped the thread
    state = loader.state_dict()
    assert state == sampler.state_dict() == {"seed": 8, "epoch": 0, "consumed": 4 * 100}
    # Resume on a fresh sampler (another world size even) from that state.
    resumed = DistributedSampler(len(digits), 100, 0, 1)
    resumed.load_state_dict(state)
    rest = [y for _, y, _ in DataLoader(digits, resumed)]
    order = DistributedSampler(len(digits), 1, 0, 1, seed=8).epoch_order(0)
    np.testing.assert_array_equal(np.concatenate(rest), digits.labels[order[400:]])
    assert resumed.state_dict() == {"seed": 8, "epoch": 1, "consumed": 0}


def test_epochs_loop_and_close(digits):
    sampler = DistributedSampler(len(digits), 200, 0, 1, seed=1)
    loader = DataLoader(digits, sampler)
    firsts = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert len(loader) == 8
        ys = [y for _, y, _ in loader]
        assert sum(len(y) for y in ys) == len(digits)
        firsts.append(ys[0][:20])
    assert not np.array_equal(firsts[0], firsts[1])
    with DataLoader(digits, sampler) as l2:
        next(iter(l2))
    assert wait_no_loader_threads()


def test_eval_loader_and_size_check(digits):
    test = get_dataset("digits", split="test")
    ys = [y for _, y, _ in DataLoader(test, ShardSampler(len(test), 64, 0, 1))]
    np.testing.assert_array_equal(np.concatenate(ys), test.labels)
    with pytest.raises(ValueError, match="num_samples=len"):
        DataLoader(test, DistributedSampler(len(digits), 8, 0, 1))


@pytest.mark.gpu
def test_gpu_loader_equals_cpu_loader(digits):
    cpu = list(DataLoader(digits, DistributedSampler(len(digits), 64, 0, 1),
                          transform=Augment(crop_padding=1, flip=True)))
    dev = backend.select_device(device="gpu")
    gpu = list(DataLoader(digits, DistributedSampler(len(digits), 64, 0, 1),
                          transform=Augment(crop_padding=1, flip=True), device=dev))
    for (xc, yc, nc), (xg, yg, ng) in zip(cpu, gpu, strict=True):
        assert backend.is_gpu_array(xg) and backend.is_gpu_array(yg)
        np.testing.assert_array_equal(backend.to_numpy(xg), xc)
        np.testing.assert_array_equal(backend.to_numpy(yg), yc)
        assert nc == ng
    assert wait_no_loader_threads()
    gc.collect()
