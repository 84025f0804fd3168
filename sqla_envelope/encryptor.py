"""Encryptor, the envelope engine, and the process-wide default set by configure()."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from typing import Any

from .aead import NONCE_SIZE, data_key_cipher, open_sealed, random_bytes
from .cache import KeyCache, peek
from .context import EncryptionContext
from .envelope import FORMAT_VERSION, header_size, pack, unpack, wrapped_keys_of
from .errors import ConfigurationError, EnvelopeError, KeyringError
from .keyrings.base import Keyring

__all__ = ["Encryptor", "configure", "get_default_encryptor"]

# Associated data of a v1 value: the version byte, then the canonical context.
# Not the wrapped keys, so that rewrap can replace them without touching the
# ciphertext: each wrapped key is authenticated by its own wrap, and a foreign
# one yields a data key that fails this tag.
_V1_AAD_PREFIX = bytes((FORMAT_VERSION,))


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
        self._cache: KeyCache[Any] = KeyCache(cache_size, cache_ttl, clock=clock)
        # Keyring calls, counted with itertools.count: next() is atomic under the
        # GIL and costs a tenth of a lock on the per-value path.
        self._wraps = itertools.count()
        self._unwraps = itertools.count()

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
            "wraps": peek(self._wraps),
            "unwraps": peek(self._unwraps),
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
        next(self._wraps)
        try:
            data_key = self.keyring.generate_data_key(context)
        except EnvelopeError:
            raise
        except Exception as exc:
            raise self._keyring_failure("generate a data key", exc).chain(exc) from exc
        nonce = random_bytes(NONCE_SIZE)
        sealed = data_key_cipher(data_key.plaintext).encrypt(
            nonce, plaintext, _V1_AAD_PREFIX + context.canonical
        )
        return pack(data_key.wrapped_keys, nonce, sealed)

    def open(self, envelope: bytes, context: EncryptionContext) -> bytes:
        """``decrypt`` for a context already in canonical form (what columns use)."""
        end = header_size(envelope) or unpack(envelope).header_size
        # Keyed by the whole wrapped-key section, key references included: a
        # changed byte there misses the cache and goes back to the keyring.
        key = envelope[1:end]
        cache = self._cache
        cipher = cache.get(key) or cache.load(key, self._unwrap, envelope, end, context)
        return open_sealed(
            cipher,
            envelope[end : end + NONCE_SIZE],
            envelope[end + NONCE_SIZE :],
            _V1_AAD_PREFIX + context.canonical,
        )

    def _unwrap(self, envelope: bytes, end: int, context: EncryptionContext) -> object:
        wrapped_keys = wrapped_keys_of(envelope, end)
        next(self._unwraps)
        try:
            data_key = self.keyring.unwrap_data_key(wrapped_keys, context)
        except EnvelopeError:
            raise
        except Exception as exc:
            raise self._keyring_failure("unwrap a data key", exc).chain(exc) from exc
        return data_key_cipher(data_key)

    def _keyring_failure(self, action: str, exc: Exception) -> KeyringError:
        # A third-party keyring that raises something of its own still fails
        # closed, as a KeyringError that names the keyring and chains the cause.
        return KeyringError(
            f"{type(self.keyring).__name__} failed to {action}: {type(exc).__name__}"
        )


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
