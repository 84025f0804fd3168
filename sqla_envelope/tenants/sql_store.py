"""Branch keys in a table of the application's database (``sqla_envelope_branch_keys``).

One row per (tenant, version). ``wrapped`` holds the branch key's copies wrapped
by the master keyring, as JSON (``[{"key_ref": ..., "blob": base64}]``), so that
plain SQL shows which master key each is under; NULL once destroyed. Races are
settled by the primary key: two writers creating a tenant's first key both
insert version 1, one of them fails, and reads the winner's.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine

from ..envelope import WrappedKey
from ..errors import KeyringError
from .store import DEFAULT_TABLE, BranchKeyRecord, Exposure

__all__ = [
    "DEFAULT_TABLE",
    "SqlBranchKeyStore",
    "branch_key_table",
    "create_branch_key_table",
    "text_equals_exactly",
]

TENANT_LENGTH = 255
# Shreds that keep meeting a new version inserted by a concurrent rotation.
_DESTROY_RETRIES = 20
_T = TypeVar("_T")
# Tenants compare exactly: MySQL's and MariaDB's default collations would make
# "Acme" and "acme" one tenant, sharing one key.
_TENANT_TYPE = sa.String(TENANT_LENGTH).with_variant(
    mysql.VARCHAR(TENANT_LENGTH, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)


def branch_key_columns() -> list[sa.Column[Any]]:
    """The branch key table's columns, new objects each call (for Alembic's create_table)."""
    return [
        sa.Column("tenant", _TENANT_TYPE, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("wrapped", sa.Text, nullable=True),
        sa.Column("master_key", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
    ]


def branch_key_table(metadata: sa.MetaData, name: str = DEFAULT_TABLE) -> sa.Table:
    """The branch key table, added to ``metadata`` (for Alembic autogenerate, or create_all)."""
    return sa.Table(name, metadata, *branch_key_columns())


def create_branch_key_table(bind: Engine | Connection, *, table: str = DEFAULT_TABLE) -> bool:
    """Create the branch key table if it is missing; True if it was created."""
    existed = sa.inspect(bind).has_table(table)
    branch_key_table(sa.MetaData(), table).create(bind, checkfirst=True)
    return not existed


def encode_copies(wrapped: tuple[WrappedKey, ...]) -> str:
    return json.dumps(
        [{"key_ref": w.key_ref, "blob": base64.b64encode(w.blob).decode("ascii")} for w in wrapped]
    )


def decode_copies(text: str) -> tuple[WrappedKey, ...]:
    try:
        return tuple(
            WrappedKey(item["key_ref"], base64.b64decode(item["blob"], validate=True))
            for item in json.loads(text)
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise KeyringError("a branch key row's wrapped copies are not valid JSON") from exc


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class SqlBranchKeyStore:
    """The BranchKeyStore of a table reached through ``bind``, each call in its own transaction.

    Runs on connections of its own, never the application's: a branch key
    created during a flush commits at once, whatever becomes of the flush. A
    database error is raised as KeyringError naming the table, so a write that
    cannot have its key stores nothing.
    """

    def __init__(self, bind: Engine, table: str = DEFAULT_TABLE) -> None:
        if not isinstance(bind, Engine):
            raise TypeError("a branch key store takes an Engine")
        self.engine = bind
        self.table = branch_key_table(sa.MetaData(), table)

    def __repr__(self) -> str:
        return f"SqlBranchKeyStore({self.engine.url!r}, table={self.table.name!r})"

    def _failure(self, action: str, exc: sa.exc.SQLAlchemyError) -> KeyringError:
        message = (
            f"branch key table {self.table.name!r}: cannot {action}: "
            f"{type(getattr(exc, 'orig', None) or exc).__name__}"
        )
        if self.engine.dialect.name == "sqlite" and "locked" in str(getattr(exc, "orig", "")):
            message += (
                " (SQLite has one writer at a time, and a transaction writing rows holds it: "
                "keep the branch keys in a database file of their own, or create a tenant's "
                "key with TenantKeyring.create before writing its first rows)"
            )
        return KeyringError(message)

    def _run(self, action: str, work: Callable[[Connection], _T]) -> _T:
        try:
            with self.engine.begin() as conn:
                return work(conn)
        except sa.exc.SQLAlchemyError as exc:
            raise self._failure(action, exc).chain(exc) from exc

    def _is(self, tenant: str) -> Any:
        """The condition for ``tenant``'s rows, compared exactly.

        MySQL and MariaDB compare text ignoring trailing spaces, in utf8mb4_bin too:
        "acme " would find acme's keys (use them, destroy them). Their bytes compare
        exactly.
        """
        return text_equals_exactly(self.table.c.tenant, tenant, self.engine.dialect.name)

    def _clash(self, conn: Connection, tenant: str) -> KeyringError | None:
        """The error for a tenant the table cannot hold beside another it takes for the same."""
        t = self.table
        others = conn.execute(
            sa.select(t.c.tenant).where(t.c.tenant == tenant, sa.not_(self._is(tenant))).limit(1)
        ).scalar()
        if others is None:
            return None
        return KeyringError(
            f"branch key table {t.name!r}: tenant {tenant!r} cannot have a key beside "
            f"tenant {others!r}: MySQL and MariaDB compare text ignoring trailing spaces, "
            "so the table takes them for one; give tenants ids without trailing spaces"
        )

    def _record(self, row: Any) -> BranchKeyRecord:
        wrapped = decode_copies(row.wrapped) if row.wrapped is not None else None
        return BranchKeyRecord(row.tenant, row.version, wrapped, row.created_at, row.destroyed_at)

    def active(self, tenant: str) -> BranchKeyRecord | None:
        t = self.table
        query = sa.select(t).where(self._is(tenant)).order_by(t.c.version.desc()).limit(1)
        row = self._run("read", lambda conn: conn.execute(query).first())
        return self._record(row) if row is not None else None

    def version(self, tenant: str, version: int) -> BranchKeyRecord | None:
        t = self.table
        query = sa.select(t).where(self._is(tenant), t.c.version == version)
        row = self._run("read", lambda conn: conn.execute(query).first())
        return self._record(row) if row is not None else None

    def insert(self, record: BranchKeyRecord) -> bool:
        values = {
            "tenant": record.tenant,
            "version": record.version,
            "wrapped": encode_copies(record.wrapped) if record.wrapped is not None else None,
            "master_key": record.wrapped[0].key_ref if record.wrapped else None,
            "created_at": record.created_at or _now(),
            "destroyed_at": record.destroyed_at,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(self.table.insert(), values)
        except sa.exc.IntegrityError as exc:
            clash = self._run("read", lambda conn: self._clash(conn, record.tenant))
            if clash is not None:
                raise clash from exc
            return False  # that version exists: another writer got there first
        except sa.exc.SQLAlchemyError as exc:
            raise self._failure("insert", exc).chain(exc) from exc
        return True

    def destroy(self, tenant: str) -> tuple[int, ...]:
        t = self.table
        for _ in range(_DESTROY_RETRIES):

            def work(conn: Connection) -> tuple[int, ...]:
                clash = self._clash(conn, tenant)
                if clash is not None:
                    raise clash
                rows = conn.execute(
                    sa.select(t.c.version, t.c.wrapped).where(self._is(tenant))
                ).all()
                live = tuple(r.version for r in rows if r.wrapped is not None)
                top = max((r.version for r in rows), default=0)
                if rows and not live:
                    return live  # shredded already, tombstone and all
                now = _now()
                conn.execute(
                    t.update()
                    .where(self._is(tenant), t.c.wrapped.is_not(None))
                    .values(wrapped=None, master_key=None, destroyed_at=now)
                )
                tombstone = {"tenant": tenant, "version": top + 1}
                conn.execute(t.insert(), {**tombstone, "created_at": now, "destroyed_at": now})
                return live

            try:
                return self._run("destroy keys", work)
            except KeyringError as exc:
                if not isinstance(exc.__cause__, sa.exc.IntegrityError):
                    raise
                # A rotation inserted a version meanwhile: destroy that one too.
        raise KeyringError(f"could not shred tenant {tenant!r}: its versions kept changing")

    def replace(
        self, tenant: str, version: int, old: tuple[WrappedKey, ...], new: tuple[WrappedKey, ...]
    ) -> bool:
        t = self.table
        statement = (
            t.update()
            .where(self._is(tenant), t.c.version == version)
            .where(t.c.wrapped == encode_copies(old))
            .values(wrapped=encode_copies(new), master_key=new[0].key_ref)
        )
        return bool(self._run("rewrap", lambda conn: conn.execute(statement).rowcount) == 1)

    def records(self, tenant: str | None = None) -> Iterator[BranchKeyRecord]:
        t = self.table
        query = sa.select(t).order_by(t.c.tenant, t.c.version)
        if tenant is not None:
            query = query.where(self._is(tenant))
        rows = self._run("read", lambda conn: conn.execute(query).all())
        return iter([self._record(row) for row in rows])

    def exposure(
        self, metadata: sa.MetaData, field: str, tenant: str, bind: Engine | None = None
    ) -> list[Exposure]:
        """Per table of ``metadata`` with columns bound to ``field``: the tenant's rows.

        Counted in ``bind``, the application's database (default: this table's).
        """
        from .exposure import tenant_exposure

        return tenant_exposure(bind or self.engine, metadata, field, tenant)


def text_equals_exactly(column: Any, text: str, dialect: str) -> Any:
    """``column == text``, where MySQL and MariaDB would also find "acme " or "ACME".

    They compare text ignoring trailing spaces (in utf8mb4_bin too) and, in most
    collations, case: there the bytes are compared as well.
    """
    if dialect in ("mysql", "mariadb"):
        return sa.and_(column == text, sa.cast(column, sa.LargeBinary) == text.encode())
    return column == text
