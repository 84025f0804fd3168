"""reindex: compute a blind index column again from the decrypted values of its sources.

To fill an index added to a table that already has rows, after a change of
``normalize`` or ``bits``, or under a new index key. The walk of rotation
(walk.py): primary-key order, a batch per transaction, resumable and
idempotent (a row whose index is already right is skipped), and a row whose
sources changed since they were read is left to the application's own write,
which kept its index in step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ..errors import ConfigurationError
from ..maintenance.rotation import column_encryptor, encrypted_column
from ..maintenance.walk import SKIP, ColumnReport, Progress, Shard, walk_column
from ..rows.values import bound_pairs
from ..rows.walking import RowContexts
from ..schema_binding import translation_of
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


def source_readers(
    sources: Sequence[sa.Column[Any]], bind: Any
) -> list[Callable[[Any, Mapping[str, Any]], Any]]:
    """For each encrypted source column: (stored value, row's bound values) -> plaintext.

    A source bound to other columns of its row opens under that row's context;
    the second argument maps those columns' keys to the row's values.
    """
    translation = translation_of(bind)
    readers: list[Callable[[Any, Mapping[str, Any]], Any]] = []
    for source in sources:
        table, col, type_ = encrypted_column(source)
        encryptor, load = column_encryptor(type_), type_.envelope_loader()
        decode = type_.codec.decode
        contexts = RowContexts(table, col, type_.context_under(translation))

        def read(stored: Any, row: Mapping[str, Any], encryptor: Any = encryptor,
                 load: Any = load, decode: Any = decode,
                 contexts: Any = contexts) -> Any:  # fmt: skip
            if stored is None:
                return None
            context = contexts.of(tuple(row[name] for name in contexts.names))
            return decode(encryptor.open(load(stored), context))

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
    names = index_type.context_columns  # a per-tenant index: each row under its own key
    bound_columns = [table.c[name] for name in names]
    label = f"{table.name}.{column.name}"

    def transform(row: tuple[Any, ...]) -> Any:
        stored_sources, current = row[: len(sources)], row[-1]
        bound = dict(zip(names, row[len(sources) : -1], strict=True))
        values = [read(stored, bound) for stored, read in zip(stored_sources, readers, strict=True)]
        plain = values[0] if len(values) == 1 else tuple(values)
        pairs = bound_pairs(label, names, bound.__getitem__) if names else ()
        digest = None if all(value is None for value in values) else index_type.digest(plain, pairs)
        if current is not None:
            current = bytes(current)
        if digest == current:
            return SKIP
        # written through the index's own type, which binds a digest as it is
        return None if digest is None else IndexDigest(digest)

    report = ColumnReport(table.fullname, column.name, dry_run=dry_run, operation="reindex")
    guard = [*sources, *bound_columns]
    return walk_column(
        bind, table, [*guard, column], guard, column, transform, report,
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
