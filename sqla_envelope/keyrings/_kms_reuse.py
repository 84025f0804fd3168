"""Bounded reuse: KMS-generated wrapping keys, each wrapping at most max_rows data keys.

A wrapping key is one GenerateDataKey; every value still gets its own random
data key, wrapped locally under it. Writers use the current wrapping key of their
context until it has served ``max_rows`` values or is ``max_age`` seconds old.
Readers need one KMS Decrypt per wrapping key, then unwrap locally.

Both sides can work ahead, so a statement waits about one KMS round trip, not
one per thousand rows: ``reserve`` generates, concurrently, the wrapping keys a
multi-row write is about to use up, and ``group`` tells the Encryptor which
wrapping key a read needs, so that a query's distinct wrapping keys are
decrypted concurrently. Neither makes a call that would not otherwise be made.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from ..aead import LOCAL_WRAPPED_SIZE, LocalKeyWrapper
from ..cache import KeyCache
from ..context import EncryptionContext
from ._kms_blob import parse_blob, split_reuse

__all__ = ["ReuseKeys", "WrappingKey"]


class WrappingKey(NamedTuple):
    """A KMS-generated key that wraps up to ``max_rows`` data keys locally."""

    wrapper: LocalKeyWrapper
    copies: tuple[tuple[str, bytes], ...]  # (key ARN, KMS ciphertext), primary first
    expires: float


class _Lane:
    """One context's wrapping keys: the current one, its uses, and those made ahead."""

    __slots__ = ("current", "promised", "ready", "uses")

    def __init__(self) -> None:
        self.current: WrappingKey | None = None
        self.uses = 0
        self.ready: deque[WrappingKey] = deque()
        self.promised = 0  # being generated ahead right now


