"""Walk a table in primary-key order, a batch per transaction, and write back safely.

The shared engine of rotation and migration: keyset pagination on the primary
key (no OFFSET, composite keys work), each batch in its own transaction, and an
optimistic compare on the stored value, so a row the application changed since
it was read is never overwritten. A run that dies is simply run again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..context import EncryptionContext
from ..errors import ConfigurationError, DecryptionError, InvalidValueError
from ..rows.walking import RowContexts
from ..schema_binding import schema_under, translation_of

__all__ = ["SKIP", "ColumnReport", "Shard", "count_rows", "raw_type", "walk_column", "walk_values"]

log = logging.getLogger("sqla_envelope.walk")

# What a transform returns for a row that needs no change.
SKIP = object()
# Errors that concern one row (its value cannot be read or written): recorded
# against its primary key, and the run goes on unless it is strict.
_ROW_ERRORS = (DecryptionError, InvalidValueError)
MAX_LISTED = 1000


@dataclass
class ColumnReport:
    """What a run over one column did; never holds values, only primary keys."""

    table: str
    column: str
    dry_run: bool = False
    operation: str = ""
    examined: int = 0
    changed: int = 0
    skipped: int = 0
    conflicts: int = 0
    # The first MAX_LISTED failures by primary key; failure_count counts them all,
    # so a run over a table whose key is gone does not hold a message per row.
    failures: list[tuple[tuple[Any, ...], str]] = field(default_factory=list)
    failure_count: int = 0
    last_key: tuple[Any, ...] | None = None

    @property
    def failed(self) -> int:
        return max(self.failure_count, len(self.failures))

    def summary(self) -> str:
        if self.operation == "verify":
            fine = self.examined - self.failed  # NULLs included: nothing to decrypt is fine
            return (
                f"{self.table}.{self.column}: {self.examined} examined, {fine} fine, "
                f"{self.failed} failed"
            )
        verb = "would change" if self.dry_run else "changed"
        return (
            f"{self.table}.{self.column}: {self.examined} examined, {self.changed} {verb}, "
            f"{self.skipped} already done, {self.conflicts} changed by others meanwhile, "
            f"{self.failed} failed"
        )


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count`` of an integer primary key's range (``--shard I/N``)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ConfigurationError("a shard is written I/N, e.g. 0/4") from None
        if not 0 <= index < count:
            raise ConfigurationError("a shard I/N needs 0 <= I < N")
        return cls(index, count)


Transform = Callable[[Any], Any]
Progress = Callable[[ColumnReport], None]


def _pk_columns(table: sa.Table) -> list[sa.Column[Any]]:
    pk = list(table.primary_key.columns)
    if not pk:
        raise ConfigurationError(f"table {table.fullname} has no primary key to walk in order")
    return pk


@contextlib.contextmanager
def _transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """A transaction for one batch: its own on an Engine, a savepoint inside a migration."""
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            yield conn
    elif bind.in_transaction():
        with bind.begin_nested():
            yield bind
    else:
        with bind.begin():
            yield bind


def _shard_bounds(bind: Engine | Connection, pk: Any, shard: Shard) -> tuple[int, int]:
    if not isinstance(pk.type, sa.Integer):
        raise ConfigurationError("--shard needs a table with a single integer primary key")
    with _transaction(bind) as conn:
        low, high = conn.execute(sa.select(sa.func.min(pk), sa.func.max(pk))).one()
    if low is None:
        return 0, -1
    span = high - low + 1
    start = low + span * shard.index // shard.count
    stop = low + span * (shard.index + 1) // shard.count - 1
    return start, stop


def count_rows(bind: Engine | Connection, table: sa.Table, shard: Shard | None = None) -> int:
    """Rows a walk will examine, for progress bars."""
    stmt = sa.select(sa.func.count()).select_from(table)
    if shard is not None:
        pk = _pk_columns(table)
        if len(pk) != 1:
            raise ConfigurationError("--shard needs a table with a single integer primary key")
        start, stop = _shard_bounds(bind, pk[0], shard)
        stmt = stmt.where(pk[0].between(start, stop))
    with _transaction(bind) as conn:
        return int(conn.execute(stmt).scalar_one())


def raw_type(column: sa.Column[Any]) -> sa.types.TypeEngine[Any]:
    """The type that reads and writes a column's stored value as is.

    An encrypted column's envelopes are read as bytes (or base64 text), never
    through EncryptedType, so each row's errors are handled here.
    """
    from ..types import EncryptedType

    type_ = column.type
    if isinstance(type_, EncryptedType):
        # No processing at all: a column being migrated may still hold plaintext
        # text, which LargeBinary's result processor would refuse.
        return sa.types.NullType()
    return type_


def row_name(key_names: Sequence[str], key: Sequence[Any]) -> str:
    """How messages name a row: ``id=17``, or ``(a=1, b=2)`` for a composite key."""
    pairs = [f"{name}={value!r}" for name, value in zip(key_names, key, strict=True)]
    return pairs[0] if len(pairs) == 1 else f"({', '.join(pairs)})"


def walk_column(
    bind: Engine | Connection,
    table: sa.Table,
    read: Sequence[sa.Column[Any]],
    guard: Sequence[sa.Column[Any]],
    write: sa.Column[Any],
    transform: Transform,
    report: ColumnReport,
    *,
    batch_size: int = 1000,
    dry_run: bool = False,
    strict: bool = False,
    shard: Shard | None = None,
    start_after: Any = None,
    workers: int = 1,
    progress: Progress | None = None,
) -> ColumnReport:
    """Apply ``transform`` to every row, batch by batch, and write what it returns.

    ``read`` are the columns selected per row (after the primary key), as stored
    (see ``raw_type``); ``transform`` gets a tuple of their values and returns the
    new stored value of ``write``, or ``SKIP``. ``guard`` must be the first
    columns of ``read``: the UPDATE matches the primary key and each guard's value
    as read (NULL-safe), so a concurrent change wins and counts as a conflict.
    A DecryptionError or InvalidValueError from ``transform`` is recorded against
    the row's primary key (or raised with ``strict``, naming the key); any other
    error stops the run after rolling back the current batch; the batches before
    it stay committed. ``start_after`` resumes after a primary key value (a tuple
    for a composite key), as a report's ``last_key`` gives it.
    """
    if batch_size < 1:
        raise ConfigurationError("batch_size must be at least 1")
    if list(guard) != list(read[: len(guard)]):
        raise ValueError("guard columns must come first in read")
    # A plain view of the table: stored values in and out, no EncryptedType. In
    # the schema the bind translates the table to: a view is not translated.
    view = sa.table(
        table.name,
        *(sa.column(c.name, c.type) for c in table.primary_key.columns),
        *(sa.column(c.name, raw_type(c)) for c in {*read, write} if not c.primary_key),
        schema=schema_under(table.schema, translation_of(bind)),
    )
    pk = [view.c[c.name] for c in _pk_columns(table)]
    pk_names = [c.name for c in pk]
    read_cols = [view.c[c.name] for c in read]
    # A guard compares what is stored. A column of another TypeDecorator is read
    # through it for the transform, but compared as stored: a randomized cipher
    # (sqlalchemy-utils' AES-GCM or Fernet) would never match a value bound again.
    guard_cols = [_as_stored(view.c[c.name]) for c in guard]
    write_col = view.c[write.name]
    where: list[sa.ColumnElement[bool]] = []
    if shard is not None:
        if len(pk) != 1:
            raise ConfigurationError("--shard needs a table with a single integer primary key")
        start, stop = _shard_bounds(bind, pk[0], shard)
        where.append(pk[0].between(start, stop))
    last = as_key(start_after)
    names = [f"pk_{i}" for i in range(len(pk))]
    update = (
        sa.update(view)
        .where(*(col == sa.bindparam(name) for col, name in zip(pk, names, strict=True)))
        .where(
            *(
                sa.or_(
                    col == sa.bindparam(f"old_{i}", type_=col.type),
                    sa.and_(sa.bindparam(f"old_{i}_null"), col.is_(None)),
                )
                for i, col in enumerate(guard_cols)
            )
        )
        .values({write_col.name: sa.bindparam("new_value", type_=write_col.type)})
    )
    pool = (
        ThreadPoolExecutor(workers, thread_name_prefix="sqla-envelope-walk")
        if workers > 1
        else None
    )
    try:
        while True:
            stmt = sa.select(*pk, *read_cols, *guard_cols).where(*where).order_by(*pk)
            stmt = stmt.limit(batch_size)
            if last is not None:
                key = pk[0] if len(pk) == 1 else sa.tuple_(*pk)
                stmt = stmt.where(key > (last[0] if len(pk) == 1 else sa.tuple_(*last)))
            with _transaction(bind) as conn:
                rows = conn.execute(stmt).all()
                if not rows:
                    break
                values = len(pk) + len(read_cols)
                outcomes = _apply(transform, [tuple(r[len(pk) : values]) for r in rows], pool)
                params = []
                for row, outcome in zip(rows, outcomes, strict=True):
                    keys = tuple(row[: len(pk)])
                    report.examined += 1
                    if isinstance(outcome, _ROW_ERRORS):
                        if strict:
                            name = row_name(pk_names, keys)
                            raise type(outcome)(f"row {name}: {outcome}") from outcome
                        report.failure_count += 1
                        if len(report.failures) < MAX_LISTED:
                            report.failures.append((keys, str(outcome)))
                        log.warning(
                            "row %s of %s cannot be processed: %s",
                            row_name(pk_names, keys),
                            table.fullname,
                            outcome,
                        )
                    elif outcome is SKIP:
                        report.skipped += 1
                    else:
                        entry = dict(zip(names, keys, strict=True))
                        guarded = row[values:]
                        for i, old in enumerate(guarded):
                            entry[f"old_{i}"] = old
                            entry[f"old_{i}_null"] = old is None
                        entry["new_value"] = outcome
                        params.append(entry)
                if params and not dry_run:
                    result = _execute_hiding_values(conn, update, params)
                    written = result.rowcount if result.rowcount >= 0 else len(params)
                    report.changed += written
                    report.conflicts += len(params) - written
                elif params:
                    report.changed += len(params)
                last = tuple(rows[-1][: len(pk)])
            report.last_key = last  # only once the batch has committed: a safe resume point
            if progress is not None:
                progress(report)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return report


def walk_values(
    bind: Engine | Connection,
    contexts: RowContexts,
    read: Sequence[sa.Column[Any]],
    guard: Sequence[sa.Column[Any]],
    write: sa.Column[Any],
    transform: Callable[[tuple[Any, ...], EncryptionContext], Any],
    report: ColumnReport,
    **options: Any,
) -> ColumnReport:
    """``walk_column`` over an encrypted column's values, each with its row's context.

    ``transform`` gets the values of ``read`` and the row's context
    (rows/walking.py); the columns the values are bound to are read and guarded
    too, so a row whose tenant changes meanwhile is left for the next run.
    """
    width = len(read)
    read, guard = [*read, *contexts.columns], [*guard, *contexts.columns]
    table = read[0].table
    adapted = contexts.adapt(transform, width)
    return walk_column(bind, table, read, guard, write, adapted, report, **options)


def _as_stored(column: Any) -> Any:
    """``column`` typed as what its database column stores (a TypeDecorator's innermost impl)."""
    type_ = column.type
    if not isinstance(type_, sa.types.TypeDecorator):
        return column
    while isinstance(type_, sa.types.TypeDecorator):
        type_ = type_.impl_instance
    return sa.type_coerce(column, type_)


def as_key(start_after: Any) -> tuple[Any, ...] | None:
    """A primary key value, or a tuple of them for a composite key, as a tuple."""
    if start_after is None:
        return None
    return tuple(start_after) if isinstance(start_after, (tuple, list)) else (start_after,)


def _execute_hiding_values(conn: Any, statement: Any, params: list[dict[str, Any]]) -> Any:
    """Execute a batch UPDATE; a failure's message and ``params`` show none of its values.

    Its parameters are values on their way in or out of encryption (plaintext, in
    encrypt_column and decrypt_column), and a StatementError quotes them all.
    """
    try:
        return conn.execute(statement, params)
    except sa.exc.StatementError as exc:
        exc.hide_parameters = True
        exc.params = None
        raise


def _apply(
    transform: Transform, rows: list[tuple[Any, ...]], pool: ThreadPoolExecutor | None
) -> list[Any]:
    """Each row's outcome: what ``transform`` returned, or the row's own error.

    Any other error (a keyring that denies, a service down) stops the batch: rows
    not yet started on the pool's threads are not transformed, so a permanent KMS
    error costs the requests already in flight, not one per row of the batch.
    """
    stopped: list[BaseException] = []

    def safe(row: tuple[Any, ...]) -> Any:
        if stopped:
            return SKIP  # never used: the batch raises the first error
        try:
            return transform(row)
        except _ROW_ERRORS as exc:
            return exc
        except BaseException as exc:
            stopped.append(exc)
            raise

    if pool is None:
        return [safe(row) for row in rows]
    return list(pool.map(safe, rows))
