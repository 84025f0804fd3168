"""Encryptor, the envelope engine, and the process-wide default set by configure()."""

from __future__ import annotations

import base64
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial
from time import perf_counter
from typing import Any, Literal, get_args

from .aead import (
    NONCE_SIZE,
    committed_cipher,
    data_key_cipher,
    new_committed_cipher,
    open_sealed,
    random_bytes,
)
from .audit import KeyEvent, Listener
from .cache import KeyCache, peek
from .context import EncryptionContext
from .envelope import (
    COMMITMENT_SIZE,
    V1,
    V2,
    header_end,
    header_size,
    pack_header,
    pack_v1,
    wrapped_keys_of,
)
from .errors import (
    ConfigurationError,
    DecryptionError,
    EnvelopeError,
    MalformedEnvelopeError,
)
from .keyrings.base import DataKey, Keyring, keyring_failure
from .offload import OffLoopKeyCache, in_async_greenlet, off_loop

__all__ = [
    "COMMITMENT_POLICIES",
    "CommitmentPolicy",
    "Encryptor",
    "configure",
    "get_default_encryptor",
]

# The wrapped blind index key: this prefix, then the base64 of its envelope, sealed
# under this context (what KMS and CloudTrail see of its purpose).
INDEX_KEY_PREFIX = "sqla-envelope-index-key:v1:"
INDEX_KEY_CONTEXT = {"purpose": "sqla-envelope blind index key"}
INDEX_KEY_SIZE = 32

# Associated data of a v2 value: its whole header (version, every wrapped copy,
# the key commitment), then the canonical context. Of a v1 value: the version
# byte, then the context; v1 left the wrapped keys unauthenticated.
_V1_AAD_PREFIX = bytes((V1,))

CommitmentPolicy = Literal[
    "require_encrypt_allow_decrypt",
    "require_encrypt_require_decrypt",
    "forbid_encrypt_allow_decrypt",
]
COMMITMENT_POLICIES: tuple[CommitmentPolicy, ...] = get_args(CommitmentPolicy)

log = logging.getLogger("sqla_envelope")


def _first_key_ref(envelope: bytes) -> str:
    return envelope[3 : 3 + envelope[2]].decode("ascii", "replace")


