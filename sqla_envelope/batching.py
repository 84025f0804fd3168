"""Key work in batches around statements, through SQLAlchemy engine events.

Before a multi-row INSERT or UPDATE, the number of values each encrypted column
will encrypt is reserved with its Encryptor, so a KMS keyring generates the data
keys concurrently. After a SELECT, every distinct key in the result is unwrapped
concurrently, starting as the rows are fetched, before any row is decrypted. Both
matter only where a key operation waits on a network; with a local keyring they
cost a few microseconds per statement.

Prefetching on reads follows ``Encryptor(prefetch=...)`` (on for KMS by default)
and can be set per statement or connection with the execution option
``sqla_envelope_prefetch=True/False``.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import Any

from sqlalchemy import Engine, Table, event
from sqlalchemy.engine.cursor import FullyBufferedCursorFetchStrategy
from sqlalchemy.sql import Insert, Update

from .encryptor import Encryptor, get_default_encryptor
from .errors import ConfigurationError, EnvelopeError, MalformedEnvelopeError
from .rows.reads import bound_result_columns, wrap_rows
from .rows.sync import checked_pairs
from .rows.values import RowStored
from .schema_binding import note_execution
from .types import EncryptedType

__all__ = ["PREFETCH_OPTION", "install"]

PREFETCH_OPTION = "sqla_envelope_prefetch"

_table_columns: weakref.WeakKeyDictionary[Table, list[tuple[str, EncryptedType]]] = (
    weakref.WeakKeyDictionary()
)
_result_columns: weakref.WeakKeyDictionary[Any, list[tuple[int, EncryptedType]]] = (
    weakref.WeakKeyDictionary()
)


def _encryptor_of(type_: EncryptedType) -> Encryptor | None:
    try:
        return type_.encryptor if type_.encryptor is not None else get_default_encryptor()
    except ConfigurationError:
        return None  # the statement itself will raise the clear error


def _encrypted_columns(table: Table) -> list[tuple[str, EncryptedType]]:
    found = _table_columns.get(table)
    if found is None:
        found = [(c.key, c.type) for c in table.columns if isinstance(c.type, EncryptedType)]
        _table_columns[table] = found
    return found


def _before_execute(
    conn: Any, clauseelement: Any, multiparams: Any, params: Any, execution_options: Any
) -> None:
    """Note the statement's schema translation; reserve data keys for a multi-row write."""
    note_execution(execution_options)
    if not isinstance(clauseelement, (Insert, Update)) or not isinstance(multiparams, list):
        return
    if len(multiparams) < 2 or not isinstance(clauseelement.table, Table):
        return
    translation = execution_options.get("schema_translate_map")
    for key, type_ in _encrypted_columns(clauseelement.table):
        count = sum(1 for row in multiparams if row.get(key) is not None)
        encryptor = _encryptor_of(type_) if count > 1 else None
        if encryptor is None:
            continue
        # The statement's own processing raises the clear error for what fails here.
        with contextlib.suppress(EnvelopeError):
            if not type_.context_columns:
                encryptor.reserve(type_.context_under(translation), count)
                continue
            # Keys are made ahead per context, and each row's is its own.
            counts: dict[Any, int] = {}
            for row in multiparams:
                if row.get(key) is not None:
                    # Checked as the statement's own hook checks them (rows/sync.py),
                    # whichever runs first: no key is made for a row it refuses.
                    pairs = checked_pairs(clauseelement.table, key, row.get)
                    counts[pairs] = counts.get(pairs, 0) + 1
            for pairs, rows in counts.items():
                encryptor.reserve(type_.row_context(pairs), rows)


def _encrypted_result_columns(compiled: Any) -> list[tuple[int, EncryptedType]]:
    found = _result_columns.get(compiled)
    if found is None:
        entries = getattr(compiled, "_result_columns", None) or ()
        found = [(i, e[3]) for i, e in enumerate(entries) if isinstance(e[3], EncryptedType)]
        _result_columns[compiled] = found
    return found


