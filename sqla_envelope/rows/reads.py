"""Hands each row-bound value of a result its row's bound values, before SQLAlchemy reads it.

A result processor sees one value. When a SELECT returns a row-bound column
together with the columns it is bound to (an ORM entity does; so does
``select(table)``), the rows are buffered (batching.py buffers them anyway to
unwrap their keys ahead) and each such value is replaced by a RowStored holding
the text of its row's bound values, which the column type opens. The bound
columns' values are taken as their own types read them (a UUID stored as text
on SQLite comes back a UUID), so the text is the one the writer bound.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.sql.elements import ColumnClause

from ..errors import EnvelopeError
from .values import RowStored, text_of

__all__ = ["BoundResultColumn", "bound_result_columns", "wrap_rows"]

# index of the value, its label, the bound names, and for each: its index and processor
BoundResultColumn = tuple[
    int, str, tuple[str, ...], tuple[tuple[int, Callable[[Any], Any] | None], ...]
]

_found: weakref.WeakKeyDictionary[Any, list[BoundResultColumn]] = weakref.WeakKeyDictionary()


def _column_of(entry: Sequence[Any]) -> Any:
    """The table (or alias) column a compiled result column reads, if it reads one."""
    for candidate in entry[2]:
        if isinstance(candidate, ColumnClause) and getattr(candidate, "table", None) is not None:
            return candidate
    return None


def bound_result_columns(compiled: Any, dialect: Any) -> list[BoundResultColumn]:
    """The row-bound columns of a compiled SELECT whose bound columns it returns too."""
    found = _found.get(compiled)
    if found is not None:
        return found
    found = []
    entries = getattr(compiled, "_result_columns", None) or ()
    where: dict[tuple[int, str], tuple[int, Any]] = {}
    for index, entry in enumerate(entries):
        column = _column_of(entry)
        if column is not None:
            where.setdefault((id(column.table), column.key), (index, entry[3]))
    for index, entry in enumerate(entries):
        names = getattr(entry[3], "context_columns", ())
        column = _column_of(entry) if names else None
        if column is None:
            continue
        located = [where.get((id(column.table), name)) for name in names]
        if any(spot is None for spot in located):
            continue  # read sealed: the result does not carry what it is bound to
        sources = tuple(
            (spot[0], spot[1].result_processor(dialect, None))
            for spot in located
            if spot is not None
        )
        found.append((index, f"{column.table.name}.{column.key}", names, sources))
    _found[compiled] = found
    return found


def wrap_rows(rows: list[Any], columns: list[BoundResultColumn]) -> list[Any]:
    """``rows`` with each row-bound value made a RowStored of its row's bound values."""
    wrapped = []
    for row in rows:
        values = list(row)
        for index, label, names, sources in columns:
            stored = row[index]
            if stored is None:
                values[index] = RowStored(None, ())
                continue
            try:
                pairs: Any = tuple(
                    (name, text_of(label, name, process(row[at]) if process else row[at]))
                    for name, (at, process) in zip(names, sources, strict=True)
                )
            except EnvelopeError:
                pairs = None  # a NULL tenant, say: the column type reports it on read
            values[index] = RowStored(stored, pairs)
        wrapped.append(tuple(values))
    return wrapped
