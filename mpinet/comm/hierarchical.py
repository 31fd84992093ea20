"""Allreduce as reduce-scatter inside the node -> allreduce across nodes -> allgather inside.

Each rank sends only 1/local_size of the data across nodes (its shard), so the slow inter-node
link carries the minimum; the fast intra-node links do the rest.

  * GPU (CuPy arrays): NCCL reduce-scatter on the node's GPUs, MPI allreduce of the shard between
    the ranks with the same local rank on every node, NCCL allgather in the node. The MPI leg
    takes the device shard directly when MPI is CUDA-aware (detected: staging.mpi_cuda_support);
    otherwise (the usual PyPI/Debian builds, which crash on device pointers) the shard is copied
    to pinned host memory in chunks and each chunk's allreduce is posted as soon as its copy has
    landed, so the copies overlap the network (staging.PostQueue keeps the posting order).
    This communicator is an explicit choice: ``auto`` picks nccl on GPUs on any number of nodes.
  * CPU (NumPy arrays): the same algorithm with MPI at both levels, so CI tests the logic.
  * GPU on a single node: reduce-scatter then allgather, both queued on the GPU at once.

A collective is a chain of stages; a stage starts when the previous one has finished. Stages
are advanced whenever the host calls into this communicator (a new collective, test, wait), so
later stages overlap with the caller's work. Two ordering rules keep ranks matched:
  * every communicator sees its collectives in the same order on all ranks: handle k may start
    stage s only after handle k-1 has started stage s (FIFO); on CPU the first and last stage
    use different node-local comms, because stage 3 of handle k and stage 1 of handle k+1 start
    in a timing-dependent order;
  * on GPU the node's single NCCL communicator must also see one order, so the final allgather
    is queued only inside ``wait()`` (program order, identical on every rank), never from
    ``test()`` or another handle's call. Waits therefore finish earlier handles first.

bcast, allgather and reduce_scatter are not bandwidth-critical (weights once, metrics): on CPU
they use MPI over the world; on GPU they are staged through host memory over world MPI.
"""
from __future__ import annotations

import numpy as np

from mpinet import backend
from mpinet.comm import staging
from mpinet.comm.base import Communicator, Handle, OpInfo
from mpinet.comm.mpi import (_HALF, RequestsHandle, buffer_and_op, divide_by, post_allgather,
                             post_bcast, post_reduce_scatter)
from mpinet.comm.nccl import NCCL_AVG, NCCL_SUM, NCCL_TYPES, DeviceLane, EventHandle

_DEVICE_TO_HOST, _HOST_TO_DEVICE = 2, 1  # cudaMemcpyKind


class Stage:
    """One step of a chain: ``start()`` returns a test callable (True once the step is done)."""

    def __init__(self, start, in_wait_only: bool = False):
        self.start = start
        self.in_wait_only = in_wait_only


class StagedHandle(Handle):
    def __init__(self, comm: "HierarchicalCommunicator", stages, result, info: OpInfo,
                 finish=None, keep=()):
        self._comm, self._stages, self._result, self._info = comm, stages, result, info
        self._finish, self._keep = finish, keep
        self.started = 0  # stages started so far
        self.done = False
        self.ready = False  # only the wait-only (GPU-queueing) stage is left
        self._test = None
        self._start_next()

    def _start_next(self):
        self._test = self._stages[self.started].start()
        self.started += 1

    def step(self, limit: int, in_wait: bool) -> None:
        """Advance as far as possible without starting stage ``limit`` or later (FIFO rule)."""
        while not self.done and self._test():
            if self.started == len(self._stages):
                if self._finish is not None:
                    self._finish()
                self.done, self._keep, self._stages = True, (), ()
                return
            nxt = self._stages[self.started]
            if nxt.in_wait_only and not in_wait:
                self.ready = True
                return
            if self.started >= limit:
                return
            self._start_next()

    def test(self) -> bool:
        """True when ``wait()`` will not block the host (on GPU it then only queues GPU work)."""
        self._comm._advance(upto=None)
        return self.done or self.ready

    def wait(self):
        if not self.done:
            comm = self._comm
            if comm.check:
                comm._sig.settle_through(self._info.seq)
            comm.wait_until(lambda: comm._advance(upto=self) or self.done, self._info,
                            extra=lambda: f" (stuck in stage {self.started} of "
                                          f"{len(self._stages) or '?'})")
        return self._result


