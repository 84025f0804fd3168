"""Lookups through a blind index that is bound to its row (one key per tenant).

``Patient.ssn == value`` asks the index with the hash of ``value``; when the index
is per tenant, that hash depends on the tenant, which an expression on the
encrypted column alone does not know. ``matching(Patient.ssn, value,
tenant_id=7)`` hashes under tenant 7's key and limits the rows to tenant 7.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ..errors import ConfigurationError
from ..maintenance.rotation import encrypted_column
from ..rows.sync import checked_pairs
from ..rows.values import bound_pairs
from .blind_index import BlindIndex, IndexDigest

__all__ = ["matching"]


def matching(column: Any, value: Any, **bound: Any) -> sa.ColumnElement[bool]:
    """Rows whose encrypted ``column`` equals ``value``, asked of its blind index.

    ``bound`` gives the values of the columns the index is bound to (a tenant);
    the condition also requires them, so only that tenant's rows are candidates.
    As with ``==``, a truncated index (``bits=``) can return a row whose hash
    collides: compare the decrypted values to be exact.
    """
    table, col, _ = encrypted_column(column)
    if value is None:
        raise ConfigurationError("matching() looks up a value; for NULL, use column.is_(None)")
    indexes: list[tuple[sa.Column[Any], BlindIndex]] = [
        (c, c.type)
        for c in table.columns
        if isinstance(c.type, BlindIndex) and c.type.indexes_source == col.key
    ]
    if not indexes:
        raise ConfigurationError(f"{table.name}.{col.key} has no blind index to look up with")
    names = indexes[0][1].context_columns
    unknown = sorted(set(bound) - set(names))
    missing = [name for name in names if name not in bound]
    if unknown or missing:
        raise ConfigurationError(
            f"the blind index of {table.name}.{col.key} is bound to "
            f"{', '.join(names) or 'nothing'}: give exactly those"
        )
    if names == getattr(col.type, "context_columns", ()):
        pairs = checked_pairs(table, col.key, bound.__getitem__)
    else:
        pairs = bound_pairs(f"{table.name}.{col.key}", names, bound.__getitem__)
    hashed: list[sa.ColumnElement[bool]] = [
        index == IndexDigest(type_.digest(value, pairs) or b"") for index, type_ in indexes
    ]
    return sa.and_(sa.or_(*hashed), *(table.c[name] == bound[name] for name in names))