def _after_cursor_execute(
    conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: bool
) -> None:
    """Unwrap a result's data keys concurrently, before its rows are processed."""
    if executemany or context is None or context.compiled is None:
        return
    if cursor.description is None or context.isinsert or context.isupdate or context.isdelete:
        # Only SELECTs: SQLAlchemy reads RETURNING rows itself (insertmanyvalues
        # batches), and taking them from the cursor here would lose them.
        return
    columns = _encrypted_result_columns(context.compiled)
    if not columns:
        return
    options = context.execution_options
    if options.get("stream_results") or options.get("yield_per"):
        return  # buffering the whole result would defeat streaming
    bound = (
        bound_result_columns(context.compiled, context.dialect)
        if any(type_.context_columns for _, type_ in columns)
        else []
    )
    wanted = options.get(PREFETCH_OPTION)
    plan = []
    for index, type_ in columns:
        encryptor = _encryptor_of(type_)
        if encryptor is not None and (encryptor.prefetch if wanted is None else wanted):
            plan.append((index, type_, encryptor))
    if not plan and not bound:
        return
    translation = options.get("schema_translate_map")
    # The rows are fetched a chunk at a time and each chunk's keys are asked for
    # as soon as it arrives: the first requests are in flight while the rest of
    # the result is fetched. Every key is unwrapped before any row is decrypted.
    rows: list[Any] = []
    source: Iterable[Any] = _fetch_in_chunks(cursor, rows)
    for index, type_, encryptor in plan:
        if type_.context_columns:
            continue  # under each row's own context, once the rows are in
        # A ConfigurationError is raised again, clearly, by the rows' own decrypt.
        with contextlib.suppress(ConfigurationError):
            encryptor.unwrap_all(
                _envelopes(type_, map(itemgetter(index), source)),
                type_.context_under(translation),
            )
        if source is not rows:
            rows.extend(cursor.fetchall())  # what the scan did not need to fetch
            source = rows
    if source is not rows:
        for _ in source:  # nothing scanned it: fetch the whole result into rows
            pass
    if bound:
        rows = wrap_rows(rows, bound)
        for index, type_, encryptor in plan:
            if type_.context_columns:
                with contextlib.suppress(ConfigurationError):
                    _unwrap_row_bound(encryptor, type_, rows, index)
    context.cursor_fetch_strategy = FullyBufferedCursorFetchStrategy(
        cursor, cursor.description, rows
    )


def _unwrap_row_bound(
    encryptor: Encryptor, type_: EncryptedType, rows: list[Any], index: int
) -> None:
    """Unwrap the keys of a row-bound column's values, each under its row's context.

    The rows are grouped by their bound values first: one context per tenant,
    not per row.
    """
    load = type_.envelope_loader()
    binary = type_.storage != "base64"
    groups: dict[Any, list[bytes]] = {}
    for row in rows:
        value = row[index]
        if type(value) is not RowStored or value.stored is None or value.pairs is None:
            continue
        stored = value.stored
        if not (binary and type(stored) is bytes):
            try:
                stored = load(stored)
            except MalformedEnvelopeError:
                continue  # for the row's own decrypt to report
        found = groups.get(value.pairs)
        if found is None:
            found = groups[value.pairs] = []
        found.append(stored)
    encryptor.unwrap_grouped(
        (envelopes, type_.row_context(pairs)) for pairs, envelopes in groups.items()
    )


_FETCH_CHUNK = 256


def _fetch_in_chunks(cursor: Any, rows: list[Any]) -> Iterator[Any]:
    """The cursor's rows, a chunk at a time, each chunk kept in ``rows`` before it is used."""
    while chunk := cursor.fetchmany(_FETCH_CHUNK):
        rows.extend(chunk)
        yield from chunk


def _envelopes(type_: EncryptedType, values: Iterable[Any]) -> Iterator[bytes]:
    """The stored values that can be envelopes; the rest are for decrypt() to report."""
    load = type_.envelope_loader()
    binary = type_.storage != "base64"
    for value in values:
        if binary and type(value) is bytes:
            yield value  # the common case, spared a call (as in the result processor)
        elif value is not None:
            try:
                yield load(value)
            except MalformedEnvelopeError:
                continue  # plaintext under allow_plaintext, or a bad value


_installed = False


def install() -> None:
    """Register the engine events (done once, when sqla_envelope is imported)."""
    global _installed
    if not _installed:
        event.listen(Engine, "before_execute", _before_execute)
        event.listen(Engine, "after_cursor_execute", _after_cursor_execute)
        _installed = True