class HierarchicalCommunicator(Communicator):
    name = "hierarchical"

    def __init__(self, mpi_comm=None, timeout_s=None, debug=None, layout=None):
        super().__init__(mpi_comm, timeout_s, debug, layout)
        setup = OpInfo(self.name, "setup (ranks per node)", 0, 1, "object")
        sizes = set(self._allgather_payload(self.local_size, setup, self._ctl))
        if len(sizes) != 1:
            raise ValueError(f"hierarchical: nodes have different numbers of ranks "
                             f"({sorted(sizes)}); the shards would not line up across nodes. "
                             f"Start the same number of ranks per node, or use impl='mpi'/'nccl'")
        # Stage 1 and stage 3 on different comms: their posting order differs across ranks.
        self._local_ag = self._local_comm.Dup()
        # World comm for bcast/allgather/reduce_scatter (on host arrays or host copies).
        self._data = self.mpi_comm.Dup()
        self._lane = DeviceLane(self._local_comm.Dup(), self)
        self._pending: list[StagedHandle] = []
        # Cross-node chunk posts, in one order on every rank (see staging.PostQueue).
        self._posts = staging.PostQueue()
        self._chunk_bytes = staging.chunk_bytes()
        # Device buffers to MPI only if every rank's MPI takes them (decided once, the same
        # everywhere; a probe that fails means "no").
        aware, self.mpi_cuda_aware_reason = staging.mpi_cuda_support()
        probe = OpInfo(self.name, "setup (CUDA-aware MPI?)", 0, 1, "object")
        self.mpi_cuda_aware = all(self._allgather_payload(aware, probe, self._ctl))

    def _before_abort(self):
        self._lane.abort()

    def _owned_comms(self):
        return super()._owned_comms() + [self._local_ag, self._data]

    def close(self):
        super().close()
        self._lane.close()

    def _drain(self):
        info = OpInfo(self.name, "barrier (finishing queued collectives)", self._tracker.seq, 0,
                      "-")
        for h in list(self._pending):
            self.wait_until(lambda h=h: self._advance(upto=h) or h.done, h._info)
        if self._lane.nccl is not None:
            self._lane.drain(info)

    def _advance(self, upto) -> None:
        """Move pending chains forward in FIFO order; final GPU stages only up to ``upto``."""
        # Final GPU stages start only for handles up to the one being waited (program order).
        limit, in_wait = 1 << 30, upto is not None and upto in self._pending
        for h in self._pending:
            h.step(limit, in_wait)
            limit = 1 << 30 if h.done else h.started
            if h is upto:
                in_wait = False
        self._pending = [h for h in self._pending if not h.done]

    def _chain(self, stages, result, info, finish=None, keep=()):
        self._advance(upto=None)
        h = StagedHandle(self, stages, result, info, finish, keep)
        self._pending.append(h)
        return h

    # ---- allreduce ----------------------------------------------------------------------------

    def _iallreduce(self, x, op, out, info):
        if backend.is_gpu_array(x):
            return self._iallreduce_gpu(x, op, out, info)
        return self._iallreduce_cpu(x, op, out, info)

    def _padded(self, xp, x, out):
        """Flat send/receive buffers whose length divides by local_size (copies only if padded)."""
        n, L = x.size, self.local_size
        m = -(-n // L)  # shard length
        if n == m * L:
            return x.reshape(-1), out.reshape(-1), m, None
        src = xp.zeros(m * L, dtype=x.dtype)
        src[:n] = x.reshape(-1)
        dst = xp.empty(m * L, dtype=x.dtype)

        def unpad():
            out.reshape(-1)[...] = dst[:n]

        return src, dst, m, unpad

    def _iallreduce_cpu(self, x, op, out, info):
        from mpi4py import MPI

        src, dst, m, unpad = self._padded(np, x, out)
        shard = np.empty(m, dtype=x.dtype)

        def reduce_in_node():
            s, mpi_op = buffer_and_op(src)
            d, _ = buffer_and_op(shard)
            req = self._local_comm.Ireduce_scatter_block(s, d, op=mpi_op)
            return lambda: req.Test()

        def reduce_across_nodes():
            d, mpi_op = buffer_and_op(shard)
            req = self._cross_comm.Iallreduce(MPI.IN_PLACE, d, op=mpi_op)
            return lambda: req.Test()

        def gather_in_node():
            s, _ = buffer_and_op(shard)
            d, _ = buffer_and_op(dst)
            req = self._local_ag.Iallgather(s, d)
            return lambda: req.Test()

        def finish():
            if unpad is not None:
                unpad()
            if op == "mean":
                out[...] = out / self.size

        stages = [Stage(reduce_in_node), Stage(reduce_across_nodes), Stage(gather_in_node)]
        return self._chain(stages, out, info, finish, keep=(x, out, src, dst, shard))

    def _iallreduce_gpu(self, x, op, out, info):
        import cupyx

        from mpi4py import MPI

        cp = self._lane.ensure(x, "allreduce")
        lane, t = self._lane, NCCL_TYPES[x.dtype.name]
        src, dst, m, unpad = self._padded(cp, x, out)  # padding copies run on the compute stream
        shard = cp.empty(m, dtype=x.dtype)
        # Mean: NCCL averages inside the node, the host divides by the node count.
        in_node_op = NCCL_AVG if op == "mean" and lane.avg else NCCL_SUM
        if self.num_nodes == 1:
            return self._iallreduce_one_node(cp, src, dst, shard, m, t, in_node_op, op, out,
                                             unpad, info, keep=(x, out, src, dst, shard))
        if self.mpi_cuda_aware and x.dtype.name not in _HALF:
            # (16-bit floats are summed by a Python MPI op that reads host memory: staged.)
            return self._iallreduce_gpu_direct(cp, src, dst, shard, m, t, in_node_op, op, out,
                                               unpad, info)
        host = cupyx.empty_pinned((m,), dtype=x.dtype)
        item = x.dtype.itemsize
        bounds = staging.chunk_bounds(m, max(1, self._chunk_bytes // item))
        copied = [None] * len(bounds)  # per chunk: event fired when its device->host copy lands
        keep = (x, out, src, dst, shard, host)

        def reduce_in_node():
            def fn(c, s):
                c.reduceScatter(src.data.ptr, shard.data.ptr, m, t, in_node_op, s)
                for i, (a, b) in enumerate(bounds):
                    cp.cuda.runtime.memcpyAsync(host.ctypes.data + a * item,
                                                shard.data.ptr + a * item, (b - a) * item,
                                                _DEVICE_TO_HOST, s)
                    ev = cp.cuda.Event(disable_timing=True)
                    ev.record(lane.stream)
                    copied[i] = ev

            lane.launch(cp, fn, info, keep)
            return lambda: True  # the chunks' events gate the next stage, one by one

        def reduce_across_nodes():
            _, mpi_op = buffer_and_op(host)

            def post_chunk(view):
                d, _ = buffer_and_op(view)
                req = self._cross_comm.Iallreduce(MPI.IN_PLACE, d, op=mpi_op)
                return req.Test

            return staging.pipelined_allreduce(self._posts, host, bounds,
                                               lambda i: copied[i].done, post_chunk)

        def gather_in_node():
            if op == "mean":
                divisor = self.num_nodes if in_node_op == NCCL_AVG else self.size
                host[...] = host / divisor

            def fn(c, s):
                cp.cuda.runtime.memcpyAsync(shard.data.ptr, host.ctypes.data, shard.nbytes,
                                            _HOST_TO_DEVICE, s)
                c.allGather(shard.data.ptr, dst.data.ptr, m, t, s)

            done = lane.launch(cp, fn, info, keep, after_compute=False)
            return lambda: _gpu_order_after(cp, done) or True

        stages = [Stage(reduce_in_node), Stage(reduce_across_nodes),
                  Stage(gather_in_node, in_wait_only=True)]
        # The GPU-side wait is queued when the last stage starts; unpadding then runs on the
        # compute stream, after that wait.
        return self._chain(stages, out, info, unpad, keep=keep)

    def _iallreduce_gpu_direct(self, cp, src, dst, shard, m, t, in_node_op, op, out, unpad,
                               info):
        """CUDA-aware MPI: the device shard goes to MPI as it is, no host copy."""
        from mpi4py import MPI

        lane = self._lane
        keep = (src, dst, shard, out)

        def reduce_in_node():
            def fn(c, s):
                c.reduceScatter(src.data.ptr, shard.data.ptr, m, t, in_node_op, s)

            done = lane.launch(cp, fn, info, keep)
            return lambda: done.done  # MPI reads the shard: it must be complete on the device

        def reduce_across_nodes():
            req = self._cross_comm.Iallreduce(MPI.IN_PLACE, shard, op=MPI.SUM)
            return req.Test

        def gather_in_node():
            divisor = None
            if op == "mean":
                divisor = self.num_nodes if in_node_op == NCCL_AVG else self.size

            def fn(c, s):
                if divisor is not None:
                    with lane.stream:
                        cp.divide(shard, divisor, out=shard)
                c.allGather(shard.data.ptr, dst.data.ptr, m, t, s)

            done = lane.launch(cp, fn, info, keep, after_compute=False)
            return lambda: _gpu_order_after(cp, done) or True

        stages = [Stage(reduce_in_node), Stage(reduce_across_nodes),
                  Stage(gather_in_node, in_wait_only=True)]
        return self._chain(stages, out, info, unpad, keep=keep)

    def _iallreduce_one_node(self, cp, src, dst, shard, m, t, nccl_op, op, out, unpad, info,
                             keep):
        """Nothing crosses nodes: reduce-scatter and allgather queue back to back on the GPU,
        no host staging and no host wait (a plain GPU handle)."""
        def fn(c, s):
            c.reduceScatter(src.data.ptr, shard.data.ptr, m, t, nccl_op, s)
            c.allGather(shard.data.ptr, dst.data.ptr, m, t, s)

        def finish():
            if unpad is not None:
                unpad()
            if op == "mean" and nccl_op != NCCL_AVG:
                out[...] = out / self.size

        done = self._lane.launch(cp, fn, info, keep)
        return EventHandle(cp, done, out, keep, finish)

    # ---- the rest: world MPI (host-staged on GPU) ---------------------------------------------

    def _host_op(self, x, out, info, post, finish=None):
        """``post(host_in, host_out) -> MPI request`` over world; on GPU via pinned host copies."""
        if not backend.is_gpu_array(x):
            fin = finish(out) if finish else None
            return RequestsHandle(self, [post(x, out)], out, info, fin, keep=(x, out))
        import cupyx

        cp = self._lane.ensure(x, info.op)
        hin = cupyx.empty_pinned(x.shape, dtype=x.dtype)
        hout = hin if out is x else cupyx.empty_pinned(out.shape, dtype=out.dtype)
        keep = (x, out, hin, hout)

        def to_host():
            def fn(c, s):
                cp.cuda.runtime.memcpyAsync(hin.ctypes.data, x.data.ptr, x.nbytes,
                                            _DEVICE_TO_HOST, s)

            done = self._lane.launch(cp, fn, info, keep)
            return lambda: done.done

        def mpi_op():
            req = post(hin, hout)
            return lambda: req.Test()

        def to_device():
            if finish is not None:
                finish(hout)()

            def fn(c, s):
                cp.cuda.runtime.memcpyAsync(out.data.ptr, hout.ctypes.data, out.nbytes,
                                            _HOST_TO_DEVICE, s)

            done = self._lane.launch(cp, fn, info, keep, after_compute=False)
            return lambda: _gpu_order_after(cp, done) or True

        return self._chain([Stage(to_host), Stage(mpi_op), Stage(to_device, in_wait_only=True)],
                           out, info, keep=keep)

    def _ibcast(self, x, root, info):
        return self._host_op(x, x, info, lambda hi, ho: post_bcast(self._data, hi, root))

    def _iallgather(self, x, out, info):
        return self._host_op(x, out, info, lambda hi, ho: post_allgather(self._data, hi, ho))

    def _ireduce_scatter(self, x, op, out, info):
        finish = (lambda arr: divide_by(arr, self.size)) if op == "mean" else None
        return self._host_op(x, out, info,
                             lambda hi, ho: post_reduce_scatter(self._data, hi, ho), finish)


def _gpu_order_after(cp, done_event) -> None:
    """Make the caller's compute stream wait for ``done_event`` (GPU-side, no host sync)."""
    cp.cuda.get_current_stream().wait_event(done_event)
