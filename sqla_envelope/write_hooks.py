"""One shape for the engine hooks that complete the parameters of INSERT and UPDATE.

Blind indexes (search/sync.py) and row-bound values (rows/sync.py) both look at
each INSERT or UPDATE before it runs, find the columns of its table they care
about, and rewrite its embedded ``.values(...)`` and each parameter set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.sql import Insert, Update

__all__ = ["embedded_values", "listen_on_writes"]

Listener = Callable[[Any, Any, Any, Any, Any], tuple[Any, Any, Any]]


def embedded_values(statement: Any) -> dict[str, Any]:
    """A statement's ``.values(...)`` by column key (empty when it has none)."""
    given: dict[str, Any] = {}
    for target, value in (getattr(statement, "_values", None) or {}).items():
        key = target if isinstance(target, str) else getattr(target, "key", None)
        if key is not None:
            given[key] = value
    return given


def listen_on_writes(
    columns_of: Callable[[Any], Sequence[Any]],
    statement: Callable[[Any, Any, Sequence[Any]], Any],
    params: Callable[[Mapping[str, Any], Sequence[Any]], Mapping[str, Any]],
    updates: Callable[[Any, Sequence[Any], set[str]], None] | None = None,
    scope: Callable[[Any, Any, Sequence[Any]], Sequence[Any]] | None = None,
) -> Listener:
    """Listen on every Engine (idempotent per ``columns_of``) and return the listener.

    ``columns_of(table)`` finds what the hook cares about (nothing: the statement
    runs as it is); ``statement(stmt, table, columns)`` rewrites its embedded
    values; ``params(each, columns)`` each parameter set; ``updates(table,
    columns, keys)``, if given, sees the column keys each UPDATE sets (its
    ``.values()`` and each parameter set's), before anything is rewritten.
    ``scope(conn, stmt, columns)``, if given, returns the columns to hand the
    others for this one statement (what its connection or WHERE clause adds).
    """

    def before_execute(
        conn: Any, clauseelement: Any, multiparams: Any, given: Any, execution_options: Any
    ) -> tuple[Any, Any, Any]:
        if not isinstance(clauseelement, (Insert, Update)):
            return clauseelement, multiparams, given
        table = clauseelement.table
        columns = columns_of(table)
        if not columns:
            return clauseelement, multiparams, given
        if scope is not None:
            columns = scope(conn, clauseelement, columns)
        if updates is not None and isinstance(clauseelement, Update):
            embedded = set(embedded_values(clauseelement))
            sets = [each for each in (multiparams or [given]) if isinstance(each, Mapping)]
            for each in sets or [{}]:
                updates(table, columns, embedded | set(each))
        clauseelement = statement(clauseelement, table, columns)
        if multiparams:
            multiparams = [
                params(each, columns) if isinstance(each, Mapping) else each for each in multiparams
            ]
        if given:
            given = params(given, columns)
        return clauseelement, multiparams, given

    listener = _LISTENERS.get(columns_of)
    if listener is None:
        listener = _LISTENERS[columns_of] = before_execute
        event.listen(Engine, "before_execute", listener, retval=True)
    return listener


_LISTENERS: dict[Any, Listener] = {}
