"""The TTL cache of unwrapped data keys, with single-flight loading and counters.

Holds ready-to-use ciphers for unwrapped data keys, never plaintext values.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

__all__ = ["KeyCache"]

V = TypeVar("V")


class _Flight:
    """One in-progress load; followers block on ``lock`` until the leader is done."""

    __slots__ = ("error", "lock", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.value: object = None
        self.error: BaseException | None = None


class KeyCache(Generic[V]):
    """A thread-safe LRU cache whose entries expire ``ttl`` seconds after loading.

    Why not ``cachetools.TTLCache``: its pure-Python linked lists cost 3 to 5 µs a
    get or set here, more than the AES work per value; an ``OrderedDict`` keeps a
    miss-and-insert under 1.5 µs, which is what lets a cold-cache select stay
    within sight of a plain column (docs/performance.md).

    Concurrent misses on one key are collapsed into a single load (single-flight):
    a page of rows sharing a data key costs one keyring call, not one per thread.
    ``clock`` is injectable so tests can move time without sleeping.
    """

    def __init__(
        self, maxsize: int, ttl: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if maxsize < 0 or ttl < 0:
            raise ValueError("cache size and ttl must not be negative")
        self.maxsize = maxsize
        self.ttl = float(ttl)
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.maxsize > 0 and self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_load(self, key: Hashable, load: Callable[..., V], *args: Any) -> V:
        """Return the cached value for ``key``, or call ``load(*args)`` once for all waiters.

        An exception from ``load`` reaches every waiting caller and nothing is cached.
        """
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if entry[0] > now:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return entry[1]
                del self._entries[key]
            self.misses += 1
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            generation = self._generation
        if not leader:
            flight.lock.acquire()
            flight.lock.release()
            if flight.error is not None:
                raise flight.error
            return flight.value  # type: ignore[return-value]
        try:
            value = load(*args)
        except BaseException as exc:
            flight.error = exc
            with self._lock:
                del self._flights[key]
            flight.lock.release()
            raise
        flight.value = value
        with self._lock:
            del self._flights[key]
            # A clear() during the load means "forget everything now": keep nothing.
            if generation == self._generation and self.maxsize > 0 and self.ttl > 0:
                entries = self._entries
                entries[key] = (self._clock() + self.ttl, value)
                if len(entries) > self.maxsize:
                    entries.popitem(last=False)
        flight.lock.release()
        return value

    def clear(self) -> None:
        """Forget every entry now; loads already in flight are not cached either."""
        with self._lock:
            self._entries.clear()
            self._generation += 1
