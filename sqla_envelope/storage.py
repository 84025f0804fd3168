"""How envelopes sit in a column: as bytes or base64 text, and what a MySQL column holds.

Knows the stored forms and the database's limits, not the keys: EncryptedType
asks it how to load and store an envelope, whether a stored value is (or was) an
envelope, and which MySQL/MariaDB type holds every value of a declaration.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any, Literal

from sqlalchemy.dialects import mysql
from sqlalchemy.sql.type_api import TypeEngine

from .codecs import Codec
from .envelope import looks_like_envelope
from .errors import MalformedEnvelopeError

__all__ = [
    "BINARY",
    "BLOB_CAPACITY",
    "LONG_CAPACITY",
    "SMALL_LENGTH",
    "Storage",
    "envelope_shaped",
    "loader",
    "mysql_capacity",
    "mysql_type",
    "storer",
]

Storage = Literal["binary", "base64"]
BINARY = (bytes, bytearray, memoryview)
# Text that is base64, or a prefix of it: the stored form of base64 storage.
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]*={0,2}")
# MySQL and MariaDB: what a BLOB or TEXT holds, in bytes (base64 text is ASCII, a
# byte a character in every charset but utf16/utf32), and a LONGBLOB or LONGTEXT.
BLOB_CAPACITY = 65_535
LONG_CAPACITY = 4_294_967_295
# Declared lengths up to this have always been stored as BLOB/TEXT: the limit is
# kept so that existing schemas, and Alembic autogenerate, see no change.
SMALL_LENGTH = 8_000
# Room an envelope takes beyond the encoded value: version, key count, the wrapped
# copies of the data key (a KMS one with its key ARN is about 280 bytes; 8 KiB holds
# more than a dozen at the format's 255-character key references), v2's 32-byte key
# commitment, the nonce and the tag. The bind-time check catches anything beyond.
_ENVELOPE_ALLOWANCE = 8_192


# -- stored value <-> envelope bytes ----------------------------------------------------


def loader(storage: Storage) -> Callable[[Any], bytes]:
    """Stored value -> envelope bytes; MalformedEnvelopeError for what cannot be one."""
    return _load_base64 if storage == "base64" else _load_binary


def storer(storage: Storage) -> Callable[[bytes], Any]:
    """Envelope bytes -> the value to store (base64 text, or the bytes as they are)."""
    return _store_base64 if storage == "base64" else _store_binary


def _load_base64(value: Any) -> bytes:
    if not isinstance(value, str):
        kind = "bytes" if isinstance(value, BINARY) else type(value).__name__
        raise MalformedEnvelopeError(
            f"stored {kind}, not base64 text: is the column's storage binary?"
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEnvelopeError("stored text is not base64") from None


def _load_binary(value: Any) -> bytes:
    if isinstance(value, BINARY):
        return bytes(value)
    # Not bytes(value): for an int from a column of its old SQL type, that is a
    # buffer of that many zero bytes.
    kind = "text" if isinstance(value, str) else f"a {type(value).__name__}"
    raise MalformedEnvelopeError(f"stored value is {kind}, not an envelope")


def _store_base64(envelope: bytes) -> str:
    return base64.b64encode(envelope).decode("ascii")


def _store_binary(envelope: bytes) -> bytes:
    return envelope


def envelope_shaped(stored: Any, storage: Storage) -> bool:
    """Whether a stored value is an envelope, or was one before damage or a cut.

    Bytes are judged by ``envelope.looks_like_envelope``; in base64 storage, text
    made only of base64 characters by what its whole 4-character groups decode to
    (a column too short for it may have cut it anywhere). Text in a binary column,
    and a number or date the driver returns from a column still of its old SQL
    type, were never written by us.
    """
    if isinstance(stored, str):
        if storage != "base64" or not _BASE64_TEXT.fullmatch(stored):
            return False
        try:
            stored = base64.b64decode(stored[: len(stored) // 4 * 4], validate=True)
        except (binascii.Error, ValueError):
            return False  # "=" inside the text
    elif not isinstance(stored, BINARY):
        return False
    return looks_like_envelope(bytes(stored))


# -- MySQL and MariaDB ------------------------------------------------------------------


def _max_stored_size(codec: Codec, logical: TypeEngine[Any], storage: Storage) -> int | None:
    """The most bytes a value of the declared type takes once stored, or None.

    The largest encoding of the logical type (a fixed-size encoding's size;
    4 bytes a character, UTF-8's worst case, for ``String(n)`` and ``Enum``
    with n their declared length; n bytes for ``LargeBinary(n)``), plus 8 KiB
    for the rest of the envelope, as base64 text with ``storage="base64"``.
    None when the declaration bounds nothing (``Text``, ``JSON``, ``Numeric``,
    dates and times).
    """
    encoded = codec.fixed_size
    if encoded is None:
        length = getattr(logical, "length", None)
        if length is None:
            return None
        encoded = length if codec.name == "LargeBinary" else 4 * length
    size = encoded + _ENVELOPE_ALLOWANCE
    return 4 * -(-size // 3) if storage == "base64" else size


def _fits_blob(codec: Codec, logical: TypeEngine[Any], storage: Storage) -> bool:
    """Whether a 64 KiB BLOB or TEXT holds every value within the declared length."""
    size = _max_stored_size(codec, logical, storage)
    if size is None or size > BLOB_CAPACITY:
        return False
    # Past the allowance, a declared length over 8,000 has always meant LONGBLOB.
    length: int | None = getattr(logical, "length", None)
    return codec.fixed_size is not None or (length or 0) <= SMALL_LENGTH


def mysql_type(codec: Codec, logical: TypeEngine[Any], storage: Storage) -> TypeEngine[Any]:
    """BLOB/TEXT when it holds every value of the declaration, else LONGBLOB/LONGTEXT."""
    small = _fits_blob(codec, logical, storage)
    if storage == "base64":
        return mysql.TEXT() if small else mysql.LONGTEXT()
    return mysql.BLOB() if small else mysql.LONGBLOB()


def mysql_capacity(codec: Codec, logical: TypeEngine[Any], storage: Storage) -> int:
    """How many bytes the MySQL/MariaDB type ``mysql_type`` chooses holds."""
    return BLOB_CAPACITY if _fits_blob(codec, logical, storage) else LONG_CAPACITY
