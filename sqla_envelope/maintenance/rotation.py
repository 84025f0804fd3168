"""Key rotation over a column: rewrap, reencrypt and verify, batched and resumable.

Each walks the table in primary-key order, one transaction per batch, and
never overwrites a value the application changed meanwhile (see walk.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..context import EncryptionContext
from ..encryptor import Encryptor, get_default_encryptor
from ..envelope import header_end, wrapped_keys_of
from ..errors import ConfigurationError, DecryptionError, MalformedEnvelopeError
from ..keyrings.base import Keyring, call_keyring
from ..rows.walking import RowContexts
from ..schema_binding import translation_of
from ..types import EncryptedType
from .walk import SKIP, ColumnReport, Progress, Shard, walk_values

__all__ = [
    "column_encryptor",
    "encrypted_column",
    "reencrypt",
    "rewrap",
    "rewrap_column",
    "verify",
    "worker_count",
]

Bind = Engine | Connection


def encrypted_column(column: Any) -> tuple[sa.Table, sa.Column[Any], EncryptedType]:
    """The table, column and type behind an ORM attribute or a Table column.

    Raises ConfigurationError for anything that is not an EncryptedType column.
    """
    target = column
    prop = getattr(column, "property", None)
    if prop is not None and getattr(prop, "columns", None):
        target = prop.columns[0]
    if not isinstance(target, sa.Column) or not isinstance(target.table, sa.Table):
        raise ConfigurationError(f"{column!r} is not a table column or mapped attribute")
    if not isinstance(target.type, EncryptedType):
        raise ConfigurationError(
            f"column {target.table.fullname}.{target.name} is not an EncryptedType column"
        )
    return target.table, target, target.type


def column_encryptor(type_: EncryptedType) -> Encryptor:
    """The column's own encryptor, else the configured default."""
    return type_.encryptor if type_.encryptor is not None else get_default_encryptor()


def _sealer(to: Encryptor | Keyring) -> Encryptor:
    if isinstance(to, Encryptor):
        return to
    if isinstance(to, Keyring):
        return Encryptor(to)
    raise ConfigurationError("to= takes an Encryptor or a Keyring")


