"""Gives each INSERT and UPDATE of a row-bound column its row's bound values.

An engine event sees each statement before it runs. Where it sets a column
declared with ``context_columns``, the value is handed to the column type as a
RowBound holding the text of the row's bound columns, taken from the same
statement: the ORM's flush (rows/orm.py makes an UPDATE carry them), its bulk
INSERT and bulk UPDATE, and Core statements with parameters or ``.values()``.
A statement that sets the value without them, or sets a bound column from a SQL
expression, cannot be bound and is refused before it runs: nothing is stored.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.sql.elements import BindParameter

from ..errors import ConfigurationError
from ..write_hooks import embedded_values, listen_on_writes
from .values import RowBound, bound_pairs

__all__ = ["install", "row_bound_columns"]

Bound = tuple[str, tuple[str, ...], str]  # column key, the keys it is bound to, its label

_UNSET = object()
_tables: weakref.WeakKeyDictionary[Any, list[Bound]] = weakref.WeakKeyDictionary()


def row_bound_columns(table: Any) -> list[Bound]:
    """The columns of ``table`` bound to others of its row, with what they are bound to."""
    found = _tables.get(table)
    if found is None:
        found = []
        for column in getattr(table, "columns", ()):
            names = getattr(column.type, "context_columns", ())
            if names:
                missing = [name for name in names if name not in table.c]
                if missing:
                    raise ConfigurationError(
                        f"{table.name}.{column.key} is bound to {', '.join(missing)}, "
                        f"which {table.name} has no column for"
                    )
                found.append((column.key, names, f"{table.name}.{column.key}"))
        _tables[table] = found
    return found


def _missing(label: str, names: tuple[str, ...], absent: list[str]) -> ConfigurationError:
    return ConfigurationError(
        f"a statement sets {label} without its row's {', '.join(absent)}, which its "
        f"values are bound to ({', '.join(names)}): give them in the same statement, "
        "as Python values, or nothing can be stored"
    )


def _bound_params(params: Mapping[str, Any], columns: Sequence[Bound]) -> Mapping[str, Any]:
    """``params`` with each row-bound value it sets made a RowBound."""
    replaced: dict[str, Any] = {}
    for key, names, label in columns:
        value = params.get(key)
        if value is None or type(value) is RowBound:
            continue
        absent = [name for name in names if name not in params]
        if absent:
            raise _missing(label, names, absent)
        replaced[key] = RowBound(value, bound_pairs(label, names, params.__getitem__))
    return {**params, **replaced} if replaced else params


def _embedded(statement: Any, table: Any, columns: Sequence[Bound]) -> Any:
    """The statement with the row-bound values of its ``.values(...)`` made RowBounds."""
    keys = {key for key, _, _ in columns}
    for rows in getattr(statement, "_multi_values", None) or ():
        for row in rows:
            targets = {k if isinstance(k, str) else getattr(k, "key", None) for k in row}
            if targets & keys:
                raise ConfigurationError(
                    f"a multi-row VALUES clause sets a row-bound column of {table.name}: "
                    "pass the rows as parameters, conn.execute(table.insert(), rows), so "
                    "each value is bound to its own row"
                )
    given = embedded_values(statement)
    if not given:
        return statement
    replaced: dict[str, Any] = {}
    for key, names, label in columns:
        value = given.get(key, _UNSET)
        if not isinstance(value, BindParameter) or value.callable is not None:
            if value is not _UNSET and not _is_null(value):
                raise ConfigurationError(
                    f"{label} is set from a SQL expression, which cannot be bound to its "
                    "row: set it from a Python value"
                )
            continue
        if value.value is None or type(value.value) is RowBound:
            continue
        absent = [name for name in names if name not in given]
        if absent:
            raise _missing(label, names, absent)
        plain: dict[str, Any] = {}
        for name in names:
            bound = given[name]
            if not isinstance(bound, BindParameter) or bound.callable is not None:
                raise ConfigurationError(
                    f"{table.name}.{name}, which {label} is bound to, is set from a SQL "
                    "expression: set it from a Python value, or the value cannot be bound"
                )
            plain[name] = bound.value
        replaced[key] = RowBound(value.value, bound_pairs(label, names, plain.__getitem__))
    return statement.values(replaced) if replaced else statement


def _is_null(value: Any) -> bool:
    return getattr(value, "__visit_name__", None) == "null"


def _check_update(table: Any, columns: Sequence[Bound], keys: set[str]) -> None:
    """Refuse an UPDATE that moves a row's bound columns and leaves values bound to the old.

    Such values would never decrypt again: a value that was accepted must stay
    readable. The ORM sets them again itself when a tenant changes (rows/orm.py);
    a Core UPDATE must set them too (to NULL if the row has none).
    """
    for key, names, label in columns:
        moved = [name for name in names if name in keys]
        if moved and key not in keys and hasattr(table.c[key].type, "open_row_bound"):
            raise ConfigurationError(
                f"{table.name}: a statement changes {', '.join(moved)} without {label}, "
                f"whose values are bound to it and would become unreadable: set {key} in "
                "the same statement, or move the row through the ORM, which re-encrypts it"
            )


def install() -> None:
    """Listen on every Engine (idempotent)."""
    listen_on_writes(row_bound_columns, _embedded, _bound_params, _check_update)
