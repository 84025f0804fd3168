"""Keeps each blind index in step with its source column, in every INSERT and UPDATE.

An engine event sees each statement before it runs. Where an INSERT or UPDATE
sets an encrypted column that a blind index of the same table hashes, and does
not set the index itself, the source's plaintext is bound to the index column
too, which hashes it: the ORM's flush (add, update, ``add_all``, ``merge``), its
bulk INSERT and bulk UPDATE by primary key, and Core statements all keep the
index right without the application assigning it. A statement that sets the
source from a SQL expression, or only some sources of a compound index, cannot
be followed, and is refused before it runs: a stale index would answer lookups
wrongly, silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.sql.elements import BindParameter

from ..errors import ConfigurationError
from ..write_hooks import embedded_values, listen_on_writes
from .blind_index import BlindIndex

__all__ = ["install", "table_indexes"]

_UNSET = object()


def table_indexes(table: Any) -> list[tuple[str, tuple[str, ...]]]:
    """(index column key, source column keys) of every blind index of ``table``."""
    found = getattr(table, "_sqla_envelope_indexes", None)
    if found is None:
        found = []
        columns = getattr(table, "c", ())
        for column in columns:
            if isinstance(column.type, BlindIndex):
                sources = tuple(source.key for source in column.type.source_columns())
                found.append((column.key, sources))
        table._sqla_envelope_indexes = found
    return found


def _filled(params: Mapping[str, Any], indexes: Sequence[tuple[str, tuple[str, ...]]]) -> Any:
    """``params`` with each index the statement leaves unset bound to its sources' values."""
    added: dict[str, Any] = {}
    for index, sources in indexes:
        if params.get(index) is not None:
            continue  # given by the application (Core): hashed on bind
        present = [source in params for source in sources]
        if not any(present):
            continue
        if not all(present):
            raise ConfigurationError(
                f"a statement sets only some columns of the compound blind index {index} "
                f"({', '.join(sources)}): set them together, or the index goes stale"
            )
        values = tuple(params[source] for source in sources)
        added[index] = values[0] if len(values) == 1 else values
    return {**params, **added} if added else params


def _statement_values(statement: Any, table: Any, indexes: Sequence[Any]) -> Any:
    """The statement with its embedded ``.values(...)`` extended to the indexes."""
    for rows in getattr(statement, "_multi_values", None) or ():
        for row in rows:
            keys = {k if isinstance(k, str) else getattr(k, "key", None) for k in row}
            if any(source in keys for _, sources in indexes for source in sources):
                raise ConfigurationError(
                    f"a multi-row VALUES clause sets a blind-indexed column of {table.name}: "
                    "pass the rows as parameters, conn.execute(table.insert(), rows), so "
                    "each row's index is computed"
                )
    selected = getattr(statement, "_select_names", None) or ()  # insert().from_select()
    for index, sources in indexes:
        if index not in selected and any(source in selected for source in sources):
            raise ConfigurationError(
                f"an INSERT ... SELECT sets {table.name}'s blind-indexed column without "
                f"its index {index}: select the index too, or insert the rows as "
                "parameters so each row's index is computed"
            )
    given = embedded_values(statement)
    if not given:
        return statement
    plain: dict[str, Any] = {}
    for index, sources in indexes:
        if index in given or not any(source in given for source in sources):
            continue
        for source in sources:
            value = given.get(source, _UNSET)
            if value is _UNSET:
                continue  # _filled says that a compound index is only partly set
            if not isinstance(value, BindParameter) or value.callable is not None:
                raise ConfigurationError(
                    f"{table.name}.{source} is set from a SQL expression, so its blind "
                    f"index {index} cannot follow: set it from a Python value"
                )
            if value.required:  # .values(source=bindparam("x")): the value comes at execution
                raise ConfigurationError(
                    f"{table.name}.{source} is set from the parameter {value.key!r}, which "
                    f"its blind index {index} cannot follow: pass the value under the "
                    f"column's own name in the parameters, conn.execute(stmt, "
                    f"[{{{source!r}: ...}}]), so each row's index is computed"
                )
            plain[source] = value.value
    if not plain:
        return statement
    extra = _filled(plain, indexes)
    return statement.values({key: extra[key] for key in extra if key not in plain})


def install() -> None:
    """Listen on every Engine (idempotent)."""
    listen_on_writes(table_indexes, _statement_values, _filled)
