"""One codec per logical type: the value the application sees <-> the bytes we encrypt.

Encodings are part of the stored format (docs/format.md lists them) and are
chosen to be exact and portable: UTF-8 text, fixed-width big-endian numbers (so
an integer's ciphertext does not reveal its magnitude), ISO 8601 for dates and
times. Errors name types, never values.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import math
import struct
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from sqlalchemy import types as sqltypes

from .errors import ConfigurationError, DecryptionError, InvalidValueError

__all__ = ["Codec", "codec_for", "is_supported", "supported_types"]

Encode = Callable[[Any], bytes]
Decode = Callable[[bytes], Any]


class Codec(NamedTuple):
    """How one logical type becomes bytes and back; ``fixed_size`` when known."""

    name: str
    encode: Encode
    decode: Decode
    fixed_size: int | None = None


def _wrong_type(expected: str, value: object) -> InvalidValueError:
    return InvalidValueError(f"expected {expected}, got {type(value).__name__}")


def _corrupt(name: str) -> DecryptionError:
    return DecryptionError(f"decrypted value is not a valid {name} encoding")


# -- text and bytes -----------------------------------------------------------------


def _encode_str(value: object) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            # Its message quotes the offending characters: a piece of plaintext.
            raise InvalidValueError("str holds a lone surrogate, not encodable as UTF-8") from None
    raise _wrong_type("str", value)


def _decode_str(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _corrupt("UTF-8 string") from None


def _encode_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise _wrong_type("bytes", value)


def _text_codec(_: sqltypes.TypeEngine[Any]) -> Codec:
    return Codec("String", _encode_str, _decode_str)


def _binary_codec(_: sqltypes.TypeEngine[Any]) -> Codec:
    return Codec("LargeBinary", _encode_bytes, bytes)


def _enum_codec(type_: sqltypes.TypeEngine[Any]) -> Codec:
    assert isinstance(type_, sqltypes.Enum)
    enum_class = type_.enum_class
    if enum_class is not None:
        members: type[enum.Enum] = enum_class

        def encode_member(value: object) -> bytes:
            if isinstance(value, members):
                return value.name.encode("utf-8")
            if isinstance(value, str) and value in members.__members__:
                return value.encode("utf-8")
            raise InvalidValueError(f"not a member of {members.__name__}")

        def decode_member(data: bytes) -> enum.Enum:
            try:
                return members[data.decode("utf-8")]
            except (KeyError, UnicodeDecodeError):
                raise _corrupt(f"{members.__name__} member") from None

        return Codec("Enum", encode_member, decode_member)

    allowed = frozenset(type_.enums)

    def encode_label(value: object) -> bytes:
        if isinstance(value, str) and value in allowed:
            return value.encode("utf-8")
        raise InvalidValueError("not one of the Enum's values")

    return Codec("Enum", encode_label, _decode_str)


def _json_codec(_: sqltypes.TypeEngine[Any]) -> Codec:
    def encode(value: object) -> bytes:
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidValueError(
                f"value is not JSON serializable: {type(exc).__name__}"
            ) from None

    def decode(data: bytes) -> Any:
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise _corrupt("JSON") from None

    return Codec("JSON", encode, decode)


# -- numbers ------------------------------------------------------------------------

_INT64 = struct.Struct(">q")
_DOUBLE = struct.Struct(">d")


def _integer_codec(_: sqltypes.TypeEngine[Any]) -> Codec:
    pack, unpack = _INT64.pack, _INT64.unpack

    def encode(value: object) -> bytes:
        if not isinstance(value, int):
            raise _wrong_type("int", value)
        try:
            return pack(value)
        except struct.error:
            raise InvalidValueError("integer out of the signed 64-bit range") from None

    def decode(data: bytes) -> int:
        if len(data) != 8:
            raise _corrupt("integer")
        return int(unpack(data)[0])

    return Codec("Integer", encode, decode, fixed_size=8)


def _numeric_codec(type_: sqltypes.TypeEngine[Any]) -> Codec:
    assert isinstance(type_, sqltypes.Numeric)
    as_decimal = bool(type_.asdecimal)

    def encode(value: object) -> bytes:
        # str(Decimal) keeps every digit and the exponent, so Decimal("1.50")
        # comes back as Decimal("1.50"), not 1.5.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = decimal.Decimal(str(value))
        elif not isinstance(value, decimal.Decimal):
            raise _wrong_type("Decimal", value)
        # A value is refused here rather than stored to fail every later read:
        # a signaling NaN raises as soon as it is used (float() of it, any
        # arithmetic), and a finite Decimal past float's range would come back
        # as infinity from a column that reads floats.
        if value.is_snan():
            raise InvalidValueError("a signaling NaN cannot be stored: it raises when read")
        if not as_decimal and value.is_finite() and math.isinf(float(value)):
            raise InvalidValueError(
                "Decimal out of the float range of a Numeric(asdecimal=False) column"
            )
        return str(value).encode("ascii")

    def decode(data: bytes) -> decimal.Decimal | float:
        try:
            number = decimal.Decimal(data.decode("ascii"))
            return number if as_decimal else float(number)
        except (UnicodeDecodeError, ArithmeticError, ValueError):  # ValueError: float(sNaN)
            raise _corrupt("decimal") from None

    return Codec("Numeric", encode, decode)


def _float_codec(type_: sqltypes.TypeEngine[Any]) -> Codec:
    assert isinstance(type_, sqltypes.Float)
    as_decimal = bool(type_.asdecimal)
    pack, unpack = _DOUBLE.pack, _DOUBLE.unpack

    def encode(value: object) -> bytes:
        if isinstance(value, (float, int, decimal.Decimal)) and not isinstance(value, bool):
            try:
                return pack(float(value))
            except (OverflowError, ValueError):  # ValueError: Decimal("sNaN")
                raise InvalidValueError("number out of the float range") from None
        raise _wrong_type("float", value)

    def decode(data: bytes) -> float | decimal.Decimal:
        if len(data) != 8:
            raise _corrupt("float")
        number = float(unpack(data)[0])
        return decimal.Decimal(repr(number)) if as_decimal else number

    return Codec("Float", encode, decode, fixed_size=8)


def _boolean_codec(_: sqltypes.TypeEngine[Any]) -> Codec:
    def encode(value: object) -> bytes:
        if value is True or (value == 1 and isinstance(value, int)):
            return b"\x01"
        if value is False or (value == 0 and isinstance(value, int)):
            return b"\x00"
        raise _wrong_type("bool", value)

    def decode(data: bytes) -> bool:
        if data == b"\x01":
            return True
        if data == b"\x00":
            return False
        raise _corrupt("boolean")

    return Codec("Boolean", encode, decode, fixed_size=1)


# -- dates, times, intervals ------------------------------------------------------------


def _iso_codec(name: str, cls: type[Any], exclude: type | None = None) -> Codec:
    def encode(value: object) -> bytes:
        if isinstance(value, cls) and not (exclude is not None and isinstance(value, exclude)):
            return value.isoformat().encode("ascii")  # type: ignore[no-any-return]
        raise _wrong_type(cls.__name__, value)

    def decode(data: bytes) -> Any:
        try:
            return cls.fromisoformat(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise _corrupt(name) from None

    return Codec(name, encode, decode)


def _date_codec(_: sqltypes.TypeEngine[Any]) -> Codec:
    # datetime is a subclass of date; a Date column refuses it rather than
    # silently keeping a time of day the logical type does not have.
    return _iso_codec("Date", dt.date, exclude=dt.datetime)


def _datetime_codec(_: sqltypes.TypeEngine[Any]) -> Codec:
    return _iso_codec("DateTime", dt.datetime)


def _time_codec(_: sqltypes.TypeEngine[Any]) -> Codec:
    return _iso_codec("Time", dt.time)


_INTERVAL = struct.Struct(">iII")


def _interval_codec(_: sqltypes.TypeEngine[Any]) -> Codec:
    def encode(value: object) -> bytes:
        if not isinstance(value, dt.timedelta):
            raise _wrong_type("timedelta", value)
        return _INTERVAL.pack(value.days, value.seconds, value.microseconds)

    def decode(data: bytes) -> dt.timedelta:
        if len(data) != _INTERVAL.size:
            raise _corrupt("interval")
        days, seconds, micros = _INTERVAL.unpack(data)
        try:
            return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
        except OverflowError:
            raise _corrupt("interval") from None

    return Codec("Interval", encode, decode, fixed_size=_INTERVAL.size)


def _uuid_codec(type_: sqltypes.TypeEngine[Any]) -> Codec:
    assert isinstance(type_, sqltypes.Uuid)
    as_uuid = bool(type_.as_uuid)

    def encode(value: object) -> bytes:
        if isinstance(value, uuid.UUID):  # before str: a UUID is not a str
            return value.bytes
        if isinstance(value, str):
            try:
                return uuid.UUID(value).bytes
            except ValueError:
                raise InvalidValueError("str is not a valid UUID") from None
        raise _wrong_type("UUID", value)

    def decode(data: bytes) -> uuid.UUID | str:
        if len(data) != 16:
            raise _corrupt("UUID")
        value = uuid.UUID(bytes=data)
        return value if as_uuid else str(value)

    return Codec("Uuid", encode, decode, fixed_size=16)


# Order matters: subclasses before their bases (Enum is a String, Float a Numeric,
# Interval a TypeDecorator over DateTime, DateTime unrelated to Date in SQLAlchemy).
_TABLE: tuple[tuple[type[sqltypes.TypeEngine[Any]], Callable[[Any], Codec]], ...] = (
    (sqltypes.Interval, _interval_codec),
    (sqltypes.Enum, _enum_codec),
    (sqltypes.String, _text_codec),
    (sqltypes._Binary, _binary_codec),
    (sqltypes.Boolean, _boolean_codec),
    (sqltypes.Integer, _integer_codec),
    (sqltypes.Float, _float_codec),
    (sqltypes.Numeric, _numeric_codec),
    (sqltypes.DateTime, _datetime_codec),
    (sqltypes.Date, _date_codec),
    (sqltypes.Time, _time_codec),
    (sqltypes.Uuid, _uuid_codec),
    (sqltypes.JSON, _json_codec),
)


def supported_types() -> tuple[str, ...]:
    return tuple(cls.__name__.lstrip("_") for cls, _ in _TABLE)


def is_supported(type_: sqltypes.TypeEngine[Any]) -> bool:
    """Whether a logical type has a codec of its own (TypeDecorators over one are not)."""
    return any(isinstance(type_, cls) for cls, _ in _TABLE)


def codec_for(type_: sqltypes.TypeEngine[Any]) -> Codec:
    """The codec of a logical type; ConfigurationError for a type we cannot encrypt."""
    for cls, factory in _TABLE:
        if isinstance(type_, cls):
            return factory(type_)
    raise ConfigurationError(
        f"EncryptedType cannot hold {type(type_).__name__}; supported logical types: "
        + ", ".join(supported_types())
    )
