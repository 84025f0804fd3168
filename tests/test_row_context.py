"""Values bound to other columns of their row: ``EncryptedType(context_columns=...)`` (issue 17).

Each value's encryption context holds its row's tenant, through the ORM and Core,
on SQLite, PostgreSQL and MariaDB. A value copied to another tenant's row, or left
in a row whose tenant changed by raw SQL, fails to decrypt with an error naming
the row's values; a write that cannot give the bound values stores nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, defer, mapped_column

import sqla_envelope
from sqla_envelope import (
    ConfigurationError,
    DecryptionError,
    EncryptedType,
    Encryptor,
    InvalidValueError,
    SealedValue,
)

SECRET = "never-stored-0xC0FFEE"


def _one(session: Session, model: Any, key: Any) -> Any:
    """``session.get_one`` where SQLAlchemy 2.0.16 (our floor) has no ``get_one``."""
    found = session.get(model, key)
    assert found is not None
    return found


class Models:
    def __init__(self, base: type[DeclarativeBase]) -> None:
        class Patient(base):  # type: ignore[valid-type, misc]
            __tablename__ = "rowctx_patients"
            id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
            tenant_id: Mapped[int | None]
            name: Mapped[str | None] = mapped_column(sa.String(40))
            ssn: Mapped[str | None] = mapped_column(
                EncryptedType(sa.String(20), context_columns=("tenant_id",))
            )

        class Account(base):  # type: ignore[valid-type, misc]
            __tablename__ = "rowctx_accounts"
            id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
            org: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
            region: Mapped[str] = mapped_column(sa.String(20))
            token: Mapped[str | None] = mapped_column(
                EncryptedType(sa.String, context_columns=("org", "region"))
            )

        # Tenants in the primary key: text (Member), int (Seat).
        class Member(base):  # type: ignore[valid-type, misc]
            __tablename__ = "rowctx_members"
            tenant_id: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
            id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
            ssn: Mapped[str | None] = mapped_column(
                EncryptedType(sa.String(20), context_columns=("tenant_id",))
            )
            cvc: Mapped[str | None] = mapped_column(
                EncryptedType(sa.String(4), context_columns=("tenant_id",)), deferred=True
            )

        class Seat(base):  # type: ignore[valid-type, misc]
            __tablename__ = "rowctx_seats"
            tenant_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
            id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
            ssn: Mapped[str | None] = mapped_column(
                EncryptedType(sa.String(20), context_columns=("tenant_id",))
            )

        class Letter(base):  # type: ignore[valid-type, misc]
            # Two values bound to one tenant, outside the primary key.
            __tablename__ = "rowctx_letters"
            id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
            tenant_id: Mapped[int]
            body: Mapped[str | None] = mapped_column(
                EncryptedType(sa.Text, context_columns=("tenant_id",))
            )
            sig: Mapped[str | None] = mapped_column(
                EncryptedType(sa.String(20), context_columns=("tenant_id",)), deferred=True
            )

        self.Patient = Patient
        self.Account = Account
        self.Letter = Letter
        self.Member = Member
        self.Seat = Seat


@pytest.fixture
def models(engine: sa.Engine, base: type[DeclarativeBase], encryptor: Encryptor) -> Models:
    found = Models(base)
    base.metadata.drop_all(engine)
    base.metadata.create_all(engine)
    return found


def stored(engine: sa.Engine, table: str, row_id: int, column: str = "ssn") -> Any:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(f"SELECT {column} FROM {table} WHERE id = :i"), {"i": row_id}
        ).scalar()


def seed(engine: sa.Engine, models: Models) -> None:
    with Session(engine) as session:
        session.add_all(
            [
                models.Patient(id=1, tenant_id=7, ssn="111-11-1111"),
                models.Patient(id=2, tenant_id=8, ssn="222-22-2222"),
            ]
        )
        session.commit()


def test_each_value_is_bound_to_its_rows_tenant(
    engine: sa.Engine, models: Models, encryptor: Encryptor
) -> None:
    seed(engine, models)
    envelope = bytes(stored(engine, "rowctx_patients", 1))
    table_context = {"table": "rowctx_patients", "column": "ssn"}
    assert encryptor.decrypt(envelope, {**table_context, "tenant_id": "7"}) == b"111-11-1111"
    with pytest.raises(DecryptionError):
        encryptor.decrypt(envelope, table_context)
    with pytest.raises(DecryptionError):
        encryptor.decrypt(envelope, {**table_context, "tenant_id": "8"})
    with Session(engine) as session:
        rows = session.scalars(sa.select(models.Patient).order_by(models.Patient.id)).all()
        assert [(p.tenant_id, p.ssn) for p in rows] == [(7, "111-11-1111"), (8, "222-22-2222")]


def test_a_value_copied_to_another_tenants_row_fails_naming_the_row(
    engine: sa.Engine, models: Models
) -> None:
    seed(engine, models)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE rowctx_patients SET ssn = (SELECT ssn FROM "
                "(SELECT ssn FROM rowctx_patients WHERE id = 2) AS other) WHERE id = 1"
            )
        )
    with Session(engine) as session, pytest.raises(DecryptionError) as raised:
        session.get(models.Patient, 1)
    message = str(raised.value)
    assert "rowctx_patients.ssn" in message and "tenant_id='7'" in message
    assert "222" not in message
    with Session(engine) as session:  # the other tenant is untouched
        assert session.get(models.Patient, 2).ssn == "222-22-2222"  # type: ignore[union-attr]


def test_a_tenant_changed_by_raw_sql_leaves_the_value_unreadable(
    engine: sa.Engine, models: Models
) -> None:
    seed(engine, models)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE rowctx_patients SET tenant_id = 8 WHERE id = 1"))
    with engine.connect() as conn, pytest.raises(DecryptionError, match="tenant_id='8'"):
        conn.execute(sa.select(models.Patient.__table__).where(sa.column("id") == 1)).all()


@pytest.mark.parametrize("loaded", [True, False])
def test_the_orm_re_encrypts_a_value_when_its_tenant_changes(
    engine: sa.Engine, models: Models, encryptor: Encryptor, loaded: bool
) -> None:
    seed(engine, models)
    before = stored(engine, "rowctx_patients", 1)
    with Session(engine) as session:
        query = sa.select(models.Patient).where(models.Patient.id == 1)
        if not loaded:
            query = query.options(defer(models.Patient.ssn))
        patient = session.scalars(query).one()
        patient.tenant_id = 9
        session.commit()
    assert stored(engine, "rowctx_patients", 1) != before
    with Session(engine) as session:
        assert session.get(models.Patient, 1).ssn == "111-11-1111"  # type: ignore[union-attr]
    envelope = bytes(stored(engine, "rowctx_patients", 1))
    context = {"table": "rowctx_patients", "column": "ssn", "tenant_id": "9"}
    assert encryptor.decrypt(envelope, context) == b"111-11-1111"


def test_a_tenant_changed_after_the_object_expired_is_re_encrypted_from_the_row(
    engine: sa.Engine, models: Models
) -> None:
    seed(engine, models)
    with Session(engine) as session:
        patient = session.get(models.Patient, 1)
        assert patient is not None
        session.commit()  # expires everything: the value is not in memory
        patient.tenant_id = 10
        session.commit()
    with Session(engine) as session:
        assert session.get(models.Patient, 1).ssn == "111-11-1111"  # type: ignore[union-attr]


def test_updates_through_the_orm_carry_the_bound_columns(engine: sa.Engine, models: Models) -> None:
    seed(engine, models)
    with Session(engine) as session:
        patient = session.get(models.Patient, 2)
        assert patient is not None
        session.commit()
        patient.ssn = "333-33-3333"  # the tenant is expired and not changed: loaded, sent
        session.commit()
        session.merge(models.Patient(id=1, tenant_id=7, ssn="444-44-4444"))
        session.commit()
        session.execute(
            sa.insert(models.Patient), [{"id": 3, "tenant_id": 7, "ssn": "555-55-5555"}]
        )
        session.execute(
            sa.update(models.Patient), [{"id": 3, "tenant_id": 7, "ssn": "666-66-6666"}]
        )
        session.commit()
    with Session(engine) as session:
        rows = session.scalars(sa.select(models.Patient).order_by(models.Patient.id)).all()
        assert [p.ssn for p in rows] == ["444-44-4444", "333-33-3333", "666-66-6666"]


def test_core_writes_and_reads(engine: sa.Engine, models: Models) -> None:
    table = models.Patient.__table__
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, tenant_id=7, ssn="111"))
        conn.execute(
            table.insert(),
            [{"id": 2, "tenant_id": 8, "ssn": "222"}, {"id": 3, "tenant_id": 8, "ssn": None}],
        )
        conn.execute(table.update().where(table.c.id == 3).values(tenant_id=8, ssn="333"))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.id, table.c.ssn, table.c.tenant_id).order_by(table.c.id)
        ).all()
        assert [(r.id, r.ssn) for r in rows] == [(1, "111"), (2, "222"), (3, "333")]
        # Without the bound column the value arrives sealed, and opens with it.
        sealed = conn.execute(sa.select(table.c.ssn).where(table.c.id == 1)).scalar_one()
        assert isinstance(sealed, SealedValue)
        assert "111" not in repr(sealed) and "111" not in str(sealed)
        assert sealed.open(tenant_id=7) == "111"
        assert sealed.open({"tenant_id": 7}) == "111"
        with pytest.raises(DecryptionError, match="tenant_id='8'"):
            sealed.open(tenant_id=8)


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        ("update-without-tenant", ConfigurationError),
        ("insert-without-tenant", ConfigurationError),
        ("rows-one-without-tenant", ConfigurationError),
        ("null-tenant", InvalidValueError),
        ("multi-row-values", ConfigurationError),
        ("tenant-from-sql", ConfigurationError),
        ("text", ConfigurationError),
    ],
)
def test_a_write_that_cannot_bind_stores_nothing(
    engine: sa.Engine, models: Models, statement: str, error: type[Exception]
) -> None:
    seed(engine, models)
    table = models.Patient.__table__
    before = {i: stored(engine, "rowctx_patients", i) for i in (1, 2)}
    run = {
        "update-without-tenant": lambda c: c.execute(
            table.update().where(table.c.id == 1).values(ssn=SECRET)
        ),
        "insert-without-tenant": lambda c: c.execute(table.insert(), [{"id": 5, "ssn": SECRET}]),
        "rows-one-without-tenant": lambda c: c.execute(
            table.insert(),
            [{"id": 5, "tenant_id": 1, "ssn": SECRET}, {"id": 6, "ssn": SECRET}],
        ),
        "null-tenant": lambda c: c.execute(
            table.insert(), [{"id": 5, "tenant_id": None, "ssn": SECRET}]
        ),
        "multi-row-values": lambda c: c.execute(
            table.insert().values(
                [{"id": 5, "tenant_id": 1, "ssn": SECRET}, {"id": 6, "tenant_id": 1, "ssn": SECRET}]
            )
        ),
        "tenant-from-sql": lambda c: c.execute(
            table.update()
            .where(table.c.id == 1)
            .values(ssn=SECRET, tenant_id=table.c.tenant_id + 0)
        ),
        "text": lambda c: c.execute(
            sa.text("UPDATE rowctx_patients SET ssn = :v WHERE id = 1").bindparams(
                sa.bindparam("v", type_=table.c.ssn.type)
            ),
            {"v": SECRET},
        ),
    }[statement]
    with pytest.raises(error) as raised, engine.begin() as conn:
        run(conn)
    assert SECRET not in str(raised.value)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM rowctx_patients")).scalar() == 2
    assert {i: stored(engine, "rowctx_patients", i) for i in (1, 2)} == before


def test_a_new_object_without_its_tenant_is_refused(engine: sa.Engine, models: Models) -> None:
    with Session(engine) as session:
        session.add(models.Patient(id=1, ssn="111"))
        with pytest.raises(InvalidValueError, match="tenant_id, which is NULL"):
            session.commit()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM rowctx_patients")).scalar() == 0


def test_several_bound_columns_of_uuid_and_text(engine: sa.Engine, models: Models) -> None:
    org = uuid.UUID("12345678-1234-5678-1234-567812345678")
    with Session(engine) as session:
        session.add(models.Account(id=1, org=org, region="eu", token="tok-1"))
        session.commit()
    with Session(engine) as session:
        account = session.get(models.Account, 1)
        assert account is not None and account.token == "tok-1"
        account.region = "us"
        session.commit()
    with engine.connect() as conn:
        row = conn.execute(sa.select(models.Account.__table__)).one()
        assert (row.region, row.token) == ("us", "tok-1")
        conn.execute(sa.text("UPDATE rowctx_accounts SET region = 'eu'"))
        with pytest.raises(DecryptionError, match="region='eu'"):
            conn.execute(sa.select(models.Account.__table__)).all()


def test_declaring_a_bound_column_the_table_lacks_is_refused(
    engine: sa.Engine, encryptor: Encryptor
) -> None:
    table = sa.Table(
        "rowctx_broken",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("v", EncryptedType(sa.String, context_columns=("tenant",))),
    )
    with engine.connect() as conn, pytest.raises(ConfigurationError, match="no column for"):
        conn.execute(table.insert(), [{"id": 1, "v": "x"}])


@pytest.mark.parametrize("bad", ["tenant_id", ("a", "a"), ("",)])
def test_context_columns_must_name_distinct_columns(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        EncryptedType(sa.String, context_columns=bad)


def test_the_cache_key_and_alembic_repr_hold_the_bound_columns() -> None:
    bound = EncryptedType(sa.String, context_columns=("tenant_id",))
    other = EncryptedType(sa.String, context_columns=("org",))
    assert bound._static_cache_key != other._static_cache_key
    assert bound._static_cache_key != EncryptedType(sa.String)._static_cache_key
    assert repr(bound) == "EncryptedType(sa.String(), context_columns=('tenant_id',))"


def test_rewrap_verify_and_reencrypt_use_each_rows_context(
    engine: sa.Engine, models: Models, encryptor: Encryptor
) -> None:
    from sqla_envelope import LocalKeyring
    from sqla_envelope.maintenance import reencrypt, rewrap, verify

    seed(engine, models)
    column = models.Patient.ssn
    assert verify(engine, column).failed == 0
    new = LocalKeyring.generate()
    assert rewrap(engine, column, new) == 2
    sqla_envelope.configure(Encryptor(new))
    with Session(engine) as session:
        assert session.get(models.Patient, 2).ssn == "222-22-2222"  # type: ignore[union-attr]
    assert reencrypt(engine, column).changed == 2
    assert verify(engine, column).failed == 0
    with engine.begin() as conn:  # a copy across tenants is what verify reports
        conn.execute(sa.text("UPDATE rowctx_patients SET tenant_id = 8 WHERE id = 1"))
    report = verify(engine, column)
    assert report.failed == 1 and report.failures[0][0] == (1,)
    assert "tenant_id='8'" in report.failures[0][1]


def test_encrypt_and_decrypt_column_in_place_bind_each_row(
    engine: sa.Engine, models: Models, encryptor: Encryptor
) -> None:
    from sqla_envelope.migrations import decrypt_column, encrypt_column

    with engine.begin() as conn:  # plaintext, as before the column was encrypted
        for i, tenant in ((1, 7), (2, 8)):
            conn.execute(
                sa.text("INSERT INTO rowctx_patients (id, tenant_id, ssn) VALUES (:i, :t, :v)"),
                {"i": i, "t": tenant, "v": f"plain-{i}".encode()},
            )
    assert encrypt_column(engine, models.Patient.ssn).changed == 2
    envelope = bytes(stored(engine, "rowctx_patients", 2))
    context = {"table": "rowctx_patients", "column": "ssn", "tenant_id": "8"}
    assert encryptor.decrypt(envelope, context) == b"plain-2"
    assert decrypt_column(engine, models.Patient.ssn).changed == 2
    assert bytes(stored(engine, "rowctx_patients", 1)) == b"plain-1"


def test_relationships_eager_loads_and_self_joins_read_each_rows_tenant(
    engine: sa.Engine, base: type[DeclarativeBase], encryptor: Encryptor
) -> None:
    from sqlalchemy.orm import aliased, joinedload, relationship, selectinload

    class Org(base):  # type: ignore[valid-type, misc]
        __tablename__ = "rowctx_orgs"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        people: Mapped[list[Person]] = relationship(back_populates="org")

    class Person(base):  # type: ignore[valid-type, misc]
        __tablename__ = "rowctx_people"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        tenant_id: Mapped[int] = mapped_column(sa.ForeignKey("rowctx_orgs.id"))
        org: Mapped[Org] = relationship(back_populates="people")
        ssn: Mapped[str] = mapped_column(
            EncryptedType(sa.String(20), context_columns=("tenant_id",))
        )

    base.metadata.create_all(engine)
    with Session(engine) as session:  # the tenant set through the relationship
        first, second = Org(id=1), Org(id=2)
        session.add_all([Person(id=1, org=first, ssn="a-1"), Person(id=2, org=second, ssn="b-2")])
        session.commit()
    for option in (joinedload(Org.people), selectinload(Org.people)):
        with Session(engine) as session:
            orgs = session.scalars(sa.select(Org).options(option).order_by(Org.id)).unique()
            assert [[p.ssn for p in org.people] for org in orgs] == [["a-1"], ["b-2"]]
    with Session(engine) as session:
        other = aliased(Person)
        pairs = session.execute(
            sa.select(Person, other).join(other, other.id != Person.id).order_by(Person.id)
        ).all()
        assert [(x.ssn, y.ssn) for x, y in pairs] == [("a-1", "b-2"), ("b-2", "a-1")]


def test_a_core_update_that_moves_a_row_must_set_its_bound_values_again(
    engine: sa.Engine, models: Models
) -> None:
    """Values left bound to the old tenant would never decrypt: the UPDATE is refused."""
    seed(engine, models)
    table = models.Patient.__table__
    before = stored(engine, "rowctx_patients", 1)
    with engine.begin() as conn, pytest.raises(ConfigurationError, match="unreadable"):
        conn.execute(table.update().where(table.c.id == 1).values(tenant_id=9))
    with engine.begin() as conn, pytest.raises(ConfigurationError, match="unreadable"):
        conn.execute(
            table.update().where(table.c.id == sa.bindparam("i")), [{"i": 1, "tenant_id": 9}]
        )
    assert stored(engine, "rowctx_patients", 1) == before
    with engine.begin() as conn:  # set again with the move: fine, NULL included
        conn.execute(table.update().where(table.c.id == 1).values(tenant_id=9, ssn="111-11-1111"))
        conn.execute(table.update().where(table.c.id == 2).values(tenant_id=9, ssn=None))
    with Session(engine) as session:
        assert session.get(models.Patient, 1).ssn == "111-11-1111"  # type: ignore[union-attr]
        nobody = session.get(models.Patient, 2)
        assert nobody is not None and nobody.ssn is None
        nobody.tenant_id = 10  # the ORM moves a row with a NULL value too
        session.commit()


def test_a_row_whose_tenant_was_set_null_behind_the_app_reads_as_an_error(
    engine: sa.Engine, models: Models
) -> None:
    seed(engine, models)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE rowctx_patients SET tenant_id = NULL WHERE id = 1"))
    with Session(engine) as session, pytest.raises(DecryptionError, match="tenant_id hold no"):
        session.get(models.Patient, 1)
    with Session(engine) as session:  # the other row is untouched
        assert session.get(models.Patient, 2).ssn == "222-22-2222"  # type: ignore[union-attr]


def test_a_sealed_value_opens_only_with_every_bound_value(
    engine: sa.Engine, models: Models
) -> None:
    seed(engine, models)
    table = models.Patient.__table__
    with engine.connect() as conn:
        sealed = conn.execute(sa.select(table.c.ssn).where(table.c.id == 1)).scalar_one()
    with pytest.raises(ConfigurationError, match="needs the row's tenant_id"):
        sealed.open()
    with pytest.raises(ConfigurationError, match="str, int or UUID"):
        sealed.open(tenant_id=7.0)
    with pytest.raises(InvalidValueError, match="NULL"):
        sealed.open(tenant_id=None)
    assert sealed.open(models.Patient(id=1, tenant_id=7)) == "111-11-1111"  # an ORM object


def tenant_typed_table(engine: sa.Engine, metadata: sa.MetaData, tenant_type: Any) -> sa.Table:
    table = sa.Table(
        "rowctx_typed_tenant",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("tenant_id", tenant_type),
        sa.Column("ssn", EncryptedType(sa.String(40), context_columns=("tenant_id",))),
    )
    metadata.create_all(engine)
    return table


def count_rows(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


@pytest.mark.parametrize(
    ("tenant_type", "tenant"),
    [(sa.Numeric(10, 0), 7), (sa.CHAR(8), "acme"), (sa.Float, 7)],
)
def test_a_bound_column_that_does_not_return_its_text_as_written_is_refused(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor, tenant_type: Any, tenant: Any
) -> None:
    # A NUMERIC comes back a Decimal, a CHAR padded (PostgreSQL) or trimmed
    # (MariaDB): a value bound to its text was stored, and never read again.
    table = tenant_typed_table(engine, metadata, tenant_type)
    with (
        pytest.raises(ConfigurationError, match="str, int or UUID") as raised,
        engine.begin() as conn,
    ):
        conn.execute(table.insert(), {"id": 1, "tenant_id": tenant, "ssn": SECRET})
    assert SECRET not in str(raised.value)
    assert count_rows(engine, table) == 0


@pytest.mark.parametrize(
    ("tenant_type", "given", "accepted"),
    [
        (sa.Integer, "07", False),
        (sa.Integer, " 7", False),
        (sa.Integer, "7", True),
        (sa.Uuid(as_uuid=False), "abcdef78-1234-5678-1234-567812345678".upper(), False),
        (sa.Uuid(as_uuid=False), "abcdef78123456781234567812345678", False),
        (sa.Uuid(as_uuid=False), "abcdef78-1234-5678-1234-567812345678", True),
        (sa.Uuid, uuid.UUID("abcdef78-1234-5678-1234-567812345678"), True),
    ],
)
def test_a_bound_value_the_database_would_store_in_another_form_is_refused(
    engine: sa.Engine,
    metadata: sa.MetaData,
    encryptor: Encryptor,
    tenant_type: Any,
    given: Any,
    accepted: bool,
) -> None:
    # "07" in an INTEGER column is stored as 7: bound to "07", the value would
    # never decrypt in its row again. Refused, or read back as written.
    table = tenant_typed_table(engine, metadata, tenant_type)
    row = {"id": 1, "tenant_id": given, "ssn": SECRET}
    if not accepted:
        with (
            pytest.raises(ConfigurationError, match="as the database stores it"),
            engine.begin() as conn,
        ):
            conn.execute(table.insert(), row)
        assert count_rows(engine, table) == 0
        return
    with engine.begin() as conn:
        conn.execute(table.insert(), row)
    with engine.connect() as conn:
        assert conn.execute(sa.select(table)).one().ssn == SECRET


def test_a_tenant_in_the_primary_key_binds_updates_of_the_orm_and_by_primary_key(
    engine: sa.Engine, models: Models
) -> None:
    # The ORM sends an unchanged primary key in the WHERE clause, never in SET:
    # an UPDATE of the value must take the tenant from there.
    Member, Seat = models.Member, models.Seat
    with Session(engine) as session:
        session.add_all([Member(tenant_id="acme", id=1, ssn="a"), Seat(tenant_id=7, id=1, ssn="a")])
        session.commit()
    with Session(engine) as session:
        member, seat = _one(session, Member, ("acme", 1)), _one(session, Seat, (7, 1))
        member.ssn, seat.ssn = "b", "b"
        session.commit()
    with Session(engine) as session:
        assert _one(session, Member, ("acme", 1)).ssn == "b"
        # An int tenant compares exactly everywhere: a bulk UPDATE by primary key binds.
        session.execute(sa.update(Seat), [{"tenant_id": 7, "id": 1, "ssn": "c"}])
        session.commit()
    with Session(engine) as session:
        assert _one(session, Seat, (7, 1)).ssn == "c"
        assert _one(session, Member, ("acme", 1)).ssn == "b"
        # Text is not exact everywhere (MariaDB finds 'acme' with 'ACME' or 'acme '):
        # by primary key, without an object the ORM loaded, it is refused.
        with pytest.raises(ConfigurationError, match="without its row's tenant_id"):
            session.execute(sa.update(Member), [{"tenant_id": "ACME", "id": 1, "ssn": SECRET}])
        session.rollback()
        table = Member.__table__
        update = (
            table.update()
            .where(table.c.tenant_id == sa.bindparam("t"), table.c.id == sa.bindparam("i"))
            .values(ssn=sa.bindparam("ssn"))
        )
        with pytest.raises(ConfigurationError), engine.begin() as conn:
            conn.execute(update, {"t": "acme ", "i": 1, "ssn": SECRET})
    with Session(engine) as session:
        assert _one(session, Member, ("acme", 1)).ssn == "b"


def upsert_moving_tenant(engine: sa.Engine, table: sa.Table) -> Any:
    """INSERT ... ON CONFLICT / ON DUPLICATE KEY UPDATE setting only the tenant, per dialect."""
    if engine.dialect.name in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        statement = mysql_insert(table).values(id=1, tenant_id=8, ssn="999-99-9999")
        return statement.on_duplicate_key_update(tenant_id=statement.inserted.tenant_id)
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    upsert = insert(table).values(id=1, tenant_id=8, ssn="999-99-9999")
    return upsert.on_conflict_do_update(
        index_elements=["id"], set_={"tenant_id": upsert.excluded.tenant_id}
    )


@pytest.mark.parametrize("how", ["upsert", "from-select"])
def test_an_upsert_or_insert_from_select_that_would_strand_a_value_is_refused(
    engine: sa.Engine, models: Models, how: str
) -> None:
    # An upsert that moves the existing row to another tenant leaves its value
    # bound to the old one; INSERT ... SELECT copies values into rows of any
    # tenant. Both stored values that never decrypt again.
    seed(engine, models)
    table = models.Patient.__table__
    if how == "upsert":
        statement = upsert_moving_tenant(engine, table)
    else:
        statement = table.insert().from_select(
            ["id", "tenant_id", "ssn"],
            sa.select(table.c.id + 10, sa.literal(9), table.c.ssn),
        )
    before = {i: stored(engine, "rowctx_patients", i) for i in (1, 2)}
    with pytest.raises(ConfigurationError) as raised, engine.begin() as conn:
        conn.execute(statement)
    assert SECRET not in str(raised.value)
    assert {i: stored(engine, "rowctx_patients", i) for i in (1, 2)} == before
    with Session(engine) as session:
        rows = session.scalars(sa.select(models.Patient).order_by(models.Patient.id)).all()
        assert [(p.id, p.tenant_id, p.ssn) for p in rows] == [
            (1, 7, "111-11-1111"),
            (2, 8, "222-22-2222"),
        ]


class Shard(int):
    """An int whose str() is not its digits, as an IntEnum's is on Python 3.10."""

    def __str__(self) -> str:
        return "Shard.ONE"


