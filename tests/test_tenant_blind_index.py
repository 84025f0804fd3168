"""A blind index of a row-bound column is per tenant (issue 17, item 6).

Equal values of two tenants hash differently, so the index does not tell that two
tenants share a value; a lookup names its tenant (``search.matching``); a plain
``==`` on the column, which cannot know the tenant, is refused with the way to ask.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sqla_envelope
from sqla_envelope import BlindIndex, ConfigurationError, EncryptedType, Encryptor, LocalKeyring
from sqla_envelope.search import matching, reindex


@pytest.fixture
def patient(engine: sa.Engine, base: type[DeclarativeBase]) -> type[Any]:
    keyring = LocalKeyring.generate()
    sqla_envelope.configure(Encryptor(keyring, index_key=Encryptor(keyring).new_index_key()))

    class Patient(base):  # type: ignore[valid-type, misc]
        __tablename__ = "tenant_bidx_patients"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        tenant_id: Mapped[int]
        ssn: Mapped[str | None] = mapped_column(
            EncryptedType(sa.String(20), context_columns=("tenant_id",))
        )
        ssn_bidx: Mapped[bytes | None] = mapped_column(BlindIndex("ssn"))

    base.metadata.drop_all(engine)
    base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            [
                Patient(id=1, tenant_id=7, ssn="123-45-6789"),
                Patient(id=2, tenant_id=8, ssn="123-45-6789"),
                Patient(id=3, tenant_id=7, ssn="999-99-9999"),
            ]
        )
        session.commit()
    return Patient


def ids(engine: sa.Engine, patient: type[Any], condition: Any) -> list[int]:
    with Session(engine) as session:
        return list(session.scalars(sa.select(patient.id).where(condition).order_by(patient.id)))


def test_equal_values_of_two_tenants_hash_differently(
    engine: sa.Engine, patient: type[Any]
) -> None:
    with engine.connect() as conn:
        hashes = dict(conn.execute(sa.text("SELECT id, ssn_bidx FROM tenant_bidx_patients")).all())
    assert hashes[1] != hashes[2]
    assert len({bytes(h) for h in hashes.values()}) == 3


def test_a_lookup_names_its_tenant_and_finds_only_its_rows(
    engine: sa.Engine, patient: type[Any]
) -> None:
    assert ids(engine, patient, matching(patient.ssn, "123-45-6789", tenant_id=7)) == [1]
    assert ids(engine, patient, matching(patient.ssn, "123-45-6789", tenant_id=8)) == [2]
    assert ids(engine, patient, matching(patient.ssn, "123-45-6789", tenant_id=9)) == []
    with pytest.raises(ConfigurationError, match="tenant_id"):
        matching(patient.ssn, "123-45-6789")
    with pytest.raises(ConfigurationError, match="matching"):
        ids(engine, patient, patient.ssn == "123-45-6789")


def test_the_index_follows_a_tenant_change_and_reindex_restores_it(
    engine: sa.Engine, patient: type[Any]
) -> None:
    with Session(engine) as session:
        moved = session.get(patient, 3)
        moved.tenant_id = 8
        session.commit()
    assert ids(engine, patient, matching(patient.ssn, "999-99-9999", tenant_id=8)) == [3]
    assert ids(engine, patient, matching(patient.ssn, "999-99-9999", tenant_id=7)) == []
    with Session(engine) as session:
        session.get(patient, 1).ssn = "111-11-1111"
        session.commit()
    assert ids(engine, patient, matching(patient.ssn, "111-11-1111", tenant_id=7)) == [1]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE tenant_bidx_patients SET ssn_bidx = NULL"))
    assert reindex(engine, patient.ssn_bidx) == 3
    assert ids(engine, patient, matching(patient.ssn, "123-45-6789", tenant_id=8)) == [2]
    assert ids(engine, patient, matching(patient.ssn, "999-99-9999", tenant_id=8)) == [3]


def test_a_stored_hash_follows_the_documented_recipe(engine: sa.Engine, patient: type[Any]) -> None:
    """docs/format.md section 2: the tenant's key, by HKDF from cryptography, not ours."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from sqla_envelope import EncryptionContext, get_default_encryptor
    from sqla_envelope.search.encoding import canonical

    pairs = EncryptionContext({"tenant_id": "8"}).canonical.hex()
    label = f"tenant_bidx_patients.ssn_bidx/{pairs}".encode()
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"sqla-envelope blind index v1\0" + label,
    ).derive(get_default_encryptor().unwrapped_index_key())
    expected = hmac.new(key, canonical("123-45-6789"), hashlib.sha256).digest()
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT ssn_bidx FROM tenant_bidx_patients WHERE id = 2")
        ).scalar()
    assert bytes(stored) == expected


def test_matching_refuses_what_it_cannot_look_up(engine: sa.Engine, patient: type[Any]) -> None:
    with pytest.raises(ConfigurationError, match="is_"):
        matching(patient.ssn, None, tenant_id=7)
    with pytest.raises(ConfigurationError, match="give exactly those"):
        matching(patient.ssn, "123-45-6789", tenant_id=7, region="eu")
    with pytest.raises(ConfigurationError, match="not an EncryptedType"):
        matching(patient.tenant_id, 7, tenant_id=7)
    # "07" finds tenant 7's rows in an INTEGER column (SQLite, MariaDB), hashed as
    # "07": none would match, silently. Refused, as a write of "07" is.
    with pytest.raises(ConfigurationError, match="as the database stores it"):
        matching(patient.ssn, "123-45-6789", tenant_id="07")
