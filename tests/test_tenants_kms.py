"""TenantKeyring with a KMS master (moto's server over HTTP): KMS calls per branch key, not row."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from kms_server import (  # noqa: F401 - pytest fixtures
    REGION,
    Key,
    Recorder,
    aws_env_fixture,
    kms_endpoint_fixture,
    make_key_fixture,
    recorder_fixture,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sqla_envelope
from sqla_envelope import EncryptedType, Encryptor, KeyringError, KmsKeyring
from sqla_envelope.tenants import TenantKeyring, create_branch_key_table

pytestmark = pytest.mark.usefixtures("aws_env")
TENANTS = ("t1", "t2", "t3")


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kms(make_key: Callable[..., Key], recorder: Recorder, kms_endpoint: str) -> Any:
    def build(key: Key | None = None) -> KmsKeyring:
        return KmsKeyring(
            (key or make_key()).arn,
            session=recorder.session,
            region_name=REGION,
            endpoint_url=kms_endpoint,
        )

    return build


@pytest.fixture
def setup(
    engine: sa.Engine, base: type[DeclarativeBase], kms: Any
) -> Iterator[tuple[type[Any], TenantKeyring, Clock]]:
    table = f"bk_{uuid.uuid4().hex[:10]}"
    create_branch_key_table(engine, table=table)

    class Patient(base):  # type: ignore[valid-type, misc]
        __tablename__ = "tenant_kms_patients"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        tenant_id: Mapped[str] = mapped_column(sa.String(20))
        ssn: Mapped[str] = mapped_column(
            EncryptedType(sa.String(20), context_columns=("tenant_id",))
        )

    base.metadata.drop_all(engine)
    base.metadata.create_all(engine)
    clock = Clock()
    keyring = TenantKeyring(kms(), engine, table=table, cache_ttl=60, clock=clock)
    sqla_envelope.configure(Encryptor(keyring))
    yield Patient, keyring, clock
    sqla_envelope.configure(None)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {table}"))


def _write(engine: sa.Engine, patient: Any, per_tenant: int) -> None:
    for n, tenant in enumerate(TENANTS):
        with Session(engine) as session:  # one flush per tenant: SQLite has one writer
            session.add_all(
                patient(id=n * 1000 + i, tenant_id=tenant, ssn=f"{tenant}-{i}")
                for i in range(per_tenant)
            )
            session.commit()


def _read(engine: sa.Engine, patient: Any, keyring: TenantKeyring) -> int:
    sqla_envelope.configure(Encryptor(keyring))  # no data key cached
    with Session(engine) as session:
        return len([p.ssn for p in session.scalars(sa.select(patient))])


def test_kms_is_called_once_per_branch_key_per_ttl_not_per_row(
    engine: sa.Engine, setup: Any, recorder: Recorder
) -> None:
    patient, keyring, clock = setup
    _write(engine, patient, 20)
    assert recorder.operations() == ["GenerateDataKey"] * 3  # one branch key per tenant
    contexts = [p["EncryptionContext"] for p in recorder.params("GenerateDataKey")]
    assert [c["tenant_id"] for c in contexts] == list(TENANTS)
    assert {c["purpose"] for c in contexts} == {"sqla-envelope branch key"}
    recorder.clear()
    keyring.clear_cache()
    assert _read(engine, patient, keyring) == 60
    assert recorder.operations() == ["Decrypt"] * 3
    assert _read(engine, patient, keyring) == 60
    assert recorder.operations() == ["Decrypt"] * 3  # cached
    clock.now += 61
    assert _read(engine, patient, keyring) == 60
    assert recorder.operations() == ["Decrypt"] * 6


def test_nothing_is_stored_when_kms_refuses_a_branch_key(
    engine: sa.Engine, setup: Any, recorder: Recorder
) -> None:
    patient, keyring, _ = setup
    recorder.fail("GenerateDataKey", "AccessDeniedException")
    with Session(engine) as session:
        session.add(patient(id=1, tenant_id="t1", ssn="123-45-6789"))
        with pytest.raises(KeyringError, match="AccessDeniedException"):
            session.commit()
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(patient)).scalar() == 0
    assert list(keyring.store.records()) == []


def test_a_read_while_kms_is_down_raises_and_recovers_after(
    engine: sa.Engine, setup: Any, recorder: Recorder
) -> None:
    patient, keyring, _ = setup
    _write(engine, patient, 2)
    keyring.clear_cache()
    recorder.fail("Decrypt", "KMSInvalidStateException")
    with pytest.raises(KeyringError, match="KMSInvalidStateException"):
        _read(engine, patient, keyring)
    recorder.failures.clear()
    assert _read(engine, patient, keyring) == 6


def test_rewrap_tenant_keys_makes_one_kms_round_per_branch_key(
    engine: sa.Engine, setup: Any, recorder: Recorder, kms: Any
) -> None:
    patient, keyring, _ = setup
    _write(engine, patient, 10)
    new_master = kms()
    recorder.clear()
    assert keyring.rewrap_tenant_keys(to=new_master) == 3
    assert sorted(recorder.operations()) == ["Decrypt"] * 3 + ["Encrypt"] * 3
    moved = TenantKeyring(new_master, engine, table=keyring.store.table.name)
    recorder.clear()
    assert _read(engine, patient, moved) == 30
    assert recorder.operations() == ["Decrypt"] * 3
    assert {p["KeyId"] for p in recorder.params("Decrypt")} == {new_master.key_id}