class Label(str):
    """A str whose str() is not its text, as a (str, Enum) member's is."""

    def __str__(self) -> str:
        return "Label.EU"


def test_int_and_str_subclasses_bind_by_their_value_as_the_database_returns_it(
    engine: sa.Engine, models: Models
) -> None:
    # The database stores "eu" (and 1), and returns them as such: bound to
    # str(value), the value was stored and never decrypted again.
    from sqla_envelope.rows.values import text_of

    assert (text_of("t.c", "n", Shard(1)), text_of("t.c", "n", Label("eu"))) == ("1", "eu")
    assert type(text_of("t.c", "n", Label("eu"))) is str
    with Session(engine) as session:
        session.add(models.Account(id=1, org=uuid.uuid4(), region=Label("eu"), token="tok"))
        if engine.dialect.name == "sqlite":  # its driver stores the int itself, not str()
            session.add(models.Patient(id=1, tenant_id=Shard(1), ssn="111"))
        session.commit()
    with Session(engine) as session:
        assert _one(session, models.Account, 1).token == "tok"
        patient = session.get(models.Patient, 1)
        assert patient is None or patient.ssn == "111"


def test_the_orm_moves_a_row_whose_tenant_is_part_of_its_primary_key(
    engine: sa.Engine, models: Models
) -> None:
    # The ORM finds the row by the primary key it loaded: re-flagging the changed
    # tenant made it look for the new one, and the UPDATE matched nothing.
    Card = models.Member
    with Session(engine) as session:
        session.add(Card(tenant_id="acme", id=1, ssn="4111", cvc="123"))
        session.commit()
    with Session(engine) as session:
        card = _one(session, Card, ("acme", 1))
        card.tenant_id = "globex"
        session.commit()
    with Session(engine) as session:
        assert session.get(Card, ("acme", 1)) is None
        card = _one(session, Card, ("globex", 1))
        assert (card.ssn, card.cvc) == ("4111", "123")
        card.tenant_id = "globex"  # set to the value it holds, with a new value
        card.ssn = "4222"
        session.commit()
    with Session(engine) as session:
        assert _one(session, Card, ("globex", 1)).ssn == "4222"
    seed(engine, models)  # a tenant outside the key, set to its own value too
    with Session(engine) as session:
        patient = _one(session, models.Patient, 1)
        patient.tenant_id, patient.ssn = 7, "999-99-9999"
        session.commit()
    with Session(engine) as session:
        assert _one(session, models.Patient, 1).ssn == "999-99-9999"


