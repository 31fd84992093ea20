"""Decode worker processes for file-backed data sets: N processes decode batches into a ring of
batch slots in shared memory, running ahead of training. On the CPU backend they also do the
rest of the host part (uint8 -> float32, the augmentation transform: ``finish``); on the GPU
they decode and the device converts and augments.

    pool = WorkerPool(dataset, workers=4, max_batch=128)
    for batch, (x, y) in pool.imap(sampler):   # in the sampler's order; x, y: private copies
        ...
    pool.close()

Why processes: one Python thread decodes a few thousand small JPEGs per second; a GPU trains
faster than that. Why spawn: a forked child of an MPI rank inherits MPI's and CUDA's state, which
neither supports; a spawned child starts a fresh interpreter that imports only this module,
NumPy and Pillow (never mpi4py: the launcher's PMI variables are hidden from it too).
Each worker's BLAS/OpenMP pools get ``threads`` threads (mpinet.threads.worker_budget), so ranks
x workers x threads stays within the cores.

Failure: a worker that raises sends its traceback, and the consumer raises RuntimeError naming
the worker, the batch (epoch, offset) and that traceback; a worker that dies (killed, crashed)
is noticed within ``_POLL_S`` and raises naming the worker and its exit signal or code. Workers
exit by themselves when the parent process is gone. Nothing waits forever.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing as mp
import os
import queue
import signal
import traceback
from multiprocessing import shared_memory

import numpy as np

_POLL_S = 0.1
_HIDDEN_ENV_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "OMPI_", "MPIR_", "I_MPI_", "SLURM_STEP")


def _slot_views(buf, slot: int, max_batch: int, x_shape, y_shape, x_dtype=np.uint8):
    """(x, y) views of one slot: x (max_batch, C, H, W) uint8 (decoded) or float32 (finished),
    y (max_batch, ...) int64."""
    x_bytes = max_batch * int(np.prod(x_shape)) * np.dtype(x_dtype).itemsize
    y_bytes = max_batch * int(np.prod(y_shape, dtype=np.int64)) * 8
    start = slot * (x_bytes + y_bytes)
    x = np.ndarray((max_batch, *x_shape), x_dtype, buffer=buf, offset=start)
    y = np.ndarray((max_batch, *y_shape), np.int64, buffer=buf, offset=start + x_bytes)
    return x, y


def finish_on_cpu(x_u8, y, batch, transform):
    """What the loader does after decoding on the CPU backend: uint8 -> float32 / 255 (the
    readers' rule), then the transform. The same code in a worker and in the loader thread, so
    the batches are the same bit for bit."""
    x = x_u8.astype(np.float32) / np.float32(255.0)
    if transform is not None:
        x, y = transform(x, y, batch)
    return x, y


def _worker_main(index, dataset, shm_name, max_batch, tasks, results, parent_pid,
                 transform=None, finish=False):
    """One worker: take (seq, slot, batch), decode (and with ``finish`` convert and transform)
    into the slot, report (seq, index, error)."""
    shm = shared_memory.SharedMemory(name=shm_name)
    try:
        while True:
            try:
                task = tasks.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent_pid:  # the rank is gone: nobody will read our work
                    return
                continue
            if task is None:
                return
            seq, slot, batch = task
            x, y = _slot_views(shm.buf, slot, max_batch, dataset.input_shape, dataset.label_shape,
                               np.float32 if finish else np.uint8)
            n = len(batch.indices)
            try:
                if finish:
                    xf, yf = finish_on_cpu(*dataset.read_batch(batch.indices), batch, transform)
                    x[:n], y[:n] = xf, yf
                else:
                    dataset.read_batch(batch.indices, out=(x[:n], y[:n]))
                results.put((seq, index, None))
            except BaseException:  # carried to the consumer with the traceback
                results.put((seq, index, traceback.format_exc()))
            del x, y  # views of the shared block must go before it closes
    finally:
        shm.close()


@contextlib.contextmanager
def _child_environment(threads: int):
    """os.environ as a spawned worker should see it: no MPI launcher variables, its own threads."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith(_HIDDEN_ENV_PREFIXES):
            del os.environ[key]
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[key] = str(threads)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _exit_reason(code) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class WorkerPool:
    """``workers`` spawned processes decoding ``dataset`` (a FileDataset) into shared memory.

    max_batch: the largest batch a sampler yields (its batch_size); slots: batches in flight
    (default 2 per worker). finish: the workers also convert to float32 and apply ``transform``
    (the CPU backend's whole host part; mpinet's own transforms: Augment, the presets)."""

    def __init__(self, dataset, workers: int, max_batch: int, slots: int | None = None,
                 threads: int = 1, transform=None, finish: bool = False):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.dataset, self.workers, self.max_batch = dataset, int(workers), int(max_batch)
        self.slots = int(slots or 2 * workers)
        x_shape, y_shape = dataset.input_shape, dataset.label_shape
        self.finish, self.transform = bool(finish), transform
        self.x_dtype = np.float32 if finish else np.uint8
        x_item = np.dtype(self.x_dtype).itemsize
        slot_bytes = max_batch * (x_item * int(np.prod(x_shape))
                                  + 8 * int(np.prod(y_shape, dtype=np.int64)))
        self._shm = shared_memory.SharedMemory(create=True, size=max(1, slot_bytes * self.slots))
        ctx = mp.get_context("spawn")
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        self._procs = []
        self.busy = False
        with _child_environment(threads):
            for i in range(self.workers):
                proc = ctx.Process(
                    target=_worker_main,
                    name=f"mpinet-decode-{i}",
                    daemon=True,
                    args=(
                        i,
                        dataset,
                        self._shm.name,
                        self.max_batch,
                        self._tasks,
                        self._results,
                        os.getpid(),
                        transform,
                        self.finish,
                    ),
                )
                proc.start()
                self._procs.append(proc)

    def _check_workers(self, batch) -> None:
        for i, proc in enumerate(self._procs):
            if not proc.is_alive():
                code = proc.exitcode
                self.close()
                raise RuntimeError(
                    f"data loader worker {i} (pid {proc.pid}) {_exit_reason(code)} "
                    f"while decoding; the batch at epoch {batch.epoch}, offset "
                    f"{batch.offset} was not delivered"
                )

    def imap(self, batches):
        """Yield (batch, (x, y)) for each sampler ``Batch``, in order, prepared by the workers.
        x (n, C, H, W) uint8 (float32 with ``finish``) and y are copies: the slot is free again
        once yielded."""
        if self._shm is None:
            raise RuntimeError("WorkerPool is closed")
        self.busy = True
        pending: dict[int, object] = {}  # seq -> Batch, submitted and not yet yielded
        done: dict[int, str | None] = {}  # seq -> error (None: decoded)
        free = list(range(self.slots))
        slot_of: dict[int, int] = {}
        source = iter(batches)
        next_seq = next_yield = 0
        exhausted = False
        try:
            while True:
                while free and not exhausted:  # keep every slot busy
                    batch = next(source, None)
                    if batch is None:
                        exhausted = True
                        break
                    if len(batch.indices) > self.max_batch:
                        raise ValueError(
                            f"batch of {len(batch.indices)} samples > the pool's "
                            f"max_batch {self.max_batch}"
                        )
                    slot = free.pop()
                    slot_of[next_seq], pending[next_seq] = slot, batch
                    self._tasks.put((next_seq, slot, batch))
                    next_seq += 1
                if next_yield == next_seq:
                    return
                batch = pending[next_yield]
                while next_yield not in done:
                    self._check_workers(batch)  # a dead worker is an error even if others cope
                    try:
                        seq, worker, error = self._results.get(timeout=_POLL_S)
                    except queue.Empty:
                        continue
                    done[seq] = error if error is None else f"worker {worker}:\n{error}"
                error = done.pop(next_yield)
                if error is not None:
                    raise RuntimeError(
                        f"data loader worker failed on the batch at epoch "
                        f"{batch.epoch}, offset {batch.offset}: {error}"
                    )
                slot = slot_of.pop(next_yield)
                x, y = _slot_views(
                    self._shm.buf,
                    slot,
                    self.max_batch,
                    self.dataset.input_shape,
                    self.dataset.label_shape,
                    self.x_dtype,
                )
                n = len(batch.indices)
                out = (x[:n].copy(), y[:n].copy())
                del x, y
                free.append(slot)
                del pending[next_yield]
                next_yield += 1
                yield batch, out
        finally:
            self.busy = False
            if pending:  # abandoned mid-epoch: the pool's slots hold stale work; start afresh
                self.close()

    @property
    def closed(self) -> bool:
        return self._shm is None

    def close(self) -> None:
        """Stop the workers (asked, then terminated after a short wait) and free the memory."""
        if self._shm is None:
            return
        for _ in self._procs:
            with contextlib.suppress(Exception):
                self._tasks.put(None)
        for proc in self._procs:
            proc.join(timeout=1.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=1.0)
        for q in (self._tasks, self._results):
            q.cancel_join_thread()
            q.close()
        self._shm.close()
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()
        self._shm = None


_pools: dict[tuple, WorkerPool] = {}


def shared_pool(dataset, workers: int, max_batch: int, threads: int = 1, transform=None,
                finish: bool = False) -> WorkerPool:
    """A pool for this data set kept across loaders (an epoch's loop, each evaluation), so the
    workers start once per run; a new one if the cached one is closed or in use."""
    key = (id(dataset), workers, max_batch, id(transform), finish)
    pool = _pools.get(key)
    if (pool is None or pool.closed or pool.busy or pool.dataset is not dataset
            or pool.transform is not transform):
        pool = WorkerPool(dataset, workers, max_batch, threads=threads, transform=transform,
                          finish=finish)
        _pools[key] = pool
    return pool


@atexit.register
def _close_pools() -> None:
    for pool in _pools.values():
        pool.close()
    _pools.clear()
