"""The TTL cache of unwrapped data keys, with single-flight loading and counters.

Holds ready-to-use ciphers for unwrapped data keys, never plaintext values.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

from .errors import KeyringError

__all__ = ["KeyCache", "peek"]

V = TypeVar("V")


def peek(counter: itertools.count[int]) -> int:
    """How many times next() was called on ``counter``, without advancing it."""
    return int(repr(counter)[len("count(") : -1])


class _Flight:
    """One in-progress load; followers block on ``lock`` until the leader is done."""

    __slots__ = ("error", "lock", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.value: Any = None
        self.error: BaseException | None = None


class KeyCache(Generic[V]):
    """A thread-safe LRU cache whose entries expire ``ttl`` seconds after loading.

    Why not ``cachetools.TTLCache``: on a cold read every value is a miss and an
    insert, and there its pure-Python linked lists cost 4 to 7 µs against 2 to 3
    here (bench/micro.py; a hit costs about the same in both). This cache is an
    ``OrderedDict`` used only through single C-level operations (get, set,
    move_to_end, popitem, dict.setdefault), each atomic under the GIL, so neither
    a hit nor a miss takes a lock, and the counters are ``itertools.count``.

    Concurrent misses on one key are collapsed into a single load (single-flight):
    the first caller registers a flight with ``setdefault`` and loads; the others
    wait on it. A page of rows sharing a data key costs one keyring call, not one
    per thread. A waiting caller gives up after ``wait_timeout`` seconds with a
    KeyringError (None: it waits as long as the load takes); the load itself
    goes on, and its result is cached for later callers. ``clock`` is injectable
    so tests can move time without sleeping.

    After ``os.fork()`` the child forgets the loads in flight in the parent: the
    threads running them do not exist there, and waiting on one would never end.
    """

    def __init__(
        self,
        maxsize: int,
        ttl: float,
        *,
        wait_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if maxsize < 0 or ttl < 0:
            raise ValueError("cache size and ttl must not be negative")
        if wait_timeout is not None and not 0 < wait_timeout <= threading.TIMEOUT_MAX:
            raise ValueError("wait_timeout must be positive")
        self.maxsize = maxsize
        self.ttl = float(ttl)
        self.wait_timeout = wait_timeout
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._generation = 0
        self._hits = itertools.count()
        self._misses = itertools.count()
        _CACHES.add(self)

    @property
    def enabled(self) -> bool:
        return self.maxsize > 0 and self.ttl > 0

    @property
    def hits(self) -> int:
        return peek(self._hits)

    @property
    def misses(self) -> int:
        return peek(self._misses)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, key: Hashable) -> tuple[float, V] | None:
        """(expiry time, value) for ``key`` while it is fresh, else None; not counted."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock():
            return entry
        return None

    def peek(self, key: Hashable) -> V | None:
        """The cached value for ``key`` or None, without counting or reordering."""
        entry = self.entry(key)
        return entry[1] if entry is not None else None

    def get(self, key: Hashable) -> V | None:
        """The cached value for ``key``, or None (counted as a hit when found)."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._clock():
            return None
        # suppress() would cost more than the lookup; a KeyError means another
        # thread evicted the entry just now, and the value is still valid.
        try:  # noqa: SIM105
            self._entries.move_to_end(key)
        except KeyError:
            pass
        next(self._hits)
        return entry[1]

    def get_or_load(self, key: Hashable, load: Callable[..., V], *args: Any) -> V:
        """Return the cached value for ``key``, or call ``load(*args)`` once for all waiters.

        An exception from ``load`` reaches every waiting caller and nothing is cached.
        """
        value = self.get(key)
        if value is not None:
            return value
        return self.load(key, load, *args)

    def load(self, key: Hashable, load: Callable[..., V], *args: Any) -> V:
        """The miss path of ``get_or_load``: load once, however many callers wait."""
        next(self._misses)
        flight = _Flight()
        leader = self._flights.setdefault(key, flight)
        if leader is not flight:
            timeout = self.wait_timeout
            if not leader.lock.acquire(timeout=-1 if timeout is None else timeout):
                raise KeyringError(
                    f"gave up after {timeout:g} s waiting for another thread's "
                    f"unwrap of the same data key (it goes on, and is cached when done)"
                )
            leader.lock.release()
            if leader.error is not None:
                raise leader.error
            return leader.value  # type: ignore[no-any-return]
        return self._lead(key, flight, load, args)

    def put(self, key: Hashable, value: V) -> None:
        """Cache ``value``, made by the caller rather than loaded (not counted as a miss)."""
        self._keep(key, value, self._generation)

    def load_alone(self, key: Hashable, load: Callable[..., V], *args: Any) -> V:
        """The miss path without single flight, for a load cheaper than sharing it.

        A local unwrap costs about a microsecond, less than registering, waiting
        on and retiring a flight: two threads that miss on one key at once both
        unwrap it, which is harmless, and neither waits.
        """
        next(self._misses)
        generation = self._generation
        value = load(*args)
        self._keep(key, value, generation)
        return value

    def _keep(self, key: Hashable, value: V, generation: int) -> None:
        """Cache a loaded value, unless a clear() since ``generation`` means "forget all"."""
        if generation == self._generation and self.maxsize > 0 and self.ttl > 0:
            entries = self._entries
            entries[key] = (self._clock() + self.ttl, value)
            while len(entries) > self.maxsize:
                try:
                    entries.popitem(last=False)
                except KeyError:  # emptied concurrently by clear()
                    break

    def _lead(self, key: Hashable, flight: _Flight, load: Callable[..., V], args: Any) -> V:
        generation = self._generation
        try:
            # A leader that finished between our miss and our setdefault has
            # already stored the value: use it rather than load again.
            entry = self.entry(key)
            value = entry[1] if entry is not None else load(*args)
        except BaseException as exc:
            flight.error = exc
            del self._flights[key]
            flight.lock.release()
            raise
        flight.value = value
        # Stored before the flight retires, so a caller arriving in between finds
        # the value instead of starting a second load.
        self._keep(key, value, generation)
        del self._flights[key]
        flight.lock.release()
        return value

    def clear(self) -> None:
        """Forget every entry now; loads already in flight are not cached either."""
        self._generation += 1
        self._entries.clear()

    def discard(self, keys: Iterable[Hashable]) -> None:
        """Forget ``keys`` now; loads already in flight, of any key, are not cached either.

        For a key that must stop serving at once (a tenant's shredded branch
        key): a load that started before the call may hold what it names, so no
        load in flight is kept; the others are simply loaded again.
        """
        self._generation += 1
        for key in keys:
            self._entries.pop(key, None)

    def _after_fork_in_child(self) -> None:
        # The parent's loads hold their flights' locks from threads the child
        # does not have. Keys already loaded are valid in both processes.
        self._flights = {}


_CACHES: weakref.WeakSet[KeyCache[Any]] = weakref.WeakSet()


def _forget_flights_in_child() -> None:
    for cache in list(_CACHES):
        cache._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_flights_in_child)
