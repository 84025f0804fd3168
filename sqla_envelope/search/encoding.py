"""The canonical, typed byte encoding of a value that a blind index hashes.

A blind index must give equal values equal hashes and different values different
ones, across the Python types an encrypted column holds: ``1`` and ``"1"`` must
differ, and so must the compound ``("ab", "c")`` and ``("a", "bc")``. Each value
is encoded as a one-byte type tag and its canonical bytes; a compound value as a
count and its parts, each prefixed with its length. Values that compare equal in
Python and in SQL encode alike (``0.0`` and ``-0.0``, ``Decimal("1.0")`` and
``Decimal("1.00")``, one instant in two time zones). Knows no SQLAlchemy.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import uuid
from decimal import Decimal
from typing import Any

from ..errors import InvalidValueError

__all__ = ["canonical"]

_COMPOUND = b"T"


def canonical(value: Any) -> bytes:
    """The bytes a blind index hashes for ``value``; InvalidValueError for what has none.

    A tuple is a compound value. ``None`` has no encoding: a NULL source gives a
    NULL index, never a hash.
    """
    if isinstance(value, tuple):
        parts = [_scalar(part) for part in value]
        return (
            _COMPOUND
            + len(parts).to_bytes(2, "big")
            + b"".join(len(part).to_bytes(4, "big") + part for part in parts)
        )
    return _scalar(value)


def _scalar(value: Any) -> bytes:
    if value is None:
        return b"N"  # only inside a compound value
    if isinstance(value, enum.Enum):  # before str and int: StrEnum, IntEnum
        return b"e" + type(value).__name__.encode() + b"\0" + value.name.encode()
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"b" + bytes(value)
    if isinstance(value, bool):  # before int
        return b"?1" if value else b"?0"
    if isinstance(value, int):
        return b"i" + str(value).encode()
    if isinstance(value, float):
        if math.isnan(value):
            raise InvalidValueError("NaN has no blind index: it equals nothing, not even itself")
        return b"f" + repr(value + 0.0).encode()  # -0.0 + 0.0 is 0.0
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidValueError("a Decimal NaN or infinity has no blind index")
        return b"d" + str(value.normalize() + 0).encode()  # 1.0, 1.00 and 1 alike
    if isinstance(value, dt.datetime):  # before date
        moment: dt.datetime = value
        if moment.tzinfo is not None and moment.utcoffset() is not None:
            utc = moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
            return b"z" + utc.isoformat().encode()
        return b"t" + moment.isoformat().encode()
    if isinstance(value, dt.date):
        return b"D" + value.isoformat().encode()
    if isinstance(value, dt.time):
        return b"h" + value.isoformat().encode()
    if isinstance(value, dt.timedelta):
        microseconds: int = value // dt.timedelta(microseconds=1)
        return b"I" + str(microseconds).encode()
    if isinstance(value, uuid.UUID):
        return b"u" + value.bytes
    if isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return b"j" + text.encode("utf-8", "surrogatepass")
    raise InvalidValueError(f"a blind index cannot hash a value of type {type(value).__name__}")
