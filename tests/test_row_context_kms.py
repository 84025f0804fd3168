"""Row-bound values through KMS (moto's server over HTTP): the tenant is in KMS's context.

Each GenerateDataKey and Decrypt carries the row's tenant in its EncryptionContext,
so a KMS key policy can condition on it and CloudTrail records it; a multi-row
write generates exactly one key per value, ahead, per tenant; a read unwraps the
result's keys together, each under its own row's context.
"""

from __future__ import annotations

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
from sqla_envelope import ConfigurationError, EncryptedType, Encryptor, KeyringError, KmsKeyring

pytestmark = pytest.mark.usefixtures("aws_env")
TENANTS = (7, 8, 9)


@pytest.fixture
def patient(engine: sa.Engine, base: type[DeclarativeBase]) -> Iterator[type[Any]]:
    class Patient(base):  # type: ignore[valid-type, misc]
        __tablename__ = "rowctx_kms_patients"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        tenant_id: Mapped[int]
        ssn: Mapped[str] = mapped_column(
            EncryptedType(sa.String(20), context_columns=("tenant_id",))
        )

    base.metadata.drop_all(engine)
    base.metadata.create_all(engine)
    yield Patient
    sqla_envelope.configure(None)


@pytest.fixture
def keyring(
    make_key: Callable[..., Key], recorder: Recorder, kms_endpoint: str
) -> Iterator[KmsKeyring]:
    built = KmsKeyring(
        make_key().arn, session=recorder.session, region_name=REGION, endpoint_url=kms_endpoint
    )
    yield built
    built.close()


def test_kms_sees_each_rows_tenant_and_is_asked_once_per_value(
    engine: sa.Engine, patient: type[Any], keyring: KmsKeyring, recorder: Recorder
) -> None:
    sqla_envelope.configure(Encryptor(keyring))
    recorder.clear()
    with Session(engine) as session:
        session.add_all([patient(id=i, tenant_id=TENANTS[i % 3], ssn=f"ssn-{i}") for i in range(9)])
        session.commit()
    generated = [p["EncryptionContext"] for p in recorder.params("GenerateDataKey")]
    assert len(generated) == 9  # keys made ahead per tenant, none thrown away
    expected = sorted(str(TENANTS[i % 3]) for i in range(9))
    assert sorted(c["tenant_id"] for c in generated) == expected
    assert all(c["table"] == "rowctx_kms_patients" and c["column"] == "ssn" for c in generated)

    sqla_envelope.configure(Encryptor(keyring))  # a cold cache
    recorder.clear()
    with Session(engine) as session:
        rows = session.scalars(sa.select(patient).order_by(patient.id)).all()
        assert [(p.tenant_id, p.ssn) for p in rows] == [
            (TENANTS[i % 3], f"ssn-{i}") for i in range(9)
        ]
    unwrapped = [p["EncryptionContext"]["tenant_id"] for p in recorder.params("Decrypt")]
    assert sorted(unwrapped) == expected


def test_a_tenant_kms_refuses_fails_its_read_and_stores_nothing(
    engine: sa.Engine, patient: type[Any], keyring: KmsKeyring, recorder: Recorder
) -> None:
    sqla_envelope.configure(Encryptor(keyring))
    recorder.fail("GenerateDataKey", "AccessDeniedException")
    with Session(engine) as session:
        session.add(patient(id=1, tenant_id=7, ssn="never-stored"))
        with pytest.raises(KeyringError, match="AccessDenied"):
            session.commit()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM rowctx_kms_patients")).scalar() == 0


def test_a_refused_multi_row_write_asks_kms_for_nothing(
    engine: sa.Engine, patient: type[Any], keyring: KmsKeyring, recorder: Recorder
) -> None:
    # "07" in an INTEGER tenant column is stored as 7, so the write is refused: the
    # keys its rows would have used must not be generated ahead either (CloudTrail
    # would show GenerateDataKeys for a write that never happened).
    sqla_envelope.configure(Encryptor(keyring))
    recorder.clear()
    rows = [{"id": i, "tenant_id": "07", "ssn": f"ssn-{i}"} for i in range(4)]
    with engine.begin() as conn, pytest.raises(ConfigurationError, match="integer"):
        conn.execute(patient.__table__.insert(), rows)
    assert recorder.operations() == []
