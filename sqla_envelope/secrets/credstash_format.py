"""credstash's storage format, read and written exactly (CREDSTASH.md, section 2).

A credstash item holds ``key`` (the base64 of a KMS CiphertextBlob wrapping a
64-byte data key), ``contents`` (the base64 of AES-256-CTR of the UTF-8 value,
counter block 1, no nonce), ``hmac`` (the hex of an HMAC of the ciphertext under
the data key's second half; a DynamoDB string, or binary since credstash 1.13.1)
and ``digest`` (the HMAC's hash; absent before 1.12, meaning SHA256). Here are the
steps after KMS has unwrapped the data key: verify, then decrypt; the reverse,
to write items stock credstash reads; and ``CredstashItem``, an item kept as
credstash wrote it, with the bytes a store row holds for it (``pack_item``).
Nothing here calls KMS or DynamoDB, and nothing knows SQLAlchemy.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..aead import aes_ctr
from ..errors import ConfigurationError, DecryptionError, MalformedEnvelopeError

__all__ = [
    "DIGESTS",
    "PAYLOAD_PREFIX",
    "CredstashItem",
    "item_of",
    "normalize_version",
    "open_contents",
    "pack_item",
    "padded_version",
    "seal_contents",
    "unpack_item",
]

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
# A store row holding a credstash item starts with this, then the item as JSON:
# never a native envelope, whose first byte is its format version (1 or 2).
PAYLOAD_PREFIX = b"credstash/1\n"
# Far above any real item (a KMS blob is under 1 KiB, a secret a few KiB), and
# checked before the JSON is parsed.
_MAX_PAYLOAD = 1024 * 1024


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


@dataclass(frozen=True)
class CredstashItem:
    """A credstash item's encrypted fields, kept exactly as credstash wrote them.

    ``key`` and ``contents`` are credstash's base64 text, ``hmac`` its hex text
    (``hmac_binary``: DynamoDB held it as B, as credstash 1.13.1 and later write
    it, rather than S), ``digest`` None when the item has none (before 1.12).
    ``kms_key_id`` is the KMS key its data key is under, as the importer named
    it: a read asks KMS to decrypt under that key and no other.
    """

    key: str
    contents: str
    hmac: str
    hmac_binary: bool
    digest: str | None
    kms_key_id: str

    def __repr__(self) -> str:  # the fields are ciphertext, but nothing to show
        return f"CredstashItem(kms_key_id={self.kms_key_id!r}, digest={self.digest!r})"

    @property
    def key_blob(self) -> bytes:
        """The KMS CiphertextBlob of the item's 64-byte data key."""
        return base64.b64decode(self.key)


def item_of(attributes: Mapping[str, Any], kms_key_id: str) -> CredstashItem:
    """The CredstashItem of a DynamoDB item (S as str, B as bytes or a boto3 Binary).

    Checked, but not decrypted: MalformedEnvelopeError for fields that are not
    base64 and hex, ConfigurationError for a digest credstash no longer checks;
    so what is kept can be read later, given KMS and the context.
    """
    raw_hmac = attributes.get("hmac")
    raw_hmac = getattr(raw_hmac, "value", raw_hmac)  # boto3's Binary
    binary = isinstance(raw_hmac, (bytes, bytearray))
    if binary:
        raw_hmac = bytes(raw_hmac).decode("ascii", "replace")  # type: ignore[arg-type]
    item = CredstashItem(
        key=attributes.get("key"),  # type: ignore[arg-type]
        contents=attributes.get("contents"),  # type: ignore[arg-type]
        hmac=raw_hmac,  # type: ignore[arg-type]
        hmac_binary=binary,
        digest=attributes.get("digest"),
        kms_key_id=kms_key_id,
    )
    _check(item)
    return item


def _check(item: CredstashItem) -> None:
    fields = (item.key, item.contents, item.hmac, item.kms_key_id)
    if not all(isinstance(f, str) for f in fields) or not isinstance(item.hmac_binary, bool):
        raise MalformedEnvelopeError("a credstash item without key, contents and hmac")
    if item.digest is not None and not isinstance(item.digest, str):
        raise MalformedEnvelopeError("a credstash item whose digest is not a string")
    try:
        blob = base64.b64decode(item.key, validate=True)
        base64.b64decode(item.contents, validate=True)
        binascii.unhexlify(item.hmac)
    except (binascii.Error, ValueError):
        raise MalformedEnvelopeError(
            "a credstash item whose key, contents or hmac is not valid"
        ) from None
    if not blob or not item.kms_key_id:
        raise MalformedEnvelopeError("a credstash item without a data key, or its KMS key")
    _digest(item.digest)


def pack_item(item: CredstashItem) -> bytes:
    """The bytes a store row holds for ``item``: PAYLOAD_PREFIX, then its fields as JSON."""
    _check(item)
    return PAYLOAD_PREFIX + json.dumps(asdict(item), sort_keys=True).encode("utf-8")


def unpack_item(payload: bytes) -> CredstashItem:
    """The CredstashItem in a store row's bytes; MalformedEnvelopeError for anything else."""
    if len(payload) > _MAX_PAYLOAD or not payload.startswith(PAYLOAD_PREFIX):
        raise MalformedEnvelopeError("the row does not hold a credstash item")
    try:
        fields = json.loads(payload[len(PAYLOAD_PREFIX) :].decode("utf-8"))
        item = CredstashItem(**fields)
    except (ValueError, TypeError):
        raise MalformedEnvelopeError("the row does not hold a valid credstash item") from None
    _check(item)
    return item