class ReuseKeys:
    """The wrapping keys of a bounded-reuse KmsKeyring, for writing and for reading.

    ``generate(context)`` makes a new wrapping key (KMS GenerateDataKey, plus an
    Encrypt per additional key); ``decrypt(key_ref, kms_ciphertext, context)``
    returns a wrapping key's plaintext (KMS Decrypt). Both raise KeyringError or
    DecryptionError as the keyring maps them.
    """

    def __init__(
        self,
        generate: Callable[[EncryptionContext], WrappingKey],
        decrypt: Callable[[str, bytes, EncryptionContext], bytes],
        *,
        max_rows: int,
        max_age: float,
        workers: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._generate = generate
        self._decrypt = decrypt
        self.max_rows = max_rows
        self.max_age = max_age
        self.workers = workers
        self._clock = clock
        # Unwrapped wrapping keys for reading, one KMS Decrypt each (single-flight).
        self._unwrapped: KeyCache[LocalKeyWrapper] = KeyCache(10_000, max_age, clock=clock)
        # The wrapping key read last: (copy head, copy size, key ref, context,
        # wrapper, expires).
        self._last: tuple[bytes, int, str, bytes, LocalKeyWrapper, float] | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the wrapping keys used for writing (after os.fork()), and their lock.

        A wrapping key shared by parent and child would serve up to twice max_rows
        values; a new lock, because the fork may copy it held by a thread that is
        waiting on KMS in the parent. Keys unwrapped for reading stay valid in
        both (their KeyCache drops the parent's Decrypts in flight by itself).
        """
        self._lanes: dict[bytes, _Lane] = {}
        self._lock = threading.Lock()

    # -- writing ------------------------------------------------------------------

    def current(self, context: EncryptionContext) -> WrappingKey:
        """The wrapping key for the next value of ``context``, counted as one use.

        The lock is held through a KMS call on purpose: when a key runs out, one
        thread fetches the next and the others wait for it, instead of each
        paying a GenerateDataKey of its own.
        """
        with self._lock:
            lane = self._lane(context)
            current = self._take_ready(lane)
            if current is None:
                current = self._generate(context)
                lane.current, lane.uses = current, 1
            return current

    def current_if_ready(self, context: EncryptionContext) -> WrappingKey | None:
        """``current``, when that needs no KMS call and no wait for the lock; else None.

        What a write on an asyncio event loop asks first: None (nothing counted)
        sends it to ``current`` on a worker thread, where waiting is harmless.
        """
        if not self._lock.acquire(blocking=False):
            return None  # held by a thread that may be waiting on KMS
        try:
            lane = self._lanes.get(context.canonical)
            return None if lane is None else self._take_ready(lane)
        finally:
            self._lock.release()

    def _take_ready(self, lane: _Lane) -> WrappingKey | None:
        """The lane's wrapping key for one more value, counted; None if KMS must make one."""
        current = lane.current
        if current is None or lane.uses >= self.max_rows or self._clock() >= current.expires:
            current = self._next_ready(lane)
            if current is None:
                return None
            lane.current, lane.uses = current, 0
        lane.uses += 1
        return current

    def reserve(self, context: EncryptionContext, count: int) -> None:
        """Generate now, concurrently, the wrapping keys ``count`` more values will need.

        Called before a multi-row write. Makes exactly the keys that writing the
        rows one by one would make, so KMS calls stay ceil(rows / max_rows); they
        are just not made one round trip after another. Raises KeyringError if
        KMS fails, before any row is written; keys made before the failure are kept.
        """
        with self._lock:
            lane = self._lane(context)
            now = self._clock()
            current = lane.current
            left = self.max_rows - lane.uses if current and now < current.expires else 0
            ahead = sum(1 for key in lane.ready if now < key.expires) + lane.promised
            needed = math.ceil((count - left) / self.max_rows) - ahead
            needed = min(needed, self.workers)
            if needed < 2:
                return  # zero or one: the write itself makes it, with no wait to hide
            lane.promised += needed
        made: list[WrappingKey] = []
        try:
            with ThreadPoolExecutor(needed, thread_name_prefix="sqla-envelope-reuse") as pool:
                futures = [pool.submit(self._generate, context) for _ in range(needed)]
                errors = []
                for future in futures:
                    try:
                        made.append(future.result())
                    except Exception as exc:
                        errors.append(exc)
            if errors:
                raise errors[0]
        finally:
            with self._lock:
                lane.promised -= needed
                lane.ready.extend(made)

    def _lane(self, context: EncryptionContext) -> _Lane:
        lane = self._lanes.get(context.canonical)
        if lane is None:
            lane = self._lanes[context.canonical] = _Lane()
        return lane

    def _next_ready(self, lane: _Lane) -> WrappingKey | None:
        now = self._clock()
        while lane.ready:
            key = lane.ready.popleft()
            if now < key.expires:
                return key
        return None

    # -- reading ------------------------------------------------------------------

    def unwrap_known(self, key_ref: str, blob: bytes, canonical: bytes) -> bytes | None:
        """The data key of ``blob`` if it is under the wrapping key read last, else None.

        The per-value read path, so it stays short: rows written together share
        a wrapping key and are mostly read together, so the last wrapping key
        used is checked first, by comparing bytes rather than hashing them
        (startswith copies nothing). A match also vouches for ``key_ref``: only a
        copy under a key this keyring holds is ever remembered.
        """
        last = self._last  # one read: another thread may replace it meanwhile
        if (
            last is None
            or len(blob) != last[1]
            or not blob.startswith(last[0])
            or key_ref != last[2]
            or canonical != last[3]
            or self._clock() >= last[5]
        ):
            return None
        return last[4].unwrap(blob[-LOCAL_WRAPPED_SIZE:], canonical)

    def unwrap(self, key_ref: str, blob: bytes, context: EncryptionContext) -> bytes:
        """Unwrap a bounded-reuse copy with its wrapping key (one KMS Decrypt, then cached)."""
        canonical = context.canonical
        data_key = self.unwrap_known(key_ref, blob, canonical)
        if data_key is not None:
            return data_key
        head, local_wrap = split_reuse(blob)
        cache_key = (key_ref, head, canonical)
        entry = self._unwrapped.entry(cache_key)
        if entry is None:
            kms_ciphertext = parse_blob(blob).kms_ciphertext  # checks the copy's layout
            wrapper = self._unwrapped.load(cache_key, self._load, key_ref, kms_ciphertext, context)
            entry = self._unwrapped.entry(cache_key)
        else:
            wrapper = entry[1]
        if entry is not None:  # remembered no longer than the cache keeps it
            self._last = (head, len(blob), key_ref, canonical, wrapper, entry[0])
        return wrapper.unwrap(local_wrap, canonical)

    def group(self, key_ref: str, blob: bytes, context: EncryptionContext) -> Hashable | None:
        """What reading a copy needs from KMS: its wrapping key, or None once it is known."""
        cache_key = (key_ref, split_reuse(blob)[0], context.canonical)
        return None if self._unwrapped.peek(cache_key) is not None else cache_key

    def clear(self) -> None:
        """Forget every wrapping key now, for writing and for reading.

        The next write generates a new wrapping key and the next read of each
        asks KMS again, so a revoked grant or key policy applies at once.
        """
        with self._lock:
            self._lanes.clear()
        self._unwrapped.clear()
        self._last = None

    def _load(
        self, key_ref: str, kms_ciphertext: bytes, context: EncryptionContext
    ) -> LocalKeyWrapper:
        return LocalKeyWrapper(self._decrypt(key_ref, kms_ciphertext, context))
