"""Encryptor and its key cache: contexts, stats, TTL, size, single-flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from sqla_envelope import (
    ConfigurationError,
    DecryptionError,
    Encryptor,
    KeyringError,
    LocalKeyring,
    MalformedEnvelopeError,
    configure,
    get_default_encryptor,
)
from sqla_envelope import cache as cache_module
from sqla_envelope.cache import KeyCache
from sqla_envelope.context import EncryptionContext
from sqla_envelope.envelope import WrappedKey, unpack

CTX = {"table": "users", "column": "ssn"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingKeyring(LocalKeyring):
    """A LocalKeyring that counts unwraps and can be slowed down or broken.

    It may wait, as a key service does: the Encryptor must share its unwraps.
    """

    unwraps_in_memory = False

    def __init__(self, *args: Any, delay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unwrap_calls = 0
        self.delay = delay
        self.fail_with: Exception | None = None
        self.gate: threading.Event | None = None  # when set, each unwrap waits for it
        self._lock = threading.Lock()

    def unwrap_data_key(
        self, wrapped_keys: Sequence[WrappedKey], context: EncryptionContext
    ) -> bytes:
        with self._lock:
            self.unwrap_calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail_with is not None:
            raise self.fail_with
        return super().unwrap_data_key(wrapped_keys, context)


def _keyring(**kwargs: Any) -> CountingKeyring:
    return CountingKeyring({"k1": b"\x11" * 32}, **kwargs)


def test_round_trip_with_context() -> None:
    enc = Encryptor(LocalKeyring.generate())
    envelope = enc.encrypt(b"4111 1111 1111 1111", CTX)
    assert b"4111" not in envelope
    assert enc.decrypt(envelope, CTX) == b"4111 1111 1111 1111"
    assert enc.decrypt(enc.encrypt(b""), None) == b""


def test_context_must_match_exactly() -> None:
    enc = Encryptor(LocalKeyring.generate())
    envelope = enc.encrypt(b"secret", CTX)
    for other in ({"table": "users", "column": "email"}, {"table": "users"}, {}, {**CTX, "x": "y"}):
        enc.clear_cache()
        with pytest.raises(DecryptionError):
            enc.decrypt(envelope, other)
    # ...even when the data key is already cached from a good read
    assert enc.decrypt(envelope, CTX) == b"secret"
    with pytest.raises(DecryptionError):
        enc.decrypt(envelope, {"table": "users", "column": "email"})


def test_context_order_does_not_matter_but_encoding_is_unambiguous() -> None:
    enc = Encryptor(LocalKeyring.generate())
    envelope = enc.encrypt(b"v", {"b": "2", "a": "1"})
    assert enc.decrypt(envelope, {"a": "1", "b": "2"}) == b"v"
    assert EncryptionContext({"a": "bc"}).canonical != EncryptionContext({"ab": "c"}).canonical
    with pytest.raises(ConfigurationError):
        EncryptionContext({"a": 1})  # type: ignore[dict-item]


def test_every_value_gets_its_own_data_key() -> None:
    enc = Encryptor(LocalKeyring.generate())
    envelopes = [enc.encrypt(b"same", CTX) for _ in range(50)]
    assert len({unpack(e).wrapped_keys for e in envelopes}) == 50
    assert len({unpack(e).nonce for e in envelopes}) == 50
    assert enc.stats()["wraps"] == 50


def test_stats_count_keyring_calls_and_cache_use() -> None:
    keyring = _keyring()
    enc = Encryptor(keyring)
    envelopes = [enc.encrypt(bytes([i]), CTX) for i in range(3)]
    for _ in range(2):
        for envelope in envelopes:
            enc.decrypt(envelope, CTX)
    stats = enc.stats()
    assert (stats["wraps"], stats["unwraps"]) == (3, 3)
    assert (stats["cache_hits"], stats["cache_misses"]) == (3, 3)
    assert keyring.unwrap_calls == 3
    enc.clear_cache()
    enc.decrypt(envelopes[0], CTX)
    assert enc.stats()["unwraps"] == 4


def test_cache_entries_expire_after_ttl() -> None:
    clock = FakeClock()
    keyring = _keyring()
    enc = Encryptor(keyring, cache_ttl=60, clock=clock)
    envelope = enc.encrypt(b"v", CTX)
    enc.decrypt(envelope, CTX)
    clock.now += 59.9
    enc.decrypt(envelope, CTX)
    assert keyring.unwrap_calls == 1
    clock.now += 0.2
    enc.decrypt(envelope, CTX)
    assert keyring.unwrap_calls == 2


def test_cache_is_bounded_by_size_least_recently_used_first() -> None:
    keyring = _keyring()
    enc = Encryptor(keyring, cache_size=2)
    a, b, c = (enc.encrypt(x, CTX) for x in (b"a", b"b", b"c"))
    for envelope in (a, b, a, c):  # c evicts b, the least recently used
        enc.decrypt(envelope, CTX)
    assert enc.stats()["cached_keys"] == 2
    calls = keyring.unwrap_calls
    enc.decrypt(a, CTX)
    enc.decrypt(c, CTX)
    assert keyring.unwrap_calls == calls
    enc.decrypt(b, CTX)
    assert keyring.unwrap_calls == calls + 1


@pytest.mark.parametrize("settings", [{"cache_size": 0}, {"cache_ttl": 0}])
def test_cache_can_be_disabled(settings: dict[str, float]) -> None:
    keyring = _keyring()
    enc = Encryptor(keyring, **settings)  # type: ignore[arg-type]
    envelope = enc.encrypt(b"v", CTX)
    for _ in range(3):
        assert enc.decrypt(envelope, CTX) == b"v"
    assert keyring.unwrap_calls == 3


def _read_together(enc: Encryptor, envelope: bytes, threads: int, reads: int) -> list[bytes]:
    """Each of ``threads`` threads, released at once, decrypts ``envelope`` ``reads`` times."""
    start = threading.Barrier(threads)
    results: list[bytes] = []

    def reader() -> None:
        start.wait()
        for _ in range(reads):
            results.append(enc.decrypt(envelope, CTX))

    workers = [threading.Thread(target=reader) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results


def test_concurrent_misses_on_one_key_make_one_keyring_call() -> None:
    keyring = _keyring(delay=0.2)
    enc = Encryptor(keyring)
    envelope = enc.encrypt(b"shared", CTX)
    assert _read_together(enc, envelope, threads=16, reads=1) == [b"shared"] * 16
    assert keyring.unwrap_calls == 1
    assert enc.stats()["unwraps"] == 1


def test_concurrent_misses_under_a_local_keyring_each_unwrap_and_cache_once() -> None:
    keyring = LocalKeyring.generate()
    enc = Encryptor(keyring)
    envelope = enc.encrypt(b"shared", CTX)
    assert _read_together(enc, envelope, threads=16, reads=50) == [b"shared"] * 800
    stats = enc.stats()
    assert stats["cached_keys"] == 1
    # No single flight: threads that missed together each unwrapped, then all hit.
    assert 1 <= stats["unwraps"] <= 16
    assert stats["cache_hits"] + stats["cache_misses"] == 800


def test_concurrent_misses_on_different_keys_load_in_parallel() -> None:
    keyring = _keyring()
    enc = Encryptor(keyring)
    envelopes = [enc.encrypt(bytes([i]), CTX) for i in range(8)]
    # Every unwrap waits until all eight are in flight together: behind one lock the
    # barrier would never fill, and each wait would break after its timeout.
    together = threading.Barrier(8, timeout=20)
    original = keyring.unwrap_data_key

    def unwrap_with_the_others(*args: Any) -> bytes:
        together.wait()
        return original(*args)

    keyring.unwrap_data_key = unwrap_with_the_others  # type: ignore[method-assign]
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda e=e: results.append(enc.decrypt(e, CTX))) for e in envelopes
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [bytes([i]) for i in range(8)]
    assert not together.broken
    assert keyring.unwrap_calls == 8


def _until(condition: Callable[[], bool]) -> None:
    """Wait for another thread to get somewhere (it fails the test if it never does)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the other thread never got there"
        time.sleep(0.001)


