"""A loader that prepares the next batches in a background thread while the current one trains.

    loader = DataLoader(dataset, sampler, transform=Augment(4, flip=True, mean=m, std=s))
    for x, y, global_count in loader:  # x: (n, C, H, W) float32 on the backend's device
        ...  # y: (n,) or (n, H, W) int64; global_count: this step's samples summed over all ranks

What runs where:
  * the thread: walks the sampler, gathers the batch's rows from host memory (the costly host
    part), and on the CPU backend also converts uint8 to float32 / 255 and applies the transform;
  * on the GPU backend the thread gathers into pinned host memory, and the consuming thread
    queues the copy asynchronously (``cupy.asarray`` from pinned memory does not block the host)
    and the conversion and transform on its *current stream*. Keeping every device operation on
    the consumer's stream means no block of the memory pool can be reused by one stream while
    another still reads it; the copy is small (uint8 = a quarter of float32) next to a step.
  * Exceptions in the thread re-raise in the consumer, with the epoch and offset of the batch.
  * Leaving the loop early (break, exception, close(), ``with loader:``) stops and joins the
    thread; it is a daemon thread besides, so it can never keep the interpreter from exiting.

Resume: the thread runs ahead of training, so the sampler's own state is ahead too.
``loader.state_dict()`` is the sampler state after the last batch *handed to the consumer* —
save that one. When an iteration ends (finished or abandoned) the sampler is put back to that
position, so ``sampler.state_dict()`` is also right between epochs and after a break.
"""
from __future__ import annotations

import collections
import queue
import threading
import weakref

import numpy as np

from .. import backend as backend_mod
from .dataset import ArrayDataset

_DONE = object()  # end-of-epoch marker from the thread
_POLL_S = 0.1  # how often a blocked thread checks whether it should stop


class _Failure:
    """An exception raised in the thread, carried to the consumer with the batch it hit."""

    def __init__(self, exc: BaseException, where: str):
        self.exc, self.where = exc, where


