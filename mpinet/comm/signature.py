"""The always-on check that every rank entered the same collective (no silent wrong result).

Entering a collective posts one tiny non-blocking MPI allreduce (MAX) of this rank's
signature ``s = (seq, op, dtype, count, reduce op, root)`` and its negation on a communicator of
its own. The result holds max(s) and -min(s) per field; they agree iff every rank sent the same
``s``. Nothing waits for it when posted: it is settled lazily (when the collective's handle is
waited on, at the next collective's entry if already done, or before any host-synchronising
call), so it overlaps with the data collective and costs one small message per collective
(benchmarks/reliability_overhead.py measures it). Only on a mismatch do the ranks gather every
rank's signature (again bounded) to name both sides in the ``CommError``.

Every rank posts exactly one check per collective, in program order, whatever op it is, so the
checks always pair up even when the collectives themselves do not.
"""
from __future__ import annotations

import collections

import numpy as np

FIELDS = ("seq", "op", "dtype", "count", "reduce", "root")
ENV = "MPINET_COMM_CHECK"  # "0" turns the check off (for measuring its cost)


class Ticket:
    """One posted check: its request, its buffers, and what it describes. (A plain class with
    slots: this runs once per collective, so every microsecond of Python counts.)"""

    __slots__ = ("seq", "mine", "result", "req", "info")

    def __init__(self, seq: int, mine: np.ndarray, result: np.ndarray, req, info):
        self.seq = seq
        self.mine = mine  # int64[2 * len(FIELDS)]: s, -s
        self.result = result  # int64[2 * len(FIELDS)]: max s, max -s
        self.req = req
        self.info = info  # OpInfo, for reports


class SignatureCheck:
    def __init__(self, mpi_comm, wait, describe_ops, describe_dtypes, describe_reduce):
        self._comm = mpi_comm  # a dedicated Dup: the checks never interleave with other traffic
        self._wait = wait  # the communicator's bounded wait: wait(requests, info)
        self._pending: collections.deque[Ticket] = collections.deque()
        self._ops, self._dtypes, self._reduce = describe_ops, describe_dtypes, describe_reduce

    def post(self, info, fields: tuple[int, ...]) -> Ticket:
        from mpi4py import MPI

        mine = np.array((*fields, *(-f for f in fields)), np.int64)
        result = np.empty(2 * len(FIELDS), np.int64)
        req = self._comm.Iallreduce(mine, result, op=MPI.MAX)
        ticket = Ticket(info.seq, mine, result, req, info)
        self._pending.append(ticket)
        return ticket

    def settle_finished(self) -> None:
        """Check, in order, the leading checks that have completed (never blocks)."""
        while self._pending and self._pending[0].req.Test():
            self._check(self._pending.popleft())

    def settle_through(self, seq: int) -> None:
        """Check every pending check up to collective ``seq``, waiting (bounded) for those not
        yet complete."""
        while self._pending and self._pending[0].seq <= seq:
            ticket = self._pending[0]
            self._wait([ticket.req], ticket.info)
            self._pending.popleft()
            self._check(ticket)

    def take(self, seq: int) -> Ticket | None:
        """Remove and return the pending check of collective ``seq`` if it is next in line (the
        caller waits for it and calls ``check``)."""
        if self._pending and self._pending[0].seq == seq:
            return self._pending.popleft()
        return None

    def check(self, ticket: Ticket) -> None:
        self._check(ticket)

    def settle_all(self) -> None:
        if self._pending:
            self.settle_through(self._pending[-1].seq)

    def _check(self, ticket: Ticket) -> None:
        n = len(FIELDS)
        values = ticket.result.tolist()
        if all(hi == -lo for hi, lo in zip(values[:n], values[n:], strict=True)):
            return
        self.raise_mismatch(ticket)

    def raise_mismatch(self, ticket: Ticket) -> None:
        """Every rank sees the same max/min, so every rank gets here: gather all signatures
        and name both sides."""
        from mpinet.comm.base import CommError

        n = len(FIELDS)
        everyone = np.empty((self._comm.Get_size(), n), np.int64)
        self._wait([self._comm.Iallgather(ticket.mine[:n].copy(), everyone)], ticket.info)
        others = [r for r in range(len(everyone)) if not np.array_equal(everyone[r], everyone[0])]
        first = others[0]
        raise CommError(f"collective mismatch at collective #{ticket.seq}: rank 0 called "
                        f"{self.describe(everyone[0])} but rank {first} called "
                        f"{self.describe(everyone[first])} (ranks differing from rank 0: "
                        f"{others}); every rank must issue the same collectives, with the same "
                        f"element count and dtype, in the same order")

    def describe(self, s) -> str:
        seq, op, dtype, count, reduce, root = (int(v) for v in s)
        text = f"{self._ops[op]}"
        if dtype >= 0:
            text += f" of {count} elements of {self._dtypes[dtype]}"
        if reduce >= 0:
            text += f", op={self._reduce[reduce]}"
        if root >= 0:
            text += f", root={root}"
        return text + f" (its collective #{seq})"