class _WatchedLock:
    """A flight's lock that counts the callers who came to wait on it."""

    def __init__(self, lock: Any, waiting: list[int]) -> None:
        self._lock = lock
        self._waiting = waiting

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        self._waiting.append(1)  # list.append: atomic, as the count must be
        return bool(self._lock.acquire(*args, **kwargs))

    def release(self) -> None:
        self._lock.release()


def test_a_failed_load_reaches_every_waiter_and_is_not_cached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waiting: list[int] = []

    class WatchedFlight(cache_module._Flight):
        def __init__(self) -> None:
            super().__init__()
            self.lock = _WatchedLock(self.lock, waiting)  # type: ignore[assignment]

    monkeypatch.setattr(cache_module, "_Flight", WatchedFlight)
    keyring = _keyring()
    keyring.gate = threading.Event()
    enc = Encryptor(keyring)
    envelope = enc.encrypt(b"v", CTX)
    keyring.fail_with = TimeoutError("kms timed out")
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            enc.decrypt(envelope, CTX)
        except KeyringError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    # The unwrap fails only once the three others wait for it.
    _until(lambda: len(waiting) == 3)
    keyring.gate.set()
    for thread in threads:
        thread.join()
    assert len(errors) == 4
    assert keyring.unwrap_calls == 1
    assert isinstance(errors[0].__cause__, TimeoutError)
    keyring.fail_with = None
    assert enc.decrypt(envelope, CTX) == b"v"