def rewrap_column(
    bind: Bind,
    column: Any,
    to: Encryptor | Keyring,
    *,
    batch_size: int = 1000,
    dry_run: bool = False,
    strict: bool = False,
    shard: Shard | None = None,
    start_after: Any = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> ColumnReport:
    """``rewrap`` with the full report: changed, skipped, conflicts, failed rows."""
    table, col, type_ = encrypted_column(column)
    source = column_encryptor(type_).reading_v1()
    target = _sealer(to)
    keyring = target.keyring
    contexts = RowContexts(table, col, type_.context_under(translation_of(bind)))
    load, store = type_.envelope_loader(), type_.envelope_storer()

    def transform(row: tuple[Any, ...], context: EncryptionContext) -> Any:
        (stored,) = row
        if stored is None:
            return SKIP
        raw = load(stored)
        end = header_end(raw)  # raises for what is not an envelope
        if raw[0] == target.format_version:
            first = wrapped_keys_of(raw, end)[0]
            if call_keyring(keyring, "check a key", keyring.is_primary, first):
                return SKIP
        # Format v2 authenticates the header, wrapped keys included, with the
        # value: new wrapped keys mean sealing the value again (and a v1 value
        # moves to v2 on the way). A dry run checks that the value opens, and
        # asks the target for no data key it would throw away.
        plaintext = source.open(raw, context)
        return stored if dry_run else store(target.seal(plaintext, context))

    report = ColumnReport(table.fullname, col.name, dry_run=dry_run)
    return walk_values(
        bind, contexts, [col], [col], col, transform, report,
        batch_size=batch_size, dry_run=dry_run, strict=strict, shard=shard,
        start_after=start_after, progress=progress,
        workers=worker_count(workers, source.keyring, target.keyring),
    )  # fmt: skip


def rewrap(
    bind: Bind, column: Any, to: Encryptor | Keyring, *, batch_size: int = 1000, **options: Any
) -> int:
    """Move every value of ``column`` under ``to``'s primary key, in the current format.

    Each value is decrypted and sealed again under a fresh data key from ``to``
    (format v2 authenticates the wrapped keys with the value, so they cannot be
    swapped alone); format v1 values are moved to v2 even when they are under
    the primary key already. Safe to run on a live table. Values already under
    ``to`` in the current format are skipped, so an interrupted run is simply
    run again. Old values are read with
    the column's own encryptor (or the default). Walks the table in primary-key
    order, ``batch_size`` rows per transaction, and never overwrites a value that
    changed since it was read. Returns the number of values changed. A value
    that cannot be decrypted raises DecryptionError (``strict=False`` records it
    in the report of ``rewrap_column`` instead); a keyring failure stops the run
    with the batches before it committed.
    """
    options.setdefault("strict", True)
    return rewrap_column(bind, column, to, batch_size=batch_size, **options).changed


def reencrypt(
    bind: Bind,
    column: Any,
    *,
    to: Encryptor | Keyring | None = None,
    from_context: Mapping[str, str] | None = None,
    batch_size: int = 1000,
    dry_run: bool = False,
    strict: bool = True,
    shard: Shard | None = None,
    start_after: Any = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> ColumnReport:
    """Decrypt every value and encrypt it again under a fresh data key.

    ``to`` (an Encryptor or a Keyring) encrypts under other keys; by default the
    column's own encryptor does.

    For a suspected data-key exposure, or to move values to the column's current
    context after a rename (``from_context`` is the context they were written
    with, e.g. ``{"table": "old_name", "column": "ssn"}``). Values already readable
    under the current context are skipped when ``from_context`` is given, which
    makes that form idempotent (such a value is recognised after it fails to open
    under ``from_context``, so a first run costs one unwrap per row and no failed
    one); without it every value is re-encrypted, and a
    stopped run resumes with ``start_after`` (the report's ``last_key``).
    """
    table, col, type_ = encrypted_column(column)
    source = column_encryptor(type_).reading_v1()
    target = column_encryptor(type_) if to is None else _sealer(to)
    contexts = RowContexts(table, col, type_.context_under(translation_of(bind)))
    earlier = EncryptionContext(from_context) if from_context is not None else None
    load, store = type_.envelope_loader(), type_.envelope_storer()

    def transform(row: tuple[Any, ...], current: EncryptionContext) -> Any:
        (stored,) = row
        if stored is None:
            return SKIP
        previous = contexts.moved(current, earlier) if earlier is not None else current
        envelope = load(stored)
        try:
            plaintext = source.open(envelope, previous)
        except MalformedEnvelopeError:
            raise
        except DecryptionError:
            if previous == current:
                raise
            # Moved already (a run resumed or repeated)? Then there is nothing to do.
            # Tried second, so that a first run makes one unwrap per row, and no
            # failed KMS Decrypt that an audit would have to explain.
            try:
                target.open(envelope, current)
            except DecryptionError:
                pass
            else:
                return SKIP
            raise
        return stored if dry_run else store(target.seal(plaintext, current))

    report = ColumnReport(table.fullname, col.name, dry_run=dry_run)
    return walk_values(
        bind, contexts, [col], [col], col, transform, report,
        batch_size=batch_size, dry_run=dry_run, strict=strict, shard=shard,
        start_after=start_after, progress=progress,
        workers=worker_count(workers, source.keyring, target.keyring),
    )  # fmt: skip


def verify(
    bind: Bind,
    column: Any,
    *,
    batch_size: int = 1000,
    strict: bool = False,
    shard: Shard | None = None,
    start_after: Any = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> ColumnReport:
    """Decrypt every value of ``column``; the report lists the primary keys that fail and why.

    Reads only; the failures say what failed (tampered, wrong context, no key, not
    an envelope, not a valid value of the logical type), never a value.
    """
    table, col, type_ = encrypted_column(column)
    encryptor = column_encryptor(type_)
    contexts = RowContexts(table, col, type_.context_under(translation_of(bind)))
    load = type_.envelope_loader()
    decode = type_.codec.decode

    def transform(row: tuple[Any, ...], context: EncryptionContext) -> Any:
        (stored,) = row
        if stored is not None:
            decode(encryptor.open(load(stored), context))
        return SKIP

    report = ColumnReport(table.fullname, col.name, dry_run=True, operation="verify")
    return walk_values(
        bind, contexts, [col], [col], col, transform, report,
        batch_size=batch_size, dry_run=True, strict=strict, shard=shard,
        start_after=start_after, workers=worker_count(workers, encryptor.keyring),
        progress=progress,
    )  # fmt: skip


def worker_count(workers: int | None, *keyrings: object) -> int:
    """Threads per batch: as asked, else 16 when a keyring waits on a network (KMS), else 1."""
    if workers is not None:
        return max(1, workers)
    return 16 if any(getattr(k, "unwraps_remotely", False) for k in keyrings) else 1
