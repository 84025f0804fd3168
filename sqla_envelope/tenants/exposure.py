"""What shredding a tenant makes unreadable: its rows in tables with columns bound to it.

A column is bound to the tenant when its EncryptedType lists the tenant field in
``context_columns`` (its values' contexts then name each row's tenant, and the
TenantKeyring picks the key by it). Blind index columns are not listed: their key
is the index key, which shredding leaves alone.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..types import EncryptedType
from .store import Exposure

__all__ = ["bound_columns", "tenant_exposure"]


def bound_columns(metadata: sa.MetaData, field: str) -> dict[sa.Table, tuple[str, ...]]:
    """Each table of ``metadata`` holding encrypted columns bound to ``field``, with them."""
    found: dict[sa.Table, tuple[str, ...]] = {}
    for table in metadata.sorted_tables:
        names = tuple(
            c.name
            for c in table.columns
            if isinstance(c.type, EncryptedType) and field in c.type.context_columns
        )
        if names and field in table.c:
            found[table] = names
    return found


def _matches(column: sa.Column[Any], tenant: str) -> Any:
    """``column`` holds ``tenant``, the text the context carries, compared in the column's type."""
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        python_type = str
    if python_type is int:
        digits = tenant.lstrip("-")
        return column == int(tenant) if digits.isdigit() and digits.isascii() else sa.false()
    if python_type is str:
        return column == tenant
    return sa.cast(column, sa.String) == tenant


def tenant_exposure(
    engine: Engine, metadata: sa.MetaData, field: str, tenant: str
) -> list[Exposure]:
    """The tenant's rows per bound table (every table is listed, with 0 where it has none)."""
    found = []
    with engine.connect() as conn:
        for table, names in bound_columns(metadata, field).items():
            query = sa.select(sa.func.count()).where(_matches(table.c[field], tenant))
            rows = conn.execute(query.select_from(table)).scalar_one()
            found.append(Exposure(table.fullname, names, int(rows)))
    return found