def test_a_wait_for_another_threads_unwrap_ends_after_unwrap_timeout() -> None:
    # A keyring that hangs must not hang every thread reading the same key.
    keyring = _keyring()
    keyring.gate = threading.Event()
    enc = Encryptor(keyring, unwrap_timeout=0.2)
    envelope = enc.encrypt(b"v", CTX)
    results: list[bytes] = []
    leader = threading.Thread(target=lambda: results.append(enc.decrypt(envelope, CTX)))
    leader.start()
    _until(lambda: keyring.unwrap_calls == 1)
    try:
        with pytest.raises(KeyringError, match="another thread's unwrap"):
            enc.decrypt(envelope, CTX)
        assert leader.is_alive()  # the leader itself is not interrupted
    finally:
        keyring.gate.set()
        leader.join()
    assert results == [b"v"]
    # The leader's key was cached when it came: no second keyring call.
    assert enc.decrypt(envelope, CTX) == b"v"
    assert keyring.unwrap_calls == 1


def test_only_data_key_ciphers_are_cached_never_plaintext() -> None:
    cache: KeyCache[Any] = KeyCache(10, 60)
    enc = Encryptor(LocalKeyring.generate())
    enc._cache = cache
    enc.decrypt(enc.encrypt(b"top secret value", CTX), CTX)
    (entry,) = cache._entries.values()
    assert type(entry[1]).__name__ == "AESGCM"
    assert b"top secret value" not in repr(cache._entries).encode()


def test_clear_cache_during_a_load_keeps_nothing() -> None:
    keyring = _keyring()
    keyring.gate = threading.Event()
    enc = Encryptor(keyring)
    envelope = enc.encrypt(b"v", CTX)
    reader = threading.Thread(target=enc.decrypt, args=(envelope, CTX))
    reader.start()
    _until(lambda: keyring.unwrap_calls == 1)  # the load is under way
    enc.clear_cache()
    keyring.gate.set()
    reader.join()
    assert enc.stats()["cached_keys"] == 0


def test_malformed_input_is_reported_as_such() -> None:
    enc = Encryptor(LocalKeyring.generate())
    with pytest.raises(MalformedEnvelopeError):
        enc.decrypt(b"", CTX)
    with pytest.raises(MalformedEnvelopeError):
        enc.decrypt(b"\x09" + bytes(100), CTX)


def test_third_party_keyring_errors_become_keyring_errors() -> None:
    keyring = _keyring()
    enc = Encryptor(keyring)
    envelope = enc.encrypt(b"v", CTX)
    keyring.fail_with = RuntimeError("boom")
    with pytest.raises(KeyringError, match="CountingKeyring failed to unwrap") as failure:
        enc.decrypt(envelope, CTX)
    assert isinstance(failure.value.__cause__, RuntimeError)


class _ShortKeyring(LocalKeyring):
    """A broken third-party keyring: hands out, and unwraps to, 16-byte data keys."""

    def generate_data_key(self, context: EncryptionContext) -> Any:
        full = super().generate_data_key(context)
        return type(full)(full.plaintext[:16], full.wrapped_keys)

    def unwrap_data_key(
        self, wrapped_keys: Sequence[WrappedKey], context: EncryptionContext
    ) -> bytes:
        return super().unwrap_data_key(wrapped_keys, context)[:16]


