"""Blind index keys and hashes: HKDF-SHA256 per index, HMAC-SHA256 truncated to ``bits``.

Each index hashes with a key of its own, derived from the encryptor's index key
with the index's label (HKDF, RFC 5869, with SHA-256), so equal values in two
indexes hash differently and one index's hashes tell nothing about another's.
The hash is HMAC-SHA256 (RFC 2104) of the value's canonical encoding, truncated
to its first ``bits`` bits as NIST SP 800-107 Rev. 1 (section 5.3.4) allows for
HMAC. A fast keyed hash, not a password hash: the values are looked up on every
query, and the key, not slowness, is what keeps an attacker with the table from
testing guesses (CipherSweet's and the AWS Database Encryption SDK's beacons make
the same choice). Uses the standard library only.
"""

from __future__ import annotations

import hashlib
import hmac

from ..errors import ConfigurationError

__all__ = ["INDEX_KEY_SIZE", "blind_hash", "derive_index_key", "hkdf_sha256"]

INDEX_KEY_SIZE = 32
_INFO_PREFIX = b"sqla-envelope blind index v1\0"


def hkdf_sha256(key: bytes, info: bytes, length: int = 32, salt: bytes = b"") -> bytes:
    """HKDF with SHA-256 (RFC 5869): extract, then expand to ``length`` bytes."""
    prk = hmac.new(salt or bytes(32), key, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes((counter,)), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def derive_index_key(index_key: bytes, label: str) -> bytes:
    """The key of the index named ``label``, from the encryptor's index key."""
    if len(index_key) != INDEX_KEY_SIZE:
        raise ConfigurationError(f"an index key must be {INDEX_KEY_SIZE} bytes")
    return hkdf_sha256(index_key, _INFO_PREFIX + label.encode("utf-8"))


def blind_hash(key: bytes, encoded: bytes, bits: int) -> bytes:
    """HMAC-SHA256 of ``encoded`` under ``key``, its first ``bits`` bits."""
    return hmac.digest(key, encoded, "sha256")[: bits // 8]  # one-shot, in C