def test_one_of_two_values_bound_to_a_tenant_changes_through_the_orm(
    engine: sa.Engine, models: Models
) -> None:
    # The UPDATE of one value carries the tenant, and a statement that sets the
    # tenant without every value bound to it is refused: changing one value of
    # a row with two was refused. The other is written again with it.
    letter_type = models.Letter
    with Session(engine) as session:
        session.add(letter_type(id=1, tenant_id=7, body="dear", sig="ada"))
        session.commit()
    with Session(engine) as session:
        letter = _one(session, letter_type, 1)
        letter.body = "dear all"
        session.commit()
    with Session(engine) as session:
        letter = _one(session, letter_type, 1)
        assert (letter.body, letter.sig) == ("dear all", "ada")
        letter.sig = "alan"  # the deferred one, the other loaded
        session.commit()
    with Session(engine) as session:
        letter = _one(session, letter_type, 1)
        assert (letter.body, letter.sig) == ("dear all", "alan")
        # A bulk UPDATE that gives the tenant cannot tell it from a move: refused
        # unless it writes every value bound to it.
        rows = [{"id": 1, "tenant_id": 7, "body": SECRET}]
        with pytest.raises(ConfigurationError, match=r"without rowctx_letters\.sig"):
            session.execute(sa.update(letter_type), rows)
        session.rollback()
        session.execute(sa.update(letter_type), [{**rows[0], "sig": "grace"}])
        session.commit()
    with Session(engine) as session:
        letter = _one(session, letter_type, 1)
        assert (letter.body, letter.sig) == (SECRET, "grace")