class DataLoader:
    """Batches of ``dataset`` in the order of ``sampler`` (a ``DistributedSampler`` or
    ``ShardSampler``), delivered as (x, y, global_count) on ``device`` (default: the current
    backend).

    prefetch: batches prepared ahead (>= 1); 0 prepares each batch in the consumer's thread, which
    is simpler to debug and gives the same batches.
    workers: decode processes for a file-backed data set (mpinet.data.workers; same batches);
    None = one per core this rank owns beyond its first (mpinet.threads), 0 for in-memory data.
    """

    def __init__(self, dataset: ArrayDataset, sampler, transform=None, prefetch: int = 2,
                 device=None, workers: int | None = None):
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0 batches, got {prefetch}")
        self.workers = _resolve_workers(dataset, workers)
        if getattr(sampler, "num_samples", len(dataset)) != len(dataset):
            raise ValueError(f"sampler covers {sampler.num_samples} samples but the data set has "
                             f"{len(dataset)}; build the sampler with num_samples=len(dataset)")
        self.dataset = dataset
        self.sampler = sampler
        self.transform = transform
        self.prefetch = int(prefetch)
        self.device = device or backend_mod.current()
        self._delivered_state = self._sampler_state()
        self._active = None  # the running iteration's generator, for close()

    def __len__(self) -> int:
        return len(self.sampler)

    def _sampler_state(self):
        return self.sampler.state_dict() if hasattr(self.sampler, "state_dict") else None

    def state_dict(self) -> dict | None:
        """Sampler state after the last batch delivered (None for an evaluation sampler)."""
        return self._delivered_state

    # ---- preparing one batch -------------------------------------------------------------
    def _gather(self, batch):
        """Host part: rows of the batch. On GPU into pinned memory so the copy can be async."""
        idx = batch.indices
        if hasattr(self.dataset, "batch"):  # the dataset protocol (mpinet.data.arrays)
            return self.dataset.batch(idx)
        if hasattr(self.dataset, "read_batch"):  # file-backed: decode only this batch's files
            return self._read_files(idx)
        images, labels = self.dataset.images, self.dataset.labels
        if self.device.is_gpu and len(idx):  # (an empty batch needs no pinned buffer)
            import cupyx

            x = cupyx.empty_pinned((len(idx),) + images.shape[1:], dtype=images.dtype)
            y = cupyx.empty_pinned((len(idx),) + labels.shape[1:], dtype=labels.dtype)
            np.take(images, idx, axis=0, out=x)
            np.take(labels, idx, axis=0, out=y)
            return x, y
        return images[idx], labels[idx]

    def _read_files(self, idx):
        """A file-backed data set's batch (mpinet.data.streaming), into pinned memory on GPU."""
        ds = self.dataset
        if not (self.device.is_gpu and len(idx)):
            return ds.read_batch(idx)
        import cupyx  # GPU only

        out = (cupyx.empty_pinned((len(idx), *ds.input_shape), dtype=np.uint8),
               cupyx.empty_pinned((len(idx), *ds.label_shape), dtype=np.int64))
        return ds.read_batch(idx, out=out)

    def _finish(self, x, y, batch):
        """Array-module part: uint8 -> float32 / 255, then the transform (numpy or cupy alike)."""
        if isinstance(x, tuple):  # (padded sequences, lengths): no pixel conversion
            return x, y
        xp = backend_mod.xp_of(x)
        if x.dtype == np.uint8:
            # as the readers do: raw or not, same floats
            x = x.astype(xp.float32) / xp.float32(255.0)
        if self.transform is not None:
            x, y = self.transform(x, y, batch)
        return x, y

    def _prepare_host(self, batch):
        """Everything the thread does for one batch."""
        x, y = self._gather(batch)
        if not self.device.is_gpu:
            x, y = self._finish(x, y, batch)
        return x, y, batch

    def _host_items(self):
        """(x, y, batch) for each batch of the sampler, host part done: in this thread, or by the
        decode workers (in order) with the rest of the host part here."""
        self._where = "the sampler, before the first batch"  # for errors raised in this thread
        if not self.workers:
            for batch in self.sampler:
                self._where = (f"epoch {batch.epoch}, offset {batch.offset} "
                               f"({batch.local_count} samples)")
                item = self._prepare_host(batch)
                self._where = f"the sampler, after the batch at {self._where}"
                yield item
            return
        self._where = "the decode workers or the sampler"
        from ..threads import loader_worker_threads, make_room_for_workers  # lazy
        from .workers import shared_pool  # lazy

        threads_each = loader_worker_threads(self.workers)
        make_room_for_workers(self.workers, threads_each)
        # On the CPU the workers do the whole host part (decode, float, augment) when the
        # transform can travel to them; on the GPU they decode and the device does the rest.
        finish = not self.device.is_gpu and _runs_in_workers(self.transform)
        pool = shared_pool(self.dataset, self.workers, self.sampler.batch_size,
                           threads=threads_each, transform=self.transform if finish else None,
                           finish=finish)
        for batch, (x, y) in pool.imap(self.sampler):
            if self.device.is_gpu and len(x):
                import cupyx  # GPU only: pinned, so the copy to the device can be async

                x = _to_pinned(cupyx, x)
                y = _to_pinned(cupyx, y)
            elif not self.device.is_gpu and not finish:
                x, y = self._finish(x, y, batch)
            yield x, y, batch

    # ---- iteration -----------------------------------------------------------------------
    def __iter__(self):
        self.close()  # one live iteration per loader: a new loop ends an abandoned one
        self._delivered_state = self._sampler_state()
        gen = self._iterate()
        # A weak reference: a loop left by `break` drops the last strong one, and CPython then
        # finalizes the generator at once, which stops the thread (its `finally`).
        self._active = weakref.ref(gen)
        return gen

    def close(self) -> None:
        """Stop the running iteration, if any, join its thread, rewind the sampler to what was
        delivered."""
        gen = self._active() if self._active is not None else None
        self._active = None
        if gen is not None:
            gen.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _iterate(self):
        # (event, pinned x, pinned y): kept alive until the copy is done
        pending = collections.deque()
        if self.prefetch == 0:
            source, stop = self._host_items(), None
        else:
            source, stop = self._start_thread()
        try:
            for x, y, batch in source:
                if self.device.is_gpu:
                    x, y = self._to_gpu(x, y, batch, pending)
                self._delivered_state = batch.state
                yield x, y, batch.global_count
        finally:
            if stop is not None:
                stop()
            for event, _, _ in pending:
                event.synchronize()
            if self._delivered_state is not None:
                self.sampler.load_state_dict(self._delivered_state)

    def _to_gpu(self, x_pinned, y_pinned, batch, pending):
        cp = self.device.xp
        while pending and pending[0][0].done:  # copies finished: their host buffers may go
            pending.popleft()
        # asynchronous on the current stream where the source is pinned
        x = tuple(cp.asarray(a) for a in x_pinned) if isinstance(x_pinned, tuple) \
            else cp.asarray(x_pinned)
        y = cp.asarray(y_pinned)
        pending.append((cp.cuda.get_current_stream().record(), x_pinned, y_pinned))
        return self._finish(x, y, batch)

    def _start_thread(self):
        """Start the producer; return (iterator over prepared items, stop function)."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stopping = threading.Event()

        def put(item) -> bool:
            while not stopping.is_set():
                try:
                    q.put(item, timeout=_POLL_S)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            if self.device.is_gpu:  # pinned memory belongs to this rank's GPU context
                self.device.xp.cuda.Device(self.device.device_id).use()
            try:
                for item in self._host_items():
                    if not put(item):
                        return
                put(_DONE)
            except BaseException as e:
                put(_Failure(e, self._where))

        thread = threading.Thread(target=produce, name="mpinet-data-loader", daemon=True)
        thread.start()

        def items():
            while True:
                try:
                    item = q.get(timeout=_POLL_S)
                except queue.Empty:
                    if not thread.is_alive() and q.empty():
                        raise RuntimeError("data loader thread ended without finishing the "
                                           "epoch") from None
                    continue
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise RuntimeError(f"data loader thread failed in {item.where}: "
                                       f"{type(item.exc).__name__}: {item.exc}") from item.exc
                yield item

        def stop():
            stopping.set()
            thread.join()

        return items(), stop


def _runs_in_workers(transform) -> bool:
    """Can the workers apply this transform? mpinet's own (Augment, the presets' Dihedral and
    Compose: plain data, sent to the spawned workers) yes; any other callable (a lambda, a
    closure, a user's class) stays in the loader thread."""
    from .augment import Augment  # lazy: augment's home may move
    from .presets import Compose, Dihedral

    if transform is None or type(transform) in (Augment, Dihedral):
        return True
    if type(transform) is Compose:
        return all(_runs_in_workers(t) for t in transform.transforms)
    return False


def _to_pinned(cupyx, a):
    out = cupyx.empty_pinned(a.shape, dtype=a.dtype)
    out[...] = a
    return out


def _resolve_workers(dataset, workers) -> int:
    """The decode worker count: the given one, else the default from the thread budget."""
    file_backed = hasattr(dataset, "read_batch")
    if workers is None:
        if not file_backed:
            return 0
        from ..threads import default_loader_workers  # lazy

        return default_loader_workers()
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers and not file_backed:
        raise ValueError(f"workers={workers}: decode workers read files, but this data set is in "
                         "memory already (nothing to decode); use workers=0")
    return int(workers)