def test_a_data_key_of_the_wrong_size_is_a_keyring_failure() -> None:
    # AES-256 was promised: a keyring handing out anything else fails closed, as a
    # KeyringError (not a bare ValueError, nor a weaker AES-128 value).
    broken = _ShortKeyring({"k1": b"\x01" * 32})
    with pytest.raises(KeyringError, match="failed to generate a data key: ValueError"):
        Encryptor(broken).encrypt(b"value", CTX)
    envelope = Encryptor(LocalKeyring({"k1": b"\x01" * 32})).encrypt(b"value", CTX)
    with pytest.raises(KeyringError, match="failed to unwrap a data key: ValueError"):
        Encryptor(broken).decrypt(envelope, CTX)


def test_bytes_only_and_settings_that_cannot_work_are_refused() -> None:
    enc = Encryptor(LocalKeyring.generate())
    with pytest.raises(TypeError):
        enc.encrypt("text", CTX)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        enc.decrypt("text", CTX)  # type: ignore[arg-type]
    for settings in ({"max_workers": 0}, {"cache_size": -1}, {"unwrap_timeout": 0}):
        with pytest.raises(ConfigurationError):
            Encryptor(LocalKeyring.generate(), **settings)  # type: ignore[arg-type]


def test_unwrap_all_passes_over_what_is_not_an_envelope() -> None:
    # A result may hold NULLs, plaintext (allow_plaintext) and damaged values:
    # prefetching skips them, and each row's own decrypt reports its problem.
    keyring = _keyring()
    enc = Encryptor(keyring)
    good = [enc.encrypt(b"v%d" % i, CTX) for i in range(3)]
    enc.clear_cache()
    before = keyring.unwrap_calls
    mixed = [None, b"", b"plaintext", good[0][:20], *good, good[1]]
    assert enc.unwrap_all(mixed, CTX) == 3  # the three keys, the repeated one once
    assert keyring.unwrap_calls - before == 3
    assert [enc.decrypt(e, CTX) for e in good] == [b"v0", b"v1", b"v2"]
    assert keyring.unwrap_calls - before == 3  # all three came from the cache
    with pytest.raises(MalformedEnvelopeError):
        enc.decrypt(good[0][:20], CTX)


def test_unwrap_all_starts_while_the_envelopes_are_still_coming() -> None:
    # The SELECT hook hands over rows as they are fetched: the first keys must be
    # on their way before the last rows arrive, and all unwrapped when it returns.
    keyring = _keyring()
    enc = Encryptor(keyring, max_workers=4)
    envelopes = [enc.encrypt(b"v%d" % i, CTX) for i in range(6)]
    enc.clear_cache()
    started_early: list[bool] = []

    def arriving() -> Iterator[bytes]:
        yield from envelopes[:5]
        deadline = time.monotonic() + 30
        while keyring.unwrap_calls == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        started_early.append(keyring.unwrap_calls > 0)
        yield envelopes[5]

    assert enc.unwrap_all(arriving(), CTX) == 6
    assert started_early == [True]
    assert keyring.unwrap_calls == 6  # and every decrypt now comes from the cache
    assert [enc.decrypt(e, CTX) for e in envelopes] == [b"v%d" % i for i in range(6)]
    assert keyring.unwrap_calls == 6


def test_unwrap_all_stops_at_the_first_keyring_failure() -> None:
    keyring = _keyring(delay=0.01)
    enc = Encryptor(keyring, max_workers=2)
    envelopes = [enc.encrypt(b"v%d" % i, CTX) for i in range(30)]
    enc.clear_cache()
    keyring.fail_with = KeyringError("the key service is down")
    with pytest.raises(KeyringError, match="down"):
        enc.unwrap_all(envelopes, CTX)
    time.sleep(0.2)  # what is still queued would run now
    assert keyring.unwrap_calls <= 4  # a failing call per worker, not one per value


