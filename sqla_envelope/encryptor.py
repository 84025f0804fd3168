"""Encryptor, the envelope engine, and the process-wide default set by configure()."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from .aead import NONCE_SIZE_BYTES, DataKeyCipher, random_bytes
from .cache import KeyCache
from .context import EncryptionContext
from .envelope import FORMAT_VERSION, Envelope, pack, unpack
from .errors import ConfigurationError, EnvelopeError, KeyringError
from .keyrings.base import Keyring

__all__ = ["Encryptor", "configure", "get_default_encryptor"]

_VERSION_PREFIX = bytes((FORMAT_VERSION,))


def _payload_aad(version: int, context: EncryptionContext) -> bytes:
    # The version byte and the canonical context; not the wrapped keys, so that
    # rewrap can replace them without touching the ciphertext (each wrapped key
    # is authenticated by its own wrap, and a foreign one yields a key that fails
    # the tag below).
    return (_VERSION_PREFIX if version == FORMAT_VERSION else bytes((version,))) + context.canonical


class Encryptor:
    """Encrypts each value under its own data key; decrypts through a TTL key cache.

    ``cache_size`` unwrapped keys are kept for at most ``cache_ttl`` seconds after
    they are unwrapped; either set to 0 disables caching. Only data keys are
    cached, never plaintext values. Thread-safe: one Encryptor serves a whole
    application.
    """

    def __init__(
        self,
        keyring: Keyring,
        *,
        cache_ttl: float = 300.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(keyring, Keyring):
            raise ConfigurationError(
                f"{type(keyring).__name__} does not implement the Keyring protocol"
            )
        if cache_ttl < 0 or cache_size < 0:
            raise ConfigurationError("cache_ttl and cache_size must not be negative")
        self.keyring = keyring
        self._cache: KeyCache[DataKeyCipher] = KeyCache(cache_size, cache_ttl, clock=clock)
        self._counter_lock = threading.Lock()
        self._wraps = 0
        self._unwraps = 0

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
        return self.open(bytes(envelope), EncryptionContext.of(context))

    def stats(self) -> dict[str, int]:
        """Keyring calls and cache effectiveness since this Encryptor was built."""
        return {
            "wraps": self._wraps,
            "unwraps": self._unwraps,
            "cache_hits": self._cache.hits,
            "cache_misses": self._cache.misses,
            "cached_keys": len(self._cache),
        }

    def clear_cache(self) -> None:
        """Forget every unwrapped data key now (after a key compromise, in tests)."""
        self._cache.clear()

    # -- the hot path, with a pre-built context -------------------------------------

    def seal(self, plaintext: bytes, context: EncryptionContext) -> bytes:
        """``encrypt`` for a context already in canonical form (what columns use)."""
        data_key = self._call_keyring(
            "generate a data key", self.keyring.generate_data_key, context
        )
        with self._counter_lock:
            self._wraps += 1
        nonce = random_bytes(NONCE_SIZE_BYTES)
        sealed = DataKeyCipher(data_key.plaintext).seal(
            nonce, plaintext, _payload_aad(FORMAT_VERSION, context)
        )
        return pack(data_key.wrapped_keys, nonce, sealed)

    def open(self, envelope: bytes, context: EncryptionContext) -> bytes:
        """``decrypt`` for a context already in canonical form (what columns use)."""
        parsed = unpack(envelope)
        cipher = self.cipher_for(parsed, context)
        return cipher.open(parsed.nonce, parsed.sealed, _payload_aad(parsed.version, context))

    def cipher_for(self, parsed: Envelope, context: EncryptionContext) -> DataKeyCipher:
        """The data key cipher of an envelope, from the cache or one keyring call."""
        wrapped_keys = parsed.wrapped_keys

        def unwrap() -> DataKeyCipher:
            data_key = self._call_keyring(
                "unwrap a data key", self.keyring.unwrap_data_key, wrapped_keys, context
            )
            with self._counter_lock:
                self._unwraps += 1
            return DataKeyCipher(data_key)

        # Keyed by every wrapped copy with its key reference: a changed byte there
        # misses the cache and goes back to the keyring, which rejects it.
        return self._cache.get_or_load(wrapped_keys, unwrap)

    def _call_keyring(self, action: str, method: Callable[..., object], *args: object):  # type: ignore[no-untyped-def]
        try:
            return method(*args)
        except EnvelopeError:
            raise
        except Exception as exc:
            # A third-party keyring that raises something of its own still fails
            # closed, as a KeyringError that names the keyring and chains the cause.
            raise KeyringError(
                f"{type(self.keyring).__name__} failed to {action}: {type(exc).__name__}"
            ) from exc


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
