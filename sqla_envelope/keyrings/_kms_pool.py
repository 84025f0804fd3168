"""Fresh data keys generated ahead by worker threads, each handed out exactly once.

A bulk insert in direct mode needs one GenerateDataKey per row; one at a time,
each row waits a KMS round trip. Before such a statement runs, the number of
values it will encrypt is reserved, and the pool keeps up to ``size`` requests
in flight on worker threads, so the writer takes keys that are already there.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..context import EncryptionContext
from .base import DataKey

__all__ = ["DataKeyPool"]


class _Lane:
    """The keys of one encryption context: ready ones, and how many are coming."""

    __slots__ = ("active", "batch", "context", "failure", "in_flight", "ready", "wanted")

    def __init__(self, context: EncryptionContext) -> None:
        self.context = context
        self.ready: deque[tuple[float, DataKey]] = deque()
        self.in_flight = 0
        self.wanted = 0  # keys reserved and not yet taken
        self.active = 0.0  # when a writer last reserved or took a key
        self.failure: Exception | None = None  # the first failed request of this batch
        self.batch = 0  # which reservation the requests started now are for


class DataKeyPool:
    """A bounded pool of data keys generated ahead for what writers have reserved.

    Nothing is generated on speculation: ``reserve(context, n)`` says that ``n``
    values are about to be encrypted (a multi-row INSERT, an ORM flush), and the
    pool keeps up to ``size`` of them in flight on ``workers`` threads until ``n``
    are made, so KMS calls still equal values written. ``take`` hands out a ready
    key, or generates one at once when none is ready or coming. The first request
    of a batch that fails ends the batch: nothing more is asked ahead, and the
    writer's next ``take`` raises that error, once, instead of asking again; so a
    key service that refuses or is down sees only the requests already in flight,
    not another round. Keys left unused for ``max_idle`` seconds (a
    statement that failed half-way) are dropped rather than kept in memory. After
    ``os.fork()`` the child drops every pooled key, which the parent may hand out
    too, and its workers.
    """

    def __init__(
        self,
        generate: Callable[[EncryptionContext], DataKey],
        *,
        size: int,
        workers: int,
        max_idle: float = 60.0,
        stall: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._generate = generate
        self.stall = stall
        self.size = size
        self.workers = workers
        self.max_idle = max_idle
        self._clock = clock
        self._lock = threading.Condition()
        self._lanes: dict[bytes, _Lane] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._pid = os.getpid()
        _POOLS.add(self)

    def _lane(self, context: EncryptionContext) -> _Lane:
        lane = self._lanes.get(context.canonical)
        if lane is None:
            lane = self._lanes[context.canonical] = _Lane(context)
        return lane

    def _top_up(self, lane: _Lane) -> int:
        """How many more requests to start for ``lane``; call with the lock held.

        A reservation whose writer stopped taking keys (its statement failed
        half-way) lapses after ``stall`` seconds instead of filling the pool.
        """
        if self._clock() - lane.active > self.stall:
            lane.wanted = 0
        if lane.failure is not None:
            return 0
        missing = lane.wanted - len(lane.ready) - lane.in_flight
        count = max(0, min(missing, self.size - lane.in_flight))
        lane.in_flight += count
        return count

    def reserve(self, context: EncryptionContext, count: int) -> None:
        """Announce ``count`` values about to be encrypted under ``context``."""
        if count < 2 or self._closed:
            return  # one value gains nothing from a worker
        with self._lock:
            lane = self._lane(context)
            lane.failure = None  # a new batch: an earlier one's error is not its own,
            lane.batch += 1  # nor that of a request of it still in flight
            lane.wanted += count
            lane.active = self._clock()
            start = self._top_up(lane)
            batch = lane.batch
        self._schedule(lane, start, batch)

    def take(self, context: EncryptionContext) -> DataKey:
        """A fresh data key for ``context``: a ready one, one on its way, or one generated now.

        Waiting for a key already requested, rather than generating another, keeps
        KMS calls equal to values written. Raises the batch's failure, if a request
        made ahead for it failed and no key is ready.
        """
        with self._lock:
            lane = self._lane(context)
            if self._clock() - lane.active > self.stall:
                lane.wanted = 0  # a batch whose writer went away long ago is over
            while (
                not lane.ready and lane.in_flight > 0 and lane.failure is None and not self._closed
            ):
                self._lock.wait()
            now = self._clock()
            failure = lane.failure
            if failure is not None and not lane.ready:
                lane.failure = None
                if lane.wanted > 0:
                    lane.wanted = 0  # the batch ends here, and its statement fails
                    raise failure
            while lane.ready and now - lane.ready[0][0] > self.max_idle:
                lane.ready.popleft()  # stale: drop rather than keep keys in memory
            taken = lane.ready.popleft()[1] if lane.ready else None
            lane.wanted = max(0, lane.wanted - 1)
            lane.active = now
            start = self._top_up(lane)
            batch = lane.batch
        self._schedule(lane, start, batch)
        return taken if taken is not None else self._generate(context)

    def _schedule(self, lane: _Lane, count: int, batch: int) -> None:
        if count <= 0:
            return
        if self._closed:
            with self._lock:
                lane.in_flight -= count
            return
        executor = self._executor
        if executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        self.workers, thread_name_prefix="sqla-envelope-kms"
                    )
                executor = self._executor
        for _ in range(count):
            executor.submit(self._fill, lane, self._pid, batch)

    def _fill(self, lane: _Lane, pid: int, batch: int) -> None:
        failure: Exception | None = None
        try:
            data_key: DataKey | None = self._generate(lane.context)
        except Exception as exc:  # handed to the writer, whose statement it fails
            data_key, failure = None, exc
        with self._lock:
            lane.in_flight = max(0, lane.in_flight - 1)
            if data_key is not None and not self._closed and pid == self._pid:
                lane.ready.append((self._clock(), data_key))
            # The first failure of the batch it was made for, only: a request left
            # over from a failed statement must not fail the next one, whose own
            # requests may well succeed (KMS is back); that batch asks again instead.
            if (
                failure is not None
                and batch == lane.batch
                and lane.wanted > 0
                and lane.failure is None
            ):
                lane.failure = failure  # the rest of the batch is moot
            more = self._top_up(lane)
            batch = lane.batch
            self._lock.notify_all()
        self._schedule(lane, more, batch)

    def pooled(self) -> int:
        """How many keys are ready now (for tests and monitoring)."""
        with self._lock:
            return sum(len(lane.ready) for lane in self._lanes.values())

    def in_flight(self) -> int:
        """How many requests made ahead are still running (for tests and monitoring)."""
        with self._lock:
            return sum(lane.in_flight for lane in self._lanes.values())

    def close(self) -> None:
        """Stop the workers and forget every pooled key; take() still works, unpooled."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._lanes.clear()
            self._lock.notify_all()

    def _after_fork_in_child(self) -> None:
        # The parent still holds these keys: using one here too would encrypt two
        # values under one data key. New locks, because a fork can copy one held.
        self._lock = threading.Condition()
        self._lanes = {}
        self._executor = None
        self._pid = os.getpid()


_POOLS: weakref.WeakSet[DataKeyPool] = weakref.WeakSet()


def _reset_pools_in_child() -> None:
    for pool in list(_POOLS):
        pool._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pools_in_child)
