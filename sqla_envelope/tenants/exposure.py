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
from .sql_store import text_equals_exactly
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


def _matches(column: sa.Column[Any], tenant: str, dialect: str) -> Any:
    """``column`` holds ``tenant``, the text the context carries, compared in the column's type.

    Exactly: an integer column holds tenant "7" only as 7, never "07" or "+7"; and
    MySQL and MariaDB, which compare text ignoring trailing spaces (and case, in
    most collations), compare the bytes too.
    """
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        python_type = str
    if python_type is int:
        number = _integer(tenant)
        return column == number if number is not None else sa.false()
    if python_type is not str:
        return sa.cast(column, sa.String) == tenant
    return text_equals_exactly(column, tenant, dialect)


def _integer(text: str) -> int | None:
    """The int whose text is ``text`` exactly, if there is one."""
    digits = text.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()) or str(int(text)) != text:
        return None
    return int(text)


def tenant_exposure(
    engine: Engine, metadata: sa.MetaData, field: str, tenant: str
) -> list[Exposure]:
    """The tenant's rows per bound table (every table is listed, with 0 where it has none)."""
    found = []
    with engine.connect() as conn:
        for table, names in bound_columns(metadata, field).items():
            matches = _matches(table.c[field], tenant, engine.dialect.name)
            query = sa.select(sa.func.count()).where(matches)
            rows = conn.execute(query.select_from(table)).scalar_one()
            found.append(Exposure(table.fullname, names, int(rows)))
    return found