class Encryptor:
    """Encrypts each value under its own data key; decrypts through a TTL key cache.

    ``cache_size`` unwrapped keys are kept for at most ``cache_ttl`` seconds after
    they are unwrapped; either set to 0 disables caching. Only data keys are
    cached, never plaintext values. Thread-safe: one Encryptor serves a whole
    application.

    Values are written in format v2, whose key commitment makes a value open
    under one data key only. ``commitment_policy`` names, as the AWS Encryption
    SDK does, what is read: ``"require_encrypt_allow_decrypt"`` (the default)
    still reads v1 values written before commitment existed;
    ``"require_encrypt_require_decrypt"`` refuses them with DecryptionError, for
    once ``rewrap`` has moved every value to v2 (docs/format.md);
    ``"forbid_encrypt_allow_decrypt"`` reads both and still writes v1, for a
    rolling upgrade while processes of a version that cannot read v2 run.

    Threads that miss on the same data key at once make one keyring call: one of
    them unwraps, the others wait for it, each for at most ``unwrap_timeout``
    seconds, then raise KeyringError (the unwrap itself is not interrupted, and
    its key is cached when it ends). The bound is there for a keyring that
    hangs; a slow one should not meet it. With its default retries and
    timeouts, a KmsKeyring request gives up within about 17 seconds (its
    10-second retry budget, then one more attempt of up to 2 + 5 seconds), so
    the default of 60 seconds covers a failover to a second region's copy;
    raise it with those settings.

    ``cache_written_keys=True`` also caches the data key of each value written,
    so that reading it back within ``cache_ttl`` (an ORM object expired by
    ``commit()``, a ``RETURNING``) needs no keyring call: with KMS in direct
    mode, no ``Decrypt``. Off by default: a writer whose role may only
    ``GenerateDataKey`` would then read its own values for ``cache_ttl`` and
    fail after, and each such read leaves no ``Decrypt`` in CloudTrail
    (docs/kms.md, "Reading back what was written").

    Fork-safe: a child process (gunicorn or uWSGI with the app preloaded,
    multiprocessing) starts with the parent's cached keys but none of its unwraps
    in flight, locks or worker threads.
    """

    def __init__(
        self,
        keyring: Keyring,
        *,
        cache_ttl: float = 300.0,
        cache_size: int = 10_000,
        max_workers: int = 16,
        prefetch: bool | None = None,
        listeners: Iterable[Listener] = (),
        unwrap_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        commitment_policy: CommitmentPolicy = "require_encrypt_allow_decrypt",
        index_key: str | None = None,
        cache_written_keys: bool = False,
    ) -> None:
        if not isinstance(keyring, Keyring):
            raise ConfigurationError(
                f"{type(keyring).__name__} does not implement the Keyring protocol"
            )
        if cache_ttl < 0 or cache_size < 0:
            raise ConfigurationError("cache_ttl and cache_size must not be negative")
        if max_workers < 1:
            raise ConfigurationError("max_workers must be at least 1")
        if commitment_policy not in COMMITMENT_POLICIES:
            raise ConfigurationError(f"commitment_policy must be one of {COMMITMENT_POLICIES}")
        self.commitment_policy = commitment_policy
        self._reads_v1 = commitment_policy != "require_encrypt_require_decrypt"
        self._writes_v1 = commitment_policy == "forbid_encrypt_allow_decrypt"
        if not 0 < unwrap_timeout <= threading.TIMEOUT_MAX:
            raise ConfigurationError("unwrap_timeout must be a positive number of seconds")
        self.keyring = keyring
        self.unwrap_timeout = unwrap_timeout
        # Under SQLAlchemy's asyncio, keyring calls that may wait on a network run
        # off the event loop (offload.py), as decided here: every call of a keyring
        # that reaches one (KmsKeyring), but the per-value unwraps of one that
        # unwraps locally (bounded reuse): those need KMS only for a new wrapping
        # key, which a result's unwrap_all asks for, off the loop, and a thread hop
        # would cost more than they do. A local keyring stays inline.
        remote_unwraps = bool(getattr(keyring, "unwraps_remotely", False))
        self._remote = remote_unwraps or hasattr(keyring, "plan_unwraps")
        # A keyring that can often make a data key in memory (TenantKeyring, once a
        # tenant's branch key is cached) says so with generate_data_key_in_memory:
        # under asyncio a write then hops off the loop only when it must wait.
        in_memory_first = getattr(keyring, "generate_data_key_in_memory", None)
        self._generate_data_key: Callable[[EncryptionContext], DataKey] = (
            keyring.generate_data_key
            if not self._remote
            else partial(off_loop, keyring.generate_data_key)
            if in_memory_first is None
            else partial(_generate_off_loop_unless_in_memory, keyring, in_memory_first)
        )
        self._cache: KeyCache[Any] = (OffLoopKeyCache if remote_unwraps else KeyCache)(
            cache_size, cache_ttl, wait_timeout=unwrap_timeout, clock=clock
        )
        # A keyring that unwraps in memory (LocalKeyring) is not worth a single
        # flight on a miss: the flight's lock costs as much as the unwrap.
        # (KmsKeyring in bounded reuse too: it single-flights its own KMS calls.)
        in_memory = bool(getattr(keyring, "unwraps_in_memory", False))
        self._in_memory = in_memory and not remote_unwraps
        # Keyring calls, counted with itertools.count: next() is atomic under the
        # GIL and costs a tenth of a lock on the per-value path.
        self._wraps = itertools.count()
        self._unwraps = itertools.count()
        self.max_workers = max_workers
        if not isinstance(cache_written_keys, bool):
            raise ConfigurationError("cache_written_keys must be True or False")
        self.cache_written_keys = cache_written_keys
        # Unwrap a query's keys concurrently by default only where unwrapping waits
        # on a network (KMS); a local keyring is CPU-bound and gains nothing.
        self.prefetch = self._remote if prefetch is None else prefetch
        self._listeners: tuple[Listener, ...] = tuple(listeners)
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        if index_key is not None and not (
            isinstance(index_key, str) and index_key.startswith(INDEX_KEY_PREFIX)
        ):
            raise ConfigurationError(
                "index_key= takes the wrapped index key, text starting with "
                f"{INDEX_KEY_PREFIX!r}, as Encryptor.new_index_key() makes it"
            )
        self.index_key = index_key
        self._index_key_plain: bytes | None = None
        _ENCRYPTORS.add(self)

    def __repr__(self) -> str:
        return (
            f"Encryptor(keyring={self.keyring!r}, cache_ttl={self._cache.ttl}, "
            f"cache_size={self._cache.maxsize})"
        )

    # -- public API ---------------------------------------------------------------

    def encrypt(self, plaintext: bytes, context: Mapping[str, str] | None = None) -> bytes:
        """Encrypt ``plaintext`` under a fresh data key into one self-describing envelope.

        Raises KeyringError when the keyring cannot produce a data key; nothing is
        returned then, so nothing can be stored in plaintext.
        """
        if not isinstance(plaintext, (bytes, bytearray, memoryview)):
            raise TypeError("encrypt() takes bytes")
        return self.seal(bytes(plaintext), EncryptionContext.of(context))

    def decrypt(self, envelope: bytes, context: Mapping[str, str] | None = None) -> bytes:
        """Decrypt an envelope written by ``encrypt`` under the same context.

        Raises MalformedEnvelopeError for bytes that are not an envelope, and
        DecryptionError for a tampered value, another context, or a value no key
        in the keyring can unwrap.
        """
        if not isinstance(envelope, (bytes, bytearray, memoryview)):
            raise TypeError("decrypt() takes bytes")
        return self.open(bytes(envelope), EncryptionContext.of(context))

    def new_index_key(self) -> str:
        """A new random blind index key, wrapped by this keyring: what ``index_key=`` takes.

        The text holds an envelope of the 32-byte key under the keyring's primary
        key (KMS: one GenerateDataKey, and CloudTrail sees the purpose in the
        context); store it with the application's configuration. The plaintext
        key is never returned or written.
        """
        envelope = self.encrypt(random_bytes(INDEX_KEY_SIZE), INDEX_KEY_CONTEXT)
        return INDEX_KEY_PREFIX + base64.urlsafe_b64encode(envelope).decode("ascii")

    def unwrapped_index_key(self) -> bytes:
        """The index key, unwrapped through the keyring at first use and then held.

        ConfigurationError when this Encryptor has none; DecryptionError when the
        keyring cannot unwrap it (another keyring's key, or altered text).
        """
        if self._index_key_plain is None:
            if self.index_key is None:
                raise ConfigurationError(
                    "a blind index needs a key: pass index_key= (the text of "
                    "Encryptor.new_index_key()) to the Encryptor, or key= to the BlindIndex"
                )
            try:
                envelope = base64.urlsafe_b64decode(self.index_key[len(INDEX_KEY_PREFIX) :])
            except ValueError:
                raise ConfigurationError("index_key= is not valid base64") from None
            self._index_key_plain = self.decrypt(envelope, INDEX_KEY_CONTEXT)
        return self._index_key_plain

    def reading_v1(self) -> Encryptor:
        """This Encryptor if it reads format v1 values, else one like it that does.

        What ``rewrap`` and ``reencrypt`` read with whatever the application's
        ``commitment_policy``: they exist to move v1 values to v2. The copy shares
        the keyring and the audit listeners; it has a cache of its own.
        """
        if self._reads_v1:
            return self
        return Encryptor(
            self.keyring,
            cache_ttl=self._cache.ttl,
            cache_size=self._cache.maxsize,
            max_workers=self.max_workers,
            prefetch=self.prefetch,
            listeners=self._listeners,
            unwrap_timeout=self.unwrap_timeout,
            index_key=self.index_key,
        )

    def has_key_for(self, envelope: bytes) -> bool:
        """Whether decrypting ``envelope`` now needs no keyring call (its key is cached)."""
        try:
            end = header_size(envelope) or header_end(envelope)
        except MalformedEnvelopeError:
            return False
        return self._cache.peek(envelope[:end]) is not None

    def stats(self) -> dict[str, int]:
        """Keyring calls and cache effectiveness since this Encryptor was built."""
        return {
            "wraps": peek(self._wraps),
            "unwraps": peek(self._unwraps),
            "cache_hits": self._cache.hits,
            "cache_misses": self._cache.misses,
            "cached_keys": len(self._cache),
        }

    def clear_cache(self) -> None:
        """Forget every unwrapped data key now (after a key compromise, in tests).

        A keyring that keeps keys of its own (KmsKeyring's bounded-reuse wrapping
        keys) forgets them too, so every key is asked of the keyring's service
        again: a revoked grant or key policy applies at once.
        """
        self._cache.clear()
        clear_keyring = getattr(self.keyring, "clear_cache", None)
        if clear_keyring is not None:
            clear_keyring()

    # -- batches ----------------------------------------------------------------------

    def reserve(self, context: Mapping[str, str] | None, count: int) -> None:
        """Tell the keyring that ``count`` values are about to be encrypted under ``context``.

        A keyring that can generate data keys ahead (KmsKeyring in direct mode)
        starts them concurrently; others ignore it. Called before multi-row writes.
        """
        reserve = getattr(self.keyring, "reserve_data_keys", None)
        if reserve is not None and count > 1:
            # off the loop: bounded reuse waits here for the wrapping keys it generates
            call = off_loop if self._remote else _inline
            call(reserve, EncryptionContext.of(context), count)

    def unwrap_all(
        self, envelopes: Iterable[bytes | None], context: Mapping[str, str] | None
    ) -> int:
        """Unwrap the data keys of many envelopes concurrently into the key cache.

        Each distinct data key is unwrapped once, on up to ``max_workers`` threads,
        and at most ``cache_size`` of them (more would evict one another before
        use). Decrypting the values afterwards then hits the cache. A keyring with
        a ``plan_unwraps`` method (KmsKeyring) picks the envelopes whose unwrap
        needs its service, one per need (bounded reuse: one per wrapping key),
        and only those are unwrapped here. ``envelopes`` is read once, and each
        unwrap starts as soon as it is found, so a lazy iterable (rows still being
        fetched) is scanned while the first requests are in flight. Returns the
        number of keys unwrapped, once all are. A KeyringError (KMS down) is
        raised as soon as it is met, and stops the unwraps not yet started, so an
        outage costs one failing request per worker, not one per value; a value
        that cannot be decrypted is left for its own decrypt() to report.
        """
        ctx = EncryptionContext.of(context)
        cache = self._cache
        if not cache.enabled:
            return 0  # nothing would be kept for the decrypts that follow
        # filter(None, ...) drops NULLs (and empty values, which decrypt() reports).
        present: Iterable[bytes] = filter(None, envelopes)
        if self._remote and in_async_greenlet():
            # An async driver has buffered the rows: listing them loses no overlap,
            # and the scan, its requests and the waits for them leave the loop.
            return off_loop(self._unwrap_scan, [(list(present), ctx)])
        return self._unwrap_scan([(present, ctx)])

    def unwrap_grouped(
        self, groups: Iterable[tuple[Iterable[bytes | None], Mapping[str, str] | None]]
    ) -> int:
        """``unwrap_all`` for envelopes of several contexts: (envelopes, context) groups.

        For values bound to their rows (``context_columns``), whose contexts differ
        from tenant to tenant: the keys of every group are unwrapped concurrently,
        together, as ``unwrap_all`` unwraps one context's.
        """
        if not self._cache.enabled:
            return 0
        work = [
            (filter(None, envelopes), EncryptionContext.of(context))
            for envelopes, context in groups
        ]
        if self._remote and in_async_greenlet():
            return off_loop(self._unwrap_scan, [(list(e), c) for e, c in work])
        return self._unwrap_scan(work)

    def _unwrap_scan(self, work: Iterable[tuple[Iterable[bytes], EncryptionContext]]) -> int:
        cache = self._cache
        plan = getattr(self.keyring, "plan_unwraps", None)

        def candidates() -> Iterator[tuple[bytes, int, EncryptionContext]]:
            for present, ctx in work:
                found = plan(present, ctx) if plan is not None else _framed(present)
                for envelope, end in found:
                    yield envelope, end, ctx

        batch = _Batch()
        executor: ThreadPoolExecutor | None = None
        first: tuple[Any, ...] | None = None  # run here, with no thread, if it stays alone
        pending: set[bytes] = set()
        futures: list[Future[int]] = []
        try:
            for envelope, end, ctx in candidates():
                if batch.failed:
                    break
                key = envelope[:end]
                if key in pending or cache.peek(key) is not None:
                    continue
                pending.add(key)
                job = (key, envelope, end, ctx, batch)
                if first is None and not futures:
                    first = job
                else:
                    executor = executor or self._pool()
                    if first is not None:
                        futures.append(executor.submit(self._prefetch_one, *first))
                        first = None
                    futures.append(executor.submit(self._prefetch_one, *job))
                if len(pending) >= cache.maxsize:
                    break
            done = self._prefetch_one(*first) if first is not None else 0
            return done + sum(future.result() for future in futures)
        except BaseException:
            batch.failed = True  # the unwraps not yet started stop at once
            # and those under way end before this call does: a later read would
            # otherwise join one of them, and be given its failure.
            for future in futures:
                future.cancel()
            wait(futures)
            raise

    def _prefetch_one(
        self, key: bytes, envelope: bytes, end: int, context: EncryptionContext, batch: _Batch
    ) -> int:
        if batch.failed or self._cache.peek(key) is not None:
            return 0  # a request of this batch failed, or a decrypt got here first
        try:
            self._cache.load(key, self._unwrap, envelope, end, context)
        except DecryptionError:
            return 0
        except BaseException:
            batch.failed = True
            raise
        return 1

    def _pool(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.max_workers, thread_name_prefix="sqla-envelope-unwrap"
                )
            return self._executor

    def close(self) -> None:
        """Stop the unwrap workers and forget cached keys; the Encryptor still works."""
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        self.clear_cache()

    def _after_fork_in_child(self) -> None:
        # The parent's workers do not exist here, and its executor's locks and
        # queue may have been copied mid-use: start again with none. A new lock,
        # because the fork may have copied this one held by another thread.
        self._executor_lock = threading.Lock()
        self._executor = None

    # -- the hot path, with a pre-built context -------------------------------------

    def seal(self, plaintext: bytes, context: EncryptionContext) -> bytes:
        """``encrypt`` for a context already in canonical form (what columns use)."""
        next(self._wraps)
        started = perf_counter() if self._listeners else 0.0
        try:
            data_key = self._generate_data_key(context)
            # both refuse a key of the wrong size
            if self._writes_v1:
                cipher, commitment = data_key_cipher(data_key.plaintext), b""
            else:
                cipher, commitment = new_committed_cipher(data_key.plaintext)
        except Exception as exc:
            if self._listeners:
                self._emit("wrap", context, "", False, started, exc)
            if isinstance(exc, EnvelopeError):
                raise
            raise keyring_failure(self.keyring, "generate a data key", exc) from exc
        if self._listeners:
            self._emit("wrap", context, data_key.wrapped_keys[0].key_ref, False, started)
        nonce = random_bytes(NONCE_SIZE)
        if not commitment:  # forbid_encrypt_allow_decrypt: v1, for readers not upgraded yet
            sealed = cipher.encrypt(nonce, plaintext, _V1_AAD_PREFIX + context.canonical)
            return pack_v1(data_key.wrapped_keys, nonce, sealed)
        header = pack_header(data_key.wrapped_keys, commitment)
        if self.cache_written_keys:
            # The read path's key for this value, and the cipher it would build
            # once the commitment checked: this one made the commitment.
            self._cache.put(header, cipher)
        return header + nonce + cipher.encrypt(nonce, plaintext, header + context.canonical)

    @property
    def format_version(self) -> int:
        """The envelope format this Encryptor writes: 2, or 1 under forbid_encrypt_allow_decrypt."""
        return V1 if self._writes_v1 else V2

    def open(self, envelope: bytes, context: EncryptionContext) -> bytes:
        """``decrypt`` for a context already in canonical form (what columns use)."""
        end = header_size(envelope) or header_end(envelope)  # the fast path inline
        # Keyed by the whole header, key references and commitment included: a
        # changed byte there misses the cache and goes back to the keyring. A
        # v2 key is only cached once its commitment checked, so a hit needs no
        # check of its own.
        key = envelope[:end]
        cache = self._cache
        cipher = cache.get(key)
        if cipher is None:
            load = cache.load_alone if self._in_memory else cache.load
            cipher = load(key, self._unwrap, envelope, end, context)
        elif self._listeners:
            self._emit("unwrap", context, _first_key_ref(envelope), True, 0.0)
        return open_sealed(
            cipher,
            envelope[end : end + NONCE_SIZE],
            envelope[end + NONCE_SIZE :],
            (key if envelope[0] == V2 else _V1_AAD_PREFIX) + context.canonical,
        )

    def _unwrap(self, envelope: bytes, end: int, context: EncryptionContext) -> object:
        v2 = envelope[0] == V2
        if not v2 and not self._reads_v1:
            raise DecryptionError(
                "a format v1 value, written without key commitment, and this Encryptor's "
                "commitment_policy is require_encrypt_require_decrypt: rewrap the column "
                "to move its values to v2"
            )
        wrapped_keys = wrapped_keys_of(envelope, end)
        next(self._unwraps)
        started = perf_counter() if self._listeners else 0.0
        try:
            data_key = self.keyring.unwrap_data_key(wrapped_keys, context)
            if v2:
                cipher = committed_cipher(data_key, envelope[end - COMMITMENT_SIZE : end])
            else:
                cipher = data_key_cipher(data_key)
        except Exception as exc:
            if self._listeners:
                self._emit("unwrap", context, wrapped_keys[0].key_ref, False, started, exc)
            if isinstance(exc, EnvelopeError):
                raise
            raise keyring_failure(self.keyring, "unwrap a data key", exc) from exc
        if self._listeners:
            self._emit("unwrap", context, wrapped_keys[0].key_ref, False, started)
        return cipher

    # -- audit events -------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with a KeyEvent for every wrap and unwrap (sqla_envelope.audit)."""
        self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners = tuple(fn for fn in self._listeners if fn is not listener)

    def _emit(
        self,
        operation: Literal["wrap", "unwrap"],
        context: EncryptionContext,
        key_ref: str,
        cache_hit: bool,
        started: float,
        error: BaseException | None = None,
    ) -> None:
        event = KeyEvent(
            operation,
            context,
            key_ref,
            getattr(self.keyring, "mode", "custom"),
            cache_hit,
            perf_counter() - started if started else 0.0,
            type(error).__name__ if error is not None else None,
        )
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                # A broken exporter must not fail reads and writes; say so loudly.
                log.exception("sqla_envelope audit listener %r failed", listener)


