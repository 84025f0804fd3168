"""Values are bound to the schema their table lives in, declared or translated at execution.

One ``Table`` serving a schema per tenant through ``schema_translate_map``: a
value copied from one tenant's table into another's must not decrypt there
(issue 12, finding 2). On PostgreSQL the tenants are schemas, on MariaDB
databases, on SQLite attached database files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqla_envelope import DecryptionError, EncryptedType, Encryptor, LocalKeyring
from sqla_envelope.maintenance import rewrap, verify
from sqla_envelope.migrations import decrypt_column

TENANTS = ("sqlae_tenant_a", "sqlae_tenant_b")


@pytest.fixture
def tenant_engine(engine: sa.Engine, tmp_path: Path) -> Iterator[sa.Engine]:
    """An engine on which both tenant schemas exist (empty at the start)."""
    if engine.dialect.name == "sqlite":
        eng = sa.create_engine(f"sqlite:///{tmp_path / 'main.db'}")

        @sa.event.listens_for(eng, "connect")
        def attach(dbapi_connection: Any, _: Any) -> None:
            for name in TENANTS:
                dbapi_connection.execute(f"ATTACH DATABASE '{tmp_path / name}.db' AS {name}")

        yield eng
        eng.dispose()
        return
    create = (
        "CREATE SCHEMA IF NOT EXISTS"
        if engine.dialect.name == "postgresql"
        else ("CREATE DATABASE IF NOT EXISTS")
    )
    drop = (
        "DROP SCHEMA IF EXISTS {} CASCADE"
        if engine.dialect.name == "postgresql"
        else ("DROP DATABASE IF EXISTS {}")
    )
    with engine.begin() as conn:
        for name in TENANTS:
            conn.exec_driver_sql(drop.format(name))
            conn.exec_driver_sql(f"{create} {name}")
    yield engine
    with engine.begin() as conn:
        for name in TENANTS:
            conn.exec_driver_sql(drop.format(name))


@pytest.fixture
def encryptor() -> Encryptor:
    import sqla_envelope

    enc = Encryptor(LocalKeyring.generate())
    sqla_envelope.configure(enc)
    return enc


def _patients(metadata: sa.MetaData, **type_options: Any) -> sa.Table:
    return sa.Table(
        "patients",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ssn", EncryptedType(sa.String(20), **type_options)),
    )


def _in(engine: sa.Engine, tenant: str) -> sa.Engine:
    return engine.execution_options(schema_translate_map={None: tenant})


def _create(engine: sa.Engine, metadata: sa.MetaData) -> None:
    for tenant in TENANTS:
        metadata.create_all(_in(engine, tenant))


def _copy_raw(engine: sa.Engine, source: str, target: str, row_id: int) -> None:
    """What an attacker with write access does: copy the stored bytes across tenants."""
    raw = sa.table("patients", sa.column("id"), sa.column("ssn", sa.LargeBinary), schema=source)
    into = sa.table("patients", sa.column("id"), sa.column("ssn", sa.LargeBinary), schema=target)
    with engine.begin() as conn:
        stored = conn.execute(sa.select(raw.c.ssn).where(raw.c.id == row_id)).scalar_one()
        conn.execute(into.insert().values(id=row_id, ssn=stored))


def _copied_to_tenant_b(engine: sa.Engine, **type_options: Any) -> sa.Table:
    """patients(1, "123-45-6789") written in tenant A, its bytes copied into tenant B."""
    metadata = sa.MetaData()
    patients = _patients(metadata, **type_options)
    _create(engine, metadata)
    with _in(engine, TENANTS[0]).begin() as conn:
        conn.execute(patients.insert().values(id=1, ssn="123-45-6789"))
    _copy_raw(engine, TENANTS[0], TENANTS[1], 1)
    return patients


def test_value_copied_to_another_tenants_schema_fails_to_decrypt(
    tenant_engine: sa.Engine, encryptor: Encryptor
) -> None:
    patients = _copied_to_tenant_b(tenant_engine)
    with _in(tenant_engine, TENANTS[0]).connect() as conn:
        assert conn.execute(sa.select(patients.c.ssn)).scalar_one() == "123-45-6789"
    with _in(tenant_engine, TENANTS[1]).connect() as conn, pytest.raises(DecryptionError):
        conn.execute(sa.select(patients.c.ssn)).scalar_one()
    assert dict(patients.c.ssn.type.context_under({None: TENANTS[1]})) == {
        "table": f"{TENANTS[1]}.patients",
        "column": "ssn",
    }


def test_orm_sessions_read_and_write_each_tenant_under_its_own_schema(
    tenant_engine: sa.Engine, encryptor: Encryptor
) -> None:
    class Base(DeclarativeBase):
        pass

    class Patient(Base):
        __tablename__ = "patients"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        ssn: Mapped[str] = mapped_column(EncryptedType(sa.String(40)))

    _create(tenant_engine, Base.metadata)
    for tenant in TENANTS:
        with Session(_in(tenant_engine, tenant)) as session:
            session.add(Patient(id=1, ssn=f"ssn-of-{tenant}"))
            session.commit()
    # Statement-level options, and a read after another tenant's write in the same thread.
    for tenant in reversed(TENANTS):
        with Session(tenant_engine) as session:
            options = {"schema_translate_map": {None: tenant}}
            found = session.scalars(sa.select(Patient), execution_options=options).one()
            assert found.ssn == f"ssn-of-{tenant}"
    _copy_raw_over(tenant_engine)
    with Session(_in(tenant_engine, TENANTS[1])) as session, pytest.raises(DecryptionError):
        session.scalars(sa.select(Patient.ssn)).one()


def _copy_raw_over(engine: sa.Engine) -> None:
    source = sa.table(
        "patients", sa.column("id"), sa.column("ssn", sa.LargeBinary), schema=TENANTS[0]
    )
    target = sa.table(
        "patients", sa.column("id"), sa.column("ssn", sa.LargeBinary), schema=TENANTS[1]
    )
    with engine.begin() as conn:
        stored = conn.execute(sa.select(source.c.ssn)).scalar_one()
        conn.execute(target.update().values(ssn=stored))


def test_a_declared_schema_is_part_of_the_context(
    tenant_engine: sa.Engine, encryptor: Encryptor
) -> None:
    metadata = sa.MetaData()
    tables = [
        sa.Table(
            "patients",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("ssn", EncryptedType(sa.String(20))),
            schema=tenant,
        )
        for tenant in TENANTS
    ]
    metadata.create_all(tenant_engine)
    assert tables[0].c.ssn.type.encryption_context()["table"] == f"{TENANTS[0]}.patients"
    with tenant_engine.begin() as conn:
        conn.execute(tables[0].insert().values(id=1, ssn="123-45-6789"))
    _copy_raw(tenant_engine, TENANTS[0], TENANTS[1], 1)
    with tenant_engine.connect() as conn, pytest.raises(DecryptionError):
        conn.execute(sa.select(tables[1].c.ssn)).scalar_one()


def test_a_context_label_is_the_same_in_every_schema(
    tenant_engine: sa.Engine, encryptor: Encryptor
) -> None:
    # context= names the values wherever they live: the documented trade-off.
    patients = _copied_to_tenant_b(tenant_engine, context={"purpose": "patient-ssn"})
    with _in(tenant_engine, TENANTS[1]).connect() as conn:
        assert conn.execute(sa.select(patients.c.ssn)).scalar_one() == "123-45-6789"


def test_column_operations_use_the_schema_their_bind_translates_to(
    tenant_engine: sa.Engine, encryptor: Encryptor
) -> None:
    metadata = sa.MetaData()
    patients = _patients(metadata)
    _create(tenant_engine, metadata)
    for tenant in TENANTS:
        with _in(tenant_engine, tenant).begin() as conn:
            conn.execute(patients.insert(), [{"id": i, "ssn": f"{tenant}-{i}"} for i in range(5)])
    tenant_b = _in(tenant_engine, TENANTS[1])
    assert verify(tenant_b, patients.c.ssn).failures == []
    new_keys = encryptor.keyring.with_new_primary("next")  # type: ignore[attr-defined]
    assert rewrap(tenant_b, patients.c.ssn, new_keys) == 5
    with tenant_b.connect() as conn:
        conn.execute(sa.text("SELECT 1"))  # the translation of the next statement is its own
    import sqla_envelope

    sqla_envelope.configure(Encryptor(new_keys))
    with tenant_b.connect() as conn:
        assert sorted(conn.execute(sa.select(patients.c.ssn)).scalars()) == [
            f"{TENANTS[1]}-{i}" for i in range(5)
        ]
    assert verify(_in(tenant_engine, TENANTS[0]), patients.c.ssn).failures == []
    report = decrypt_column(tenant_b, patients.c.ssn, dry_run=True)
    assert report.failures == []


def test_prefetch_unwraps_under_the_translated_schema(tenant_engine: sa.Engine) -> None:
    import sqla_envelope

    keyring = LocalKeyring.generate()
    sqla_envelope.configure(Encryptor(keyring))
    metadata = sa.MetaData()
    patients = _patients(metadata)
    _create(tenant_engine, metadata)
    tenant_b = _in(tenant_engine, TENANTS[1])
    with tenant_b.begin() as conn:
        conn.execute(patients.insert(), [{"id": i, "ssn": f"s-{i}"} for i in range(10)])
    reader = Encryptor(keyring, prefetch=True)
    sqla_envelope.configure(reader)
    with tenant_b.connect() as conn:
        assert len(conn.execute(sa.select(patients.c.ssn)).scalars().all()) == 10
    stats = reader.stats()
    # One unwrap per value, all by the prefetch: none failed under a wrong context.
    assert stats["unwraps"] == 10 and stats["cache_hits"] == 10
