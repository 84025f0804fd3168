"""reindex: compute a blind index column again from the decrypted values of its sources.

To fill an index added to a table that already has rows, after a change of
``normalize`` or ``bits``, or under a new index key. The walk of rotation
(walk.py): primary-key order, a batch per transaction, resumable and
idempotent (a row whose index is already right is skipped), and a row whose
sources changed since they were read is left to the application's own write,
which kept its index in step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from ..errors import ConfigurationError
from ..rotation import column_encryptor, encrypted_column
from ..schema_binding import translation_of
from ..walk import SKIP, ColumnReport, Progress, Shard, walk_column
from .blind_index import BlindIndex, IndexDigest

__all__ = ["index_column", "reindex", "reindex_column", "source_readers"]


def index_column(index: Any) -> tuple[sa.Table, sa.Column[Any], BlindIndex]:
    """The table, column and type behind an ORM attribute or Table column of type BlindIndex."""
    target = index
    prop = getattr(index, "property", None)
    if prop is not None and getattr(prop, "columns", None):
        target = prop.columns[0]
    if not isinstance(target, sa.Column) or not isinstance(target.type, BlindIndex):
        raise ConfigurationError(f"{index!r} is not a BlindIndex column or attribute")
    return target.table, target, target.type


def source_readers(sources: Sequence[sa.Column[Any]], bind: Any) -> list[Callable[[Any], Any]]:
    """For each encrypted source column: stored value -> plaintext (None for NULL)."""
    translation = translation_of(bind)
    readers: list[Callable[[Any], Any]] = []
    for source in sources:
        _, _, type_ = encrypted_column(source)
        encryptor, load = column_encryptor(type_), type_.envelope_loader()
        decode, context = type_.codec.decode, type_.context_under(translation)

        def read(stored: Any, encryptor: Any = encryptor, load: Any = load, decode: Any = decode,
                 context: Any = context) -> Any:  # fmt: skip
            return None if stored is None else decode(encryptor.open(load(stored), context))

        readers.append(read)
    return readers


def reindex_column(
    bind: Any,
    index: Any,
    *,
    dry_run: bool = False,
    batch_size: int = 1000,
    strict: bool = False,
    shard: Shard | None = None,
    start_after: Any = None,
    progress: Progress | None = None,
) -> ColumnReport:
    """``reindex`` with the full report: changed, skipped, conflicts, failed rows.

    The options are ``walk_column``'s (walk.py), as for ``rewrap_column``.
    """
    table, column, index_type = index_column(index)
    sources = index_type.source_columns()
    readers = source_readers(sources, bind)

    def transform(row: tuple[Any, ...]) -> Any:
        *stored_sources, current = row
        values = [read(stored) for stored, read in zip(stored_sources, readers, strict=True)]
        plain = values[0] if len(values) == 1 else tuple(values)
        digest = None if all(value is None for value in values) else index_type.digest(plain)
        if current is not None:
            current = bytes(current)
        if digest == current:
            return SKIP
        # written through the index's own type, which binds a digest as it is
        return None if digest is None else IndexDigest(digest)

    report = ColumnReport(table.fullname, column.name, dry_run=dry_run, operation="reindex")
    return walk_column(
        bind, table, [*sources, column], sources, column, transform, report,
        batch_size=batch_size, dry_run=dry_run, strict=strict, shard=shard,
        start_after=start_after, progress=progress,
    )  # fmt: skip


def reindex(bind: Any, index: Any, *, batch_size: int = 1000, **options: Any) -> int:
    """Compute ``index`` (an ORM attribute or Table column of type BlindIndex) for every row.

    Returns the number of rows whose index changed. A value that cannot be
    decrypted raises DecryptionError (``strict=False`` records it in the report of
    ``reindex_column`` instead).
    """
    options.setdefault("strict", True)
    return reindex_column(bind, index, batch_size=batch_size, **options).changed
