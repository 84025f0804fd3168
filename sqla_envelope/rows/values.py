"""A value and the values of its row it is bound to, on their way in and out of a column.

``EncryptedType(..., context_columns=("tenant_id",))`` binds each value to other
columns of its row: their values join the value's encryption context. A column
type sees one value at a time, so the row's values travel with it: on writes,
the engine hook (rows/sync.py) hands the type a ``RowBound``; on reads, the rows
of a result are wrapped before SQLAlchemy processes them (rows/reads.py), and the
type receives a ``RowStored``. A read that does not carry the row's values (a
SELECT without the bound columns, a deferred column loaded alone) yields a
``SealedValue``, opened with the row's values: never the plaintext guessed, and
never the ciphertext passed off as a value.

This module knows nothing of SQLAlchemy.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..context import EncryptionContext
from ..errors import ConfigurationError, InvalidValueError

__all__ = [
    "RowBound",
    "RowStored",
    "SealedValue",
    "bound_context",
    "bound_pairs",
    "check_context_columns",
    "text_of",
]

Pairs = tuple[tuple[str, str], ...]


def check_context_columns(names: Sequence[str]) -> tuple[str, ...]:
    """``context_columns`` as a tuple of distinct, non-empty column keys."""
    if isinstance(names, str):
        raise ConfigurationError(
            'context_columns= takes a tuple of column keys, e.g. ("tenant_id",)'
        )
    found = tuple(names)
    if not all(isinstance(name, str) and name for name in found):
        raise ConfigurationError("context_columns= takes non-empty column keys (str)")
    if len(set(found)) != len(found):
        raise ConfigurationError("context_columns= names a column twice")
    return found


def text_of(label: str, name: str, value: Any) -> str:
    """A bound column's value as the text that joins the context, the same on every database.

    Only types whose text is unambiguous and comes back from every database as it
    was written: str, int and UUID. A float, a date or a Decimal would come back
    formatted by the driver, and the value would no longer decrypt.
    """
    # A subclass's own str() is not its value: an IntEnum's is "Shard.ONE" on
    # Python 3.10, a (str, Enum) member's "Region.EU"; the database returns the value.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, uuid.UUID):
        return uuid.UUID.__str__(value)
    if value is None:
        raise InvalidValueError(
            f"{label} is bound to its row's {name}, which is NULL here: "
            "nothing is stored until the row has one"
        )
    raise ConfigurationError(
        f"{label} is bound to its row's {name}, a {type(value).__name__}: "
        "a column a value is bound to must hold str, int or UUID values"
    )


def bound_pairs(label: str, names: Sequence[str], values: Callable[[str], Any]) -> Pairs:
    """The (name, text) pairs of a row's bound values, ``values(name)`` giving each one."""
    return tuple((name, text_of(label, name, values(name))) for name in names)


def bound_context(label: str, base: EncryptionContext, pairs: Pairs) -> EncryptionContext:
    """The column's context with the row's bound values added.

    Building one sorts and encodes it (about 5 us, as much as decrypting the
    value): callers keep them per tenant (EncryptedType.row_context, RowContexts).
    """
    merged = base.as_dict()
    for name, text in pairs:
        if name in merged:
            raise ConfigurationError(
                f"{label}: context_columns names {name!r}, which its context already holds"
            )
        merged[name] = text
    return EncryptionContext(merged)


class RowBound:
    """A value to write, with the text of the row's values it is bound to."""

    __slots__ = ("pairs", "value")

    def __init__(self, value: Any, pairs: Pairs) -> None:
        self.value = value
        self.pairs = pairs

    def __repr__(self) -> str:
        # The value is plaintext: never shown. The bound values are not secret.
        return f"RowBound(<hidden>, {dict(self.pairs)!r})"


class RowStored:
    """A stored value read with its row's bound values (None: the row holds none usable)."""

    __slots__ = ("pairs", "stored")

    def __init__(self, stored: Any, pairs: Pairs) -> None:
        self.stored = stored
        self.pairs = pairs

    def __repr__(self) -> str:
        return f"RowStored(<{type(self.stored).__name__}>, {dict(self.pairs)!r})"


class SealedValue:
    """A value read without the row values it is bound to: opened with ``open(row)``.

    Returned where the result did not carry them (a SELECT of the encrypted column
    without its bound columns, a RETURNING clause, a streamed result). ``open``
    takes the row's values, as a mapping, a Row, an ORM object, or keywords, and
    returns the plaintext, or raises DecryptionError if they are not the values
    the value was bound to.
    """

    __slots__ = ("_open", "_stored", "names")

    def __init__(
        self, stored: Any, names: tuple[str, ...], opener: Callable[[Any, Pairs], Any]
    ) -> None:
        self._stored = stored
        self._open = opener
        self.names = names

    def open(self, row: Any = None, /, **values: Any) -> Any:
        """The plaintext, decrypted under the given values of the bound columns."""
        source: Mapping[str, Any] | None = None
        if isinstance(row, Mapping):
            source = row
        elif row is not None:
            source = getattr(row, "_mapping", None)

        def value_of(name: str) -> Any:
            if name in values:
                return values[name]
            if source is not None and name in source:
                return source[name]
            if row is not None and source is None and hasattr(row, name):
                return getattr(row, name)
            raise ConfigurationError(f"open() needs the row's {name}")

        return self._open(self._stored, bound_pairs("the value", self.names, value_of))

    def __repr__(self) -> str:
        return f"<sealed value: bound to its row's {', '.join(self.names)}; open(row) reads it>"

    __str__ = __repr__
