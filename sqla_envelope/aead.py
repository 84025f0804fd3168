"""AES-256-GCM for values and for wrapping data keys under local master keys.

The only module that imports ``cryptography.hazmat``; everything above it deals
in bytes and opaque cipher objects.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigurationError, DecryptionError

__all__ = [
    "DATA_KEY_SIZE",
    "LOCAL_WRAPPED_SIZE",
    "MASTER_KEY_SIZE",
    "NONCE_SIZE",
    "DataKeyCipher",
    "LocalKeyWrapper",
    "data_key_cipher",
    "open_sealed",
    "random_bytes",
]

DATA_KEY_SIZE = 32
MASTER_KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
# nonce || wrapped data key || tag
LOCAL_WRAPPED_SIZE = NONCE_SIZE + DATA_KEY_SIZE + TAG_SIZE
_LOCAL_WRAP_INFO = b"sqla-envelope/local-wrap/v1"

random_bytes = os.urandom

# The cipher of one data key. Building it is the largest single cost of a
# decryption, which is why the key cache holds these objects, not raw key bytes.
# AESGCM objects never expose their key in repr.
DataKeyCipher = AESGCM
data_key_cipher = AESGCM

_VALUE_FAILED = (
    "value failed authentication: it was altered, copied from another column or "
    "table, or is read under a different encryption context"
)


def open_sealed(cipher: AESGCM, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Decrypt and verify ``sealed`` (ciphertext || tag); DecryptionError if it fails."""
    try:
        return cipher.decrypt(nonce, sealed, aad)
    except InvalidTag:
        raise DecryptionError(_VALUE_FAILED) from None


class LocalKeyWrapper:
    """Wraps data keys under one local master key with AES-256-GCM.

    The wrapping key is derived from the stored master key with HKDF-SHA256, so
    the stored key is never used directly. Each wrap draws a random 96-bit nonce:
    NIST SP 800-38D bounds that at 2^32 wraps per master key, far beyond yearly
    rotation at any realistic write rate (docs/format.md explains the choice over
    AES-SIV, which is 12 bytes smaller but twice as slow to unwrap).
    """

    __slots__ = ("_aead",)

    def __init__(self, master_key: bytes) -> None:
        if not isinstance(master_key, bytes) or len(master_key) != MASTER_KEY_SIZE:
            raise ConfigurationError(f"a local master key must be exactly {MASTER_KEY_SIZE} bytes")
        wrapping_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=_LOCAL_WRAP_INFO
        ).derive(master_key)
        self._aead = AESGCM(wrapping_key)

    def wrap(self, data_key: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
        """Wrap under a fresh random nonce; pass ``nonce`` only if it is fresh and random."""
        if nonce is None:
            nonce = random_bytes(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, data_key, aad)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        if len(wrapped) != LOCAL_WRAPPED_SIZE:
            raise DecryptionError("wrapped data key has the wrong size for a local keyring")
        try:
            return self._aead.decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], aad)
        except InvalidTag:
            raise DecryptionError(
                "data key failed to unwrap: wrong master key, altered value, or a "
                "different encryption context"
            ) from None

    def __repr__(self) -> str:
        return "LocalKeyWrapper(<key hidden>)"
