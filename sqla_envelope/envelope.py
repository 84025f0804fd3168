"""The versioned envelope byte format (v1 and v2): pack and unpack, no crypto, no I/O.

Layout, byte by byte (docs/format.md is the specification)::

    version        1 byte   0x02 (0x01 in values written before key commitment)
    key_count      1 byte   n, 1..255 wrapped copies of the one data key
    n times:
      ref_len      1 byte   r, 1..255
      key_ref      r bytes  ASCII key reference (a local key id, a KMS key ARN)
      wrapped_len  2 bytes  w, big-endian, 1..65535
      wrapped      w bytes  the data key wrapped by the keyring named by key_ref
    commitment     32 bytes v2 only: commits the value to its one data key
    nonce          12 bytes AES-GCM nonce
    ciphertext     c bytes  same length as the encoded plaintext
    tag            16 bytes AES-GCM tag

Everything before the nonce is the *header*. In v2 the header is authenticated
as the value's associated data, so no byte of it can change without the value
failing to open. The version and the first key reference sit at fixed offsets (0
and 3) in both versions, so plain SQL can find the rows under a given key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from .errors import MalformedEnvelopeError

__all__ = [
    "COMMITMENT_SIZE",
    "FORMAT_VERSION",
    "NONCE_SIZE",
    "TAG_SIZE",
    "V1",
    "V2",
    "Envelope",
    "WrappedKey",
    "copies_end",
    "envelope_size",
    "header_end",
    "header_size",
    "pack",
    "pack_header",
    "pack_v1",
    "unpack",
    "wrapped_keys_of",
]

V1 = 1
V2 = 2
FORMAT_VERSION = V2  # what is written; V1 is read only
NONCE_SIZE = 12
TAG_SIZE = 16
COMMITMENT_SIZE = 32
_MAX_KEYS = 255
_MAX_REF = 255
_MAX_WRAPPED = 0xFFFF
# Bytes after the wrapped copies, by version: v2 has the commitment there.
_TRAILER = {V1: 0, V2: COMMITMENT_SIZE}
# version + count + one key (ref_len, 1-byte ref, wrapped_len, 1-byte wrapped) + nonce + tag
MIN_ENVELOPE_SIZE = 1 + 1 + (1 + 1 + 2 + 1) + NONCE_SIZE + TAG_SIZE
MIN_V2_SIZE = MIN_ENVELOPE_SIZE + COMMITMENT_SIZE


class WrappedKey(NamedTuple):
    """A data key wrapped by one master key, with the reference that names that key."""

    key_ref: str
    blob: bytes

    def __repr__(self) -> str:
        # The blob is ciphertext of key material: show only its size.
        return f"WrappedKey(key_ref={self.key_ref!r}, blob=<{len(self.blob)} bytes>)"


class Envelope(NamedTuple):
    """One parsed envelope. ``sealed`` is the AES-GCM ciphertext followed by its tag.

    ``header_size`` is the offset of the nonce: bytes ``0:header_size`` are the
    header, which identifies the data key (and, in v2, is authenticated with
    the value). ``commitment`` is empty in v1.
    """

    version: int
    wrapped_keys: tuple[WrappedKey, ...]
    nonce: bytes
    sealed: bytes
    header_size: int
    commitment: bytes = b""

    @property
    def plaintext_size(self) -> int:
        return len(self.sealed) - TAG_SIZE

    def __repr__(self) -> str:
        refs = [key.key_ref for key in self.wrapped_keys]
        return (
            f"Envelope(version={self.version}, key_refs={refs!r}, "
            f"plaintext_size={self.plaintext_size})"
        )


# NamedTuple's generated __new__ is a Python function; tuple.__new__ builds the
# same object for a third of the cost on the read hot path.
_new_tuple = tuple.__new__


def _malformed(reason: str) -> MalformedEnvelopeError:
    return MalformedEnvelopeError(f"not a sqla-envelope value: {reason}")


def _copies(wrapped_keys: Sequence[WrappedKey]) -> bytes:
    """Key count and every wrapped copy; ValueError on fields the format cannot hold."""
    if not 1 <= len(wrapped_keys) <= _MAX_KEYS:
        raise ValueError(f"an envelope holds 1 to {_MAX_KEYS} wrapped keys")
    parts = [bytes((len(wrapped_keys),))]
    for key_ref, blob in wrapped_keys:
        ref = key_ref.encode("ascii")
        if not 1 <= len(ref) <= _MAX_REF or not 1 <= len(blob) <= _MAX_WRAPPED:
            raise ValueError("key reference or wrapped key of unsupported size")
        parts.append(bytes((len(ref),)) + ref + len(blob).to_bytes(2, "big") + blob)
    return b"".join(parts)


def pack_header(wrapped_keys: Sequence[WrappedKey], commitment: bytes) -> bytes:
    """The v2 header: version, key count, every wrapped key and the key commitment.

    It is also the first part of the value's associated data, so the payload
    can only be sealed once it is known. Raises ValueError on fields the format
    cannot hold.
    """
    if len(commitment) != COMMITMENT_SIZE:
        raise ValueError(f"a key commitment is {COMMITMENT_SIZE} bytes")
    if len(wrapped_keys) == 1:  # the common case, on every insert
        key_ref, blob = wrapped_keys[0]
        ref = key_ref.encode("ascii")
        if 1 <= len(ref) <= _MAX_REF and 1 <= len(blob) <= _MAX_WRAPPED:
            return b"".join(
                (bytes((V2, 1, len(ref))), ref, len(blob).to_bytes(2, "big"), blob, commitment)
            )
    return b"".join((bytes((V2,)), _copies(wrapped_keys), commitment))


def pack(
    wrapped_keys: Sequence[WrappedKey], commitment: bytes, nonce: bytes, sealed: bytes
) -> bytes:
    """Serialize a v2 envelope whose payload was sealed with its header as associated data."""
    if len(nonce) != NONCE_SIZE or len(sealed) < TAG_SIZE:
        raise ValueError("bad nonce or ciphertext size")
    return b"".join((pack_header(wrapped_keys, commitment), nonce, sealed))


def pack_v1(wrapped_keys: Sequence[WrappedKey], nonce: bytes, sealed: bytes) -> bytes:
    """Serialize a v1 envelope: what values written before v2 hold (tests, vectors)."""
    if len(nonce) != NONCE_SIZE or len(sealed) < TAG_SIZE:
        raise ValueError("bad nonce or ciphertext size")
    return b"".join((bytes((V1,)), _copies(wrapped_keys), nonce, sealed))


def unpack(data: bytes) -> Envelope:
    """Parse an envelope, checking the version first and every length before slicing.

    Raises MalformedEnvelopeError for anything that is not a complete envelope
    of a version this library knows.
    """
    size = len(data)
    if size == 0:
        raise _malformed("empty value")
    version = data[0]
    trailer = _TRAILER.get(version)
    if trailer is None:
        raise _malformed(f"unknown format version {version}")
    if size < MIN_ENVELOPE_SIZE + trailer:
        raise _malformed("truncated")
    count = data[1]
    if count == 0:
        raise _malformed("no wrapped data key")
    pos = 2
    keys = []
    for _ in range(count):
        if pos + 1 > size:
            raise _malformed("truncated")
        ref_len = data[pos]
        pos += 1
        if ref_len == 0 or pos + ref_len + 2 > size:
            raise _malformed("truncated key reference")
        ref = data[pos : pos + ref_len]
        pos += ref_len
        wrapped_len = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        if wrapped_len == 0 or pos + wrapped_len > size:
            raise _malformed("truncated wrapped key")
        try:
            key_ref = ref.decode("ascii")
        except UnicodeDecodeError:
            raise _malformed("key reference is not ASCII") from None
        keys.append(WrappedKey(key_ref, bytes(data[pos : pos + wrapped_len])))
        pos += wrapped_len
    if size - pos < trailer + NONCE_SIZE + TAG_SIZE:
        raise _malformed("truncated ciphertext")
    end = pos + trailer
    return Envelope(
        version,
        tuple(keys),
        bytes(data[end : end + NONCE_SIZE]),
        bytes(data[end + NONCE_SIZE :]),
        end,
        bytes(data[pos:end]),
    )


def header_size(data: bytes) -> int:
    """Offset of the nonce in a well-formed envelope with one wrapped key, else 0.

    The read hot path: a few index operations instead of a full ``unpack``. A 0
    sends the caller to ``unpack``, which handles several keys and says what is
    wrong with a malformed value.
    """
    size = len(data)
    if size < MIN_ENVELOPE_SIZE or data[1] != 1:
        return 0
    version = data[0]
    if version == V2:
        trailer = COMMITMENT_SIZE
    elif version == V1:
        trailer = 0
    else:
        return 0
    pos = 3 + data[2]
    if pos == 3 or pos + 2 > size:
        return 0
    wrapped_len = (data[pos] << 8) | data[pos + 1]
    end = pos + 2 + wrapped_len + trailer
    if wrapped_len == 0 or end + NONCE_SIZE + TAG_SIZE > size:
        return 0
    return end


def header_end(data: bytes) -> int:
    """Offset of the nonce in any envelope: ``header_size``'s fast path, else ``unpack``.

    Envelopes with several wrapped keys (multi-region KMS) have a fast path of
    their own. Raises MalformedEnvelopeError for a value that is not an envelope.
    """
    return header_size(data) or _several_keys_header_size(data) or unpack(data).header_size


def _several_keys_header_size(data: bytes) -> int:
    """``header_size`` for an envelope with 2 to 255 wrapped keys, else 0 (for ``unpack``).

    The same length checks as ``unpack``, without building anything; key
    references are checked for ASCII by ``wrapped_keys_of``.
    """
    size = len(data)
    if size < MIN_ENVELOPE_SIZE or data[1] < 2:
        return 0
    trailer = _TRAILER.get(data[0])
    if trailer is None:
        return 0
    pos = 2
    for _ in range(data[1]):
        if pos >= size or data[pos] == 0:
            return 0
        pos += 1 + data[pos]
        if pos + 2 > size:
            return 0
        wrapped_len = (data[pos] << 8) | data[pos + 1]
        pos += 2 + wrapped_len
        if wrapped_len == 0 or pos > size:
            return 0
    pos += trailer
    return pos if size - pos >= NONCE_SIZE + TAG_SIZE else 0


def copies_end(data: bytes, end: int) -> int:
    """Where the wrapped copies stop in an envelope whose header size is ``end``."""
    return end - COMMITMENT_SIZE if data[0] == V2 else end


def envelope_size(
    plaintext_size: int, wrapped_keys: Sequence[tuple[int, int]], version: int = FORMAT_VERSION
) -> int:
    """Exact stored size for a plaintext of ``plaintext_size`` bytes.

    ``wrapped_keys`` lists ``(len(key_ref), len(wrapped))`` per copy; a LocalKeyring
    wraps in 48 bytes, so one local key adds ``113 + len(key_id)`` bytes in v2
    (``81 + len(key_id)`` in v1).
    """
    header = 2 + sum(1 + ref + 2 + wrapped for ref, wrapped in wrapped_keys) + _TRAILER[version]
    return header + NONCE_SIZE + plaintext_size + TAG_SIZE


def wrapped_keys_of(data: bytes, end: int) -> tuple[WrappedKey, ...]:
    """The wrapped keys of an envelope whose ``header_size`` is ``end``.

    One slice per field when ``header_size`` vouched for a single key; ``unpack``
    otherwise. Raises MalformedEnvelopeError for a key reference that is not ASCII.
    """
    if data[1] != 1:
        return _wrapped_keys_before(data, copies_end(data, end))
    ref_end = 3 + data[2]
    try:
        key_ref = data[3:ref_end].decode("ascii")
    except UnicodeDecodeError:
        raise _malformed("key reference is not ASCII") from None
    if data[0] == V2:
        end -= COMMITMENT_SIZE
    return (_new_tuple(WrappedKey, (key_ref, data[ref_end + 2 : end])),)


def _wrapped_keys_before(data: bytes, end: int) -> tuple[WrappedKey, ...]:
    """The wrapped keys of a several-key envelope whose copies ``header_end`` vouched for.

    Walks the lengths once, without ``unpack``'s checks or its copies of the nonce
    and ciphertext: the read path of multi-region envelopes, after ``header_end``
    has parsed them already. Anything that does not land exactly on ``end`` (the
    end of the copies) goes to ``unpack``, which says what is wrong.
    """
    keys = []
    pos = 2
    try:
        for _ in range(data[1]):
            ref_end = pos + 1 + data[pos]
            wrapped_end = ref_end + 2 + ((data[ref_end] << 8) | data[ref_end + 1])
            key_ref = data[pos + 1 : ref_end].decode("ascii")
            keys.append(_new_tuple(WrappedKey, (key_ref, data[ref_end + 2 : wrapped_end])))
            pos = wrapped_end
    except (IndexError, UnicodeDecodeError):
        pos = -1
    if pos != end:
        return unpack(data).wrapped_keys
    return tuple(keys)


# -- recognizing an envelope, whole or damaged -------------------------------------------

# Byte 0 of every version of the format: v1 (above) and v2, whose header adds a
# 32-byte key commitment before the nonce. A reader of either must not take the
# other, damaged, for data.
_VERSION_BYTES = (1, 2)


def looks_like_envelope(data: bytes) -> bool:
    """Whether ``data`` is an envelope, or one that was damaged or cut short.

    The rule by which ``allow_plaintext`` reads, and ``encrypt_column`` encrypts,
    legacy plaintext: what is true here never is. ``data`` is envelope-shaped when

    * byte 0 is a version byte (0x01, 0x02) and the value is at least as long as
      the smallest envelope: one damaged after byte 0, whatever the damage;
    * byte 0 is a version byte and the shorter value holds the start of a header:
      a key count that is not 0, then a whole first key reference of ASCII
      characters (and a wrapped length that is not 0, if it is there): an envelope
      cut short by a column too narrow for it. A shorter remnant cannot be told
      from data, and is data;
    * whatever byte 0 holds, the rest parses as an envelope under either version
      byte (every key reference and wrapped key inside the value, at least 28
      bytes left), and the value is not UTF-8 text: an envelope whose version byte
      was damaged. Its 28 or more bytes of random nonce and tag make valid UTF-8
      less than once in ten million times, so text is never taken for one.
    """
    size = len(data)
    if size < 4:
        return False
    if data[0] in _VERSION_BYTES:
        return size >= MIN_ENVELOPE_SIZE or _starts_like_header(data)
    return not _is_utf8(data) and any(_parses_as(version, data) for version in _VERSION_BYTES)


def _starts_like_header(data: bytes) -> bool:
    """Whether a value shorter than any envelope holds a key count and a whole key reference."""
    ref_end = 3 + data[2]
    if data[1] == 0 or data[2] == 0 or ref_end > len(data) or not data[3:ref_end].isascii():
        return False
    return data[ref_end : ref_end + 2] != b"\x00\x00"


def _parses_as(version: int, data: bytes) -> bool:
    try:
        unpack(bytes((version,)) + data[1:])
    except MalformedEnvelopeError:
        return False
    return True


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