def test_parameters_that_override_values_bind_the_value_to_what_the_row_holds(
    engine: sa.Engine, models: Models
) -> None:
    # Execution parameters override a statement's own .values(): the value was
    # bound to the tenant of .values() and stored in a row of the parameters' one.
    table = models.Patient.__table__
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, ssn="111", tenant_id=7), {"tenant_id": 8})
        conn.execute(table.insert().values(id=2, tenant_id=7), {"ssn": "222"})
        conn.execute(
            table.update().where(table.c.id == 2).values(ssn="333", tenant_id=7),
            {"tenant_id": 9},
        )
    with Session(engine) as session:
        rows = session.scalars(sa.select(models.Patient).order_by(models.Patient.id)).all()
        assert [(p.tenant_id, p.ssn) for p in rows] == [(8, "111"), (9, "333")]


def test_values_given_as_renamed_parameters_bind(engine: sa.Engine, models: Models) -> None:
    # SQLAlchemy's executemany UPDATE: .values(col=bindparam("other_name")).
    seed(engine, models)
    table = models.Patient.__table__
    update = (
        table.update()
        .where(table.c.id == sa.bindparam("row_id"))
        .values(ssn=sa.bindparam("new_ssn"), tenant_id=sa.bindparam("new_tenant"))
    )
    with engine.begin() as conn:
        conn.execute(
            update,
            [
                {"row_id": 1, "new_ssn": "333", "new_tenant": 7},
                {"row_id": 2, "new_ssn": "444", "new_tenant": 9},
            ],
        )
        with pytest.raises(ConfigurationError, match="without its row's tenant_id"):
            conn.execute(
                table.update()
                .where(table.c.id == sa.bindparam("row_id"))
                .values(ssn=sa.bindparam("new_ssn")),
                [{"row_id": 1, "new_ssn": SECRET}],
            )
    with Session(engine) as session:
        rows = session.scalars(sa.select(models.Patient).order_by(models.Patient.id)).all()
        assert [(p.tenant_id, p.ssn) for p in rows] == [(7, "333"), (9, "444")]
