"""How a KMS keyring stores one wrapped copy: a mode byte, then that mode's payload.

::

    direct          0x01 | KMS CiphertextBlob of the value's data key
    bounded reuse   0x02 | u16 n | KMS CiphertextBlob of a wrapping key (n bytes)
                         | AES-SIV(wrapping key, data key, aad = canonical context) (48 bytes)

The mode travels with each value, so a keyring in either mode reads both, and
switching modes needs no data migration.
"""

from __future__ import annotations

from typing import NamedTuple

from ..aead import LOCAL_WRAPPED_SIZE
from ..errors import MalformedEnvelopeError

__all__ = [
    "DIRECT",
    "REUSE",
    "KmsBlob",
    "direct_blob",
    "is_reuse",
    "parse_blob",
    "reuse_blob",
    "split_reuse",
]

DIRECT = 0x01
REUSE = 0x02


class KmsBlob(NamedTuple):
    mode: int
    kms_ciphertext: bytes
    local_wrap: bytes  # empty in direct mode


def direct_blob(kms_ciphertext: bytes) -> bytes:
    return bytes((DIRECT,)) + kms_ciphertext


def reuse_blob(kms_ciphertext: bytes, local_wrap: bytes) -> bytes:
    return bytes((REUSE,)) + len(kms_ciphertext).to_bytes(2, "big") + kms_ciphertext + local_wrap


def parse_blob(blob: bytes) -> KmsBlob:
    """Split a stored copy; MalformedEnvelopeError if it is not one a KMS keyring wrote."""
    if len(blob) > 1 and blob[0] == DIRECT:
        return KmsBlob(DIRECT, blob[1:], b"")
    if len(blob) > 3 and blob[0] == REUSE:
        end = 3 + int.from_bytes(blob[1:3], "big")
        if end > 3 and len(blob) == end + LOCAL_WRAPPED_SIZE:
            return KmsBlob(REUSE, blob[3:end], blob[end:])
    raise MalformedEnvelopeError("not a KMS-wrapped data key of a mode this library knows")


def is_reuse(blob: bytes) -> bool:
    return blob[:1] == b"\x02"


def split_reuse(blob: bytes) -> tuple[bytes, bytes]:
    """(everything up to the local wrap, the local wrap) of a bounded-reuse copy, unchecked.

    The per-value read path: the first part names the wrapping key (its KMS
    ciphertext), so it is what the wrapping-key cache is keyed by. It is checked
    with ``parse_blob`` once, when that wrapping key is first loaded; a later copy
    with the same first part is the same bytes, and a wrong-sized local wrap is
    refused by the unwrap itself.
    """
    return blob[:-LOCAL_WRAPPED_SIZE], blob[-LOCAL_WRAPPED_SIZE:]