class _Batch:
    """The unwraps started for one result, and whether one of them has failed."""

    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed = False


def _inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def _generate_off_loop_unless_in_memory(
    keyring: Keyring,
    in_memory: Callable[[EncryptionContext], DataKey | None],
    context: EncryptionContext,
) -> DataKey:
    """generate_data_key, moved off the event loop only when the keyring cannot make it in memory.

    A thread hop costs about 70 us, three times a TenantKeyring's wrap; it is
    paid once per tenant and cache period, for the load, not per row.
    """
    if in_async_greenlet():
        made = in_memory(context)
        if made is not None:
            return made
        return off_loop(keyring.generate_data_key, context)
    return keyring.generate_data_key(context)


def _framed(envelopes: Iterable[bytes]) -> Iterator[tuple[bytes, int]]:
    """Each envelope with its header size; what is not an envelope is for decrypt() to report."""
    for envelope in envelopes:
        try:
            yield envelope, header_end(envelope)
        except MalformedEnvelopeError:
            continue


_ENCRYPTORS: weakref.WeakSet[Encryptor] = weakref.WeakSet()


def _reset_in_child() -> None:
    for encryptor in list(_ENCRYPTORS):
        encryptor._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)

_default: Encryptor | None = None


def configure(encryptor: Encryptor | None) -> None:
    """Set the encryptor used by every EncryptedType that names none; None removes it.

    Looked up each time a value is encrypted or decrypted, so models can be
    declared before the keys are known (application factories, Django settings).
    """
    global _default
    if encryptor is not None and not isinstance(encryptor, Encryptor):
        raise ConfigurationError("configure() takes an Encryptor or None")
    _default = encryptor


def get_default_encryptor() -> Encryptor:
    """The configured default encryptor; raises ConfigurationError when there is none."""
    encryptor = _default
    if encryptor is None:
        raise ConfigurationError(
            "no encryptor configured: call sqla_envelope.configure(Encryptor(keyring)) "
            "or pass encryptor= to EncryptedType"
        )
    return encryptor