def test_construction_rejects_what_cannot_work() -> None:
    with pytest.raises(ConfigurationError):
        Encryptor(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Encryptor(LocalKeyring.generate(), cache_ttl=-1)


def test_configure_sets_and_removes_the_default() -> None:
    enc = Encryptor(LocalKeyring.generate())
    configure(enc)
    assert get_default_encryptor() is enc
    configure(None)
    with pytest.raises(ConfigurationError, match="no encryptor configured"):
        get_default_encryptor()
    with pytest.raises(ConfigurationError):
        configure("not an encryptor")  # type: ignore[arg-type]


def test_repr_shows_no_key_material() -> None:
    keyring = LocalKeyring({"k1": b"\xaa" * 32})
    enc = Encryptor(keyring)
    for text in (repr(enc), repr(keyring), str(enc.stats())):
        assert "aaaa" not in text.lower() and "\\xaa" not in text
    assert "k1" in repr(enc)


def test_has_key_for_tells_a_cached_key_from_one_the_keyring_must_give() -> None:
    keyring = _keyring()
    enc = Encryptor(keyring)
    envelope = enc.encrypt(b"v", CTX)
    assert not enc.has_key_for(envelope)
    enc.decrypt(envelope, CTX)
    assert enc.has_key_for(envelope)
    assert not enc.has_key_for(b"not an envelope")
    enc.clear_cache()
    assert not enc.has_key_for(envelope)


class _OneTenantDownKeyring(LocalKeyring):
    """Refuses tenant "a" once tenant "b"'s slower unwrap is under way; counts those running."""

    unwraps_in_memory = False

    def __init__(self) -> None:
        super().__init__({"k1": b"\x11" * 32})
        self.refusing = False
        self.running = 0
        self.b_started = threading.Event()
        self._lock = threading.Lock()

    def unwrap_data_key(
        self, wrapped_keys: Sequence[WrappedKey], context: EncryptionContext
    ) -> bytes:
        if self.refusing and context["t"] == "a":
            self.b_started.wait(30)
            raise KeyringError("tenant a's key service is down")
        with self._lock:
            self.running += 1
        self.b_started.set()
        try:
            if self.refusing:
                threading.Event().wait(0.3)  # a key service's round trip, still under way
            return super().unwrap_data_key(wrapped_keys, context)
        finally:
            with self._lock:
                self.running -= 1


def test_a_failed_unwrap_grouped_returns_only_when_its_other_unwraps_have_ended() -> None:
    # A read that fails must not leave its other requests running behind it: a
    # later read would join them, and get a failure the key service no longer gives.
    keyring = _OneTenantDownKeyring()
    enc = Encryptor(keyring, max_workers=4)
    a, b = {"t": "a"}, {"t": "b"}
    groups = [([enc.encrypt(b"a", a)], a), ([enc.encrypt(b"b", b)], b)]
    enc.clear_cache()
    keyring.b_started.clear()
    keyring.refusing = True
    with pytest.raises(KeyringError, match="down"):
        enc.unwrap_grouped(groups)
    assert keyring.b_started.is_set()
    assert keyring.running == 0


def test_cache_written_keys_serves_a_values_read_back_from_the_cache() -> None:
    keyring = _keyring()
    plain = Encryptor(keyring)
    plain.decrypt(plain.encrypt(b"v", CTX), CTX)
    assert keyring.unwrap_calls == 1  # by default a value read back is unwrapped
    enc = Encryptor(keyring, cache_written_keys=True)
    envelope = enc.encrypt(b"v", CTX)
    assert enc.decrypt(envelope, CTX) == b"v"
    assert keyring.unwrap_calls == 1  # served by the key cached when it was written
    with pytest.raises(DecryptionError):  # a cached key still checks the context
        enc.decrypt(envelope, {"table": "other", "column": "c"})
    tampered = envelope[:-1] + bytes([envelope[-1] ^ 1])
    with pytest.raises(DecryptionError):
        enc.decrypt(tampered, CTX)
    for settings in ({"cache_ttl": 0}, {"commitment_policy": "forbid_encrypt_allow_decrypt"}):
        other = Encryptor(keyring, cache_written_keys=True, **settings)  # type: ignore[arg-type]
        before = keyring.unwrap_calls
        assert other.decrypt(other.encrypt(b"v", CTX), CTX) == b"v"
        assert keyring.unwrap_calls == before + 1  # no cache, or v1: nothing cached on write
    with pytest.raises(ConfigurationError, match="cache_written_keys"):
        Encryptor(keyring, cache_written_keys="yes")  # type: ignore[arg-type]
