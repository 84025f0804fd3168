"""AES-256-GCM for values, AES-SIV for wrapping data keys under local master keys.

Also the key commitment of format v2: one key derivation from each data key
gives the value's AES-GCM key and a commitment to the data key. The only module
that imports ``cryptography.hazmat``; everything above it deals in bytes and
opaque cipher objects.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigurationError, DecryptionError

__all__ = [
    "COMMITMENT_SIZE",
    "DATA_KEY_SIZE",
    "LOCAL_WRAPPED_SIZE",
    "MASTER_KEY_SIZE",
    "NONCE_SIZE",
    "LocalKeyWrapper",
    "aes_ctr",
    "committed_cipher",
    "data_key_cipher",
    "new_committed_cipher",
    "open_sealed",
    "random_bytes",
]

DATA_KEY_SIZE = 32
MASTER_KEY_SIZE = 32
NONCE_SIZE = 12
# AES-SIV output: the 16-byte synthetic IV, then the encrypted data key.
LOCAL_WRAPPED_SIZE = 16 + DATA_KEY_SIZE
_LOCAL_WRAP_INFO = b"sqla-envelope/local-wrap/v1"
COMMITMENT_SIZE = 32
# NIST SP 800-56C Rev. 2, section 4.1, one-step key derivation with H = SHA-512:
# counter (32-bit, 1) || Z (the data key) || FixedInfo. One SHA-512 block gives
# 64 bytes: the AES-256-GCM key, then the key commitment.
_KDF_COUNTER = (1).to_bytes(4, "big")
_KDF_FIXED_INFO = b"sqla-envelope v2 key and commitment"
_sha512 = hashlib.sha512
_compare = hmac.compare_digest

random_bytes = os.urandom


# The cipher of one data key. Building it is the largest single cost of a
# decryption, which is why the key cache holds these objects, not raw key bytes.
# AESGCM objects never expose their key in repr.
def data_key_cipher(data_key: bytes) -> AESGCM:
    """The AES-256-GCM cipher of a data key; ValueError for a key of another size.

    AESGCM itself would accept a 16-byte key: a keyring handing one out must fail,
    not downgrade values to AES-128.
    """
    if len(data_key) != DATA_KEY_SIZE:
        raise ValueError(f"a data key of {len(data_key)} bytes, not {DATA_KEY_SIZE}")
    return AESGCM(data_key)


def _derive(data_key: bytes) -> bytes:
    if len(data_key) != DATA_KEY_SIZE:
        raise ValueError(f"a data key of {len(data_key)} bytes, not {DATA_KEY_SIZE}")
    return hashlib.sha512(_KDF_COUNTER + data_key + _KDF_FIXED_INFO).digest()


def new_committed_cipher(data_key: bytes) -> tuple[AESGCM, bytes]:
    """The v2 cipher of a new data key and the commitment to store beside it.

    Key commitment (as in the AWS Encryption SDK's committing suites): the
    stored commitment is a derivation of the data key, so a value opens under
    one data key only, whichever wrapped copy a reader unwraps. Without it, one
    AES-GCM ciphertext can be crafted to open under two keys to two plaintexts.
    ValueError for a key of the wrong size.
    """
    okm = _derive(data_key)
    return AESGCM(okm[:32]), okm[32:]


_NOT_COMMITTED = (
    "data key does not match the value's key commitment: the value was altered, or "
    "a wrapped copy of another data key was put in it"
)


def committed_cipher(data_key: bytes, commitment: bytes) -> AESGCM:
    """The v2 cipher of an unwrapped data key, once it matches the stored commitment.

    Compared in constant time. DecryptionError when it does not match;
    ValueError for a key of the wrong size.
    """
    # _derive inlined: this runs once per value on a cold read (bench/micro.py).
    if len(data_key) != DATA_KEY_SIZE:
        raise ValueError(f"a data key of {len(data_key)} bytes, not {DATA_KEY_SIZE}")
    okm = _sha512(_KDF_COUNTER + data_key + _KDF_FIXED_INFO).digest()
    if not _compare(okm[32:], commitment):
        raise DecryptionError(_NOT_COMMITTED)
    return AESGCM(okm[:32])


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
    """Wraps data keys under one local master key with AES-SIV (RFC 5297).

    AES-SIV is the deterministic authenticated encryption RFC 5297 designed for
    key wrapping: no nonce, so no birthday bound on how many data keys one master
    key may wrap (AES-GCM with random 96-bit nonces must stop at 2^32 wraps, which
    a busy table reaches in weeks), and 48 bytes per wrapped key. It costs about
    0.4 µs more per unwrap than AES-GCM here. RFC 3394 key wrap would be smaller
    but takes no associated data, so it could not bind the key to its context.
    The 512-bit SIV key is derived from the 32-byte master key with HKDF-SHA256,
    so the stored key is never used directly; ``info`` separates the uses of one
    key (a tenant's branch key wraps under its own label, tenants/branch.py).
    """

    __slots__ = ("_siv",)

    def __init__(self, master_key: bytes, info: bytes = _LOCAL_WRAP_INFO) -> None:
        if not isinstance(master_key, bytes) or len(master_key) != MASTER_KEY_SIZE:
            raise ConfigurationError(f"a local master key must be exactly {MASTER_KEY_SIZE} bytes")
        siv_key = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=info).derive(
            master_key
        )
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


def aes_ctr(key: bytes, counter_block: bytes, data: bytes) -> bytes:
    """AES-CTR of ``data`` from the 16-byte ``counter_block``: encryption and decryption alike.

    Unauthenticated: only for reading and writing credstash's format
    (secrets/credstash_format.py), whose HMAC the caller checks first.
    """
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter_block)).encryptor()
    return encryptor.update(data) + encryptor.finalize()
