"""credstash's storage format, read and written exactly (CREDSTASH.md, section 2).

A credstash item holds ``key`` (the base64 of a KMS CiphertextBlob wrapping a
64-byte data key), ``contents`` (the base64 of AES-256-CTR of the UTF-8 value,
counter block 1, no nonce), ``hmac`` (the hex of an HMAC of the ciphertext under
the data key's second half; a DynamoDB string, or binary since credstash 1.13.1)
and ``digest`` (the HMAC's hash; absent before 1.12, meaning SHA256). Here are the
steps after KMS has unwrapped the data key: verify, then decrypt; and the
reverse, to write items stock credstash reads. Nothing here calls KMS or
DynamoDB, and nothing knows SQLAlchemy.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

from ..aead import aes_ctr
from ..errors import ConfigurationError, DecryptionError, MalformedEnvelopeError

__all__ = ["DIGESTS", "normalize_version", "open_contents", "padded_version", "seal_contents"]

# credstash's -d names -> hashlib names (credstash >= 1.15.0: _hash_classes).
DIGESTS = {
    "SHA": "sha1",
    "SHA224": "sha224",
    "SHA256": "sha256",
    "SHA384": "sha384",
    "SHA512": "sha512",
    "MD5": "md5",
}
# Written by credstash 1.12 to 1.14, gone from cryptography since 2.1.
RETIRED_DIGESTS = ("MD2", "MD4", "RIPEMD", "WHIRLPOOL")
COUNTER_BLOCK = (1).to_bytes(16, "big")  # LEGACY_NONCE: PyCrypto's Counter.new(128) start
PAD_LENGTH = 19


def _digest(name: str | None) -> str:
    name = name or "SHA256"  # items from before 1.12 have none
    if name in DIGESTS:
        return DIGESTS[name]
    if name in RETIRED_DIGESTS:
        raise ConfigurationError(
            f"this credstash item's HMAC uses {name}, which credstash itself can no longer "
            "check; re-put it with credstash_migrate_digests.py, then import it"
        )
    raise MalformedEnvelopeError(f"unknown credstash digest {name!r}")


def _halves(data_key: bytes) -> tuple[bytes, bytes]:
    """The AES key and the HMAC key: split at len // 2, as credstash's _halve_key does."""
    half = len(data_key) // 2
    return data_key[:half], data_key[half:]


def open_contents(data_key: bytes, contents: str, stored_hmac: Any, digest: str | None) -> bytes:
    """The plaintext bytes of a credstash item, once its HMAC checks (in constant time).

    ``stored_hmac`` is the hex text as DynamoDB returns it: str, bytes or a boto3
    Binary. DecryptionError when it does not match; MalformedEnvelopeError for
    contents or an HMAC that are not base64 and hex.
    """
    raw_hmac = getattr(stored_hmac, "value", stored_hmac)  # boto3's Binary
    if isinstance(raw_hmac, (bytes, bytearray)):
        raw_hmac = bytes(raw_hmac).decode("ascii", "replace")
    try:
        expected = binascii.unhexlify(raw_hmac)
        ciphertext = base64.b64decode(contents, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise MalformedEnvelopeError(
            "a credstash item whose contents or hmac is not valid"
        ) from None
    aes_key, hmac_key = _halves(data_key)
    computed = hmac.new(hmac_key, ciphertext, _digest(digest)).digest()
    if not hmac.compare_digest(computed, expected):
        raise DecryptionError("credstash item failed its HMAC check: altered, or another data key")
    return aes_ctr(aes_key, COUNTER_BLOCK, ciphertext)


def seal_contents(data_key: bytes, plaintext: bytes, digest: str = "SHA256") -> tuple[str, str]:
    """(``contents``, ``hmac`` hex) of a credstash item for ``plaintext`` under ``data_key``."""
    aes_key, hmac_key = _halves(data_key)
    ciphertext = aes_ctr(aes_key, COUNTER_BLOCK, plaintext)
    tag = hmac.new(hmac_key, ciphertext, _digest(digest)).hexdigest()
    return base64.b64encode(ciphertext).decode("ascii"), tag


def normalize_version(version: str) -> int:
    """credstash's version string (padded, or legacy unpadded) as our version number."""
    if not version.isdigit() or int(version) < 1:
        raise MalformedEnvelopeError(
            f"credstash version {version!r} is not a number: import it with an explicit version"
        )
    return int(version)


def padded_version(version: int) -> str:
    """Our version as credstash writes it: 19 characters, zero-padded (paddedInt)."""
    return str(version).zfill(PAD_LENGTH)
