"""What an encrypted column's declaration can promise: lengths that hold, and no unique index.

A plaintext ``String(5)`` column refuses a longer value; an encrypted one stores
envelopes in a binary column that has no idea of the plaintext's length, so the
declared length is checked on the plaintext, before it is encrypted. A unique
constraint or an index on an encrypted column can never work: every value is a
different ciphertext, so duplicates are never found and lookups never match.
They are refused when the table is declared, not discovered in production.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, Index, Table, UniqueConstraint, event

from .codecs import Codec
from .errors import ConfigurationError, InvalidValueError

__all__ = ["bounded_encoder", "refuse_unique_or_index"]

_BLIND_INDEX = (
    "every value is encrypted under its own key and nonce, so no two ciphertexts are "
    "equal; keep a keyed hash of the value (a blind index) in a column of its own and "
    "put the constraint or index there"
)


def bounded_encoder(codec: Codec, logical: Any) -> Callable[[Any], bytes]:
    """``codec.encode``, refusing a value longer than the logical type's declared length.

    ``String(n)`` (and ``Unicode(n)``...) counts characters, ``LargeBinary(n)``
    bytes, as the plaintext column would. InvalidValueError names the lengths,
    never the value. Other types, and types without a length, encode as they are.
    """
    encode = codec.encode
    if codec.name == "Numeric":
        return _bounded_numeric(encode, logical)
    length = getattr(logical, "length", None)
    if not length:
        return encode
    if codec.name == "String":

        def encode_string(value: Any) -> bytes:
            data = encode(value)  # refuses what is not a str
            if len(value) > length:
                raise InvalidValueError(
                    f"a value of {len(value):,} characters is longer than the declared "
                    f"String({length}) allows"
                )
            return data

        return encode_string
    if codec.name == "LargeBinary":

        def encode_bytes(value: Any) -> bytes:
            data = encode(value)
            if len(data) > length:
                raise InvalidValueError(
                    f"a value of {len(data):,} bytes is longer than the declared "
                    f"LargeBinary({length}) allows"
                )
            return data

        return encode_bytes
    return encode


def _bounded_numeric(encode: Callable[[Any], bytes], logical: Any) -> Callable[[Any], bytes]:
    """``Numeric(precision, scale)``: refuse what the plaintext column would round or reject.

    A plaintext ``NUMERIC(10, 2)`` rounds 1.234 to 1.23 (PostgreSQL) or refuses it;
    an encrypted one would keep 1.234, a different value than the declaration
    promises. Refused rather than rounded: a value is stored as written or not at
    all. NaN and infinities are left to the codec.
    """
    precision, scale = logical.precision, logical.scale
    if precision is None and scale is None:
        return encode
    places = scale or 0
    whole_digits = None if precision is None else precision - places

    def encode_numeric(value: Any) -> bytes:
        data = encode(value)  # refuses what is not a number
        number = decimal.Decimal(data.decode("ascii"))
        if number.is_finite() and number != 0:
            exponent = number.as_tuple().exponent
            assert isinstance(exponent, int)  # finite: never "n", "N" or "F"
            if -exponent > places and number != number.quantize(decimal.Decimal(1).scaleb(-places)):
                raise InvalidValueError(
                    f"a value with more than {places} decimal places does not fit the "
                    f"declared Numeric({precision}, {scale})"
                )
            if whole_digits is not None and number.adjusted() + 1 > whole_digits:
                raise InvalidValueError(
                    f"a value with more than {whole_digits} digits before the point does "
                    f"not fit the declared Numeric({precision}, {scale})"
                )
        return data

    return encode_numeric


def refuse_unique_or_index(column: Column[Any], label: str) -> None:
    """ConfigurationError for ``unique=True`` or ``index=True`` on an encrypted column."""
    if column.unique or column.index:
        option = "unique=True" if column.unique else "index=True"
        raise ConfigurationError(
            f"{label}: {option} on an encrypted column can never work: {_BLIND_INDEX}"
        )


def _encrypted_columns_of(item: Index | UniqueConstraint) -> list[str]:
    from .types import EncryptedType

    return [
        f"{c.table.name}.{c.name}" if c.table is not None else c.name
        for c in item.columns
        if isinstance(c.type, EncryptedType)
    ]


@event.listens_for(Index, "after_parent_attach")
@event.listens_for(UniqueConstraint, "after_parent_attach")
def _refuse_on_encrypted_columns(item: Index | UniqueConstraint, table: Table) -> None:
    """Index(...) and UniqueConstraint(...) naming an encrypted column, once attached."""
    encrypted = _encrypted_columns_of(item)
    if encrypted:
        kind = "an index" if isinstance(item, Index) else "a unique constraint"
        raise ConfigurationError(
            f"{kind} on the encrypted column {', '.join(encrypted)} can never work: {_BLIND_INDEX}"
        )
