"""AES-256-GCM for values and AES-SIV for local key wrapping.

The only module that imports ``cryptography.hazmat``; everything above it deals
in bytes and opaque cipher objects.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigurationError, DecryptionError

__all__ = [
    "DATA_KEY_SIZE",
    "LOCAL_WRAPPED_SIZE",
    "MASTER_KEY_SIZE",
    "NONCE_SIZE_BYTES",
    "DataKeyCipher",
    "LocalKeyWrapper",
    "random_bytes",
]

DATA_KEY_SIZE = 32
MASTER_KEY_SIZE = 32
# AES-SIV output: a 16-byte synthetic IV followed by the 32-byte data key.
LOCAL_WRAPPED_SIZE = 16 + DATA_KEY_SIZE
NONCE_SIZE_BYTES = 12
_LOCAL_WRAP_INFO = b"sqla-envelope/local-wrap/v1"

random_bytes = os.urandom


class DataKeyCipher:
    """AES-256-GCM under one data key, built once and reused for every use of that key.

    Building the AESGCM object is the largest single cost of a decryption, which
    is why the key cache holds these objects rather than raw key bytes.
    """

    __slots__ = ("_aead",)

    def __init__(self, data_key: bytes) -> None:
        if len(data_key) != DATA_KEY_SIZE:
            raise ConfigurationError(f"a data key must be {DATA_KEY_SIZE} bytes")
        self._aead = AESGCM(data_key)

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise DecryptionError(
                "value failed authentication: it was altered, copied from another "
                "column or table, or is read under a different encryption context"
            ) from None

    def __repr__(self) -> str:
        return "DataKeyCipher(<key hidden>)"


class LocalKeyWrapper:
    """Wraps data keys under one local master key with AES-SIV (RFC 5297).

    AES-SIV is a deterministic, nonce-free key-wrap mode: 48 bytes per data key
    (RFC 3394 would be 40, but costs ten times more here) and no birthday bound on
    random nonces, however many rows a master key wraps. The SIV key is derived
    from the 32-byte master key with HKDF-SHA256 so that the stored master key is
    never used directly.
    """

    __slots__ = ("_siv",)

    def __init__(self, master_key: bytes) -> None:
        if not isinstance(master_key, bytes) or len(master_key) != MASTER_KEY_SIZE:
            raise ConfigurationError(f"a local master key must be exactly {MASTER_KEY_SIZE} bytes")
        siv_key = HKDF(
            algorithm=hashes.SHA256(), length=64, salt=None, info=_LOCAL_WRAP_INFO
        ).derive(master_key)
        self._siv = AESSIV(siv_key)

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        return self._siv.encrypt(data_key, [aad])

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        if len(wrapped) != LOCAL_WRAPPED_SIZE:
            raise DecryptionError("wrapped data key has the wrong size for a local keyring")
        try:
            return self._siv.decrypt(wrapped, [aad])
        except InvalidTag:
            raise DecryptionError(
                "data key failed to unwrap: wrong master key, altered value, or a "
                "different encryption context"
            ) from None

    def __repr__(self) -> str:
        return "LocalKeyWrapper(<key hidden>)"
