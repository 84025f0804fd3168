"""An encrypted column keeps the promises of its declaration, or refuses it.

Issue 13: EncryptedType(String(5)) stored 12 characters (the example Django app
30 into String(20)), and unique=True let a duplicate commit, every value being
a different ciphertext.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqla_envelope import ConfigurationError, EncryptedType, Encryptor, InvalidValueError


def _table(metadata: sa.MetaData, type_: EncryptedType) -> sa.Table:
    return sa.Table(
        "declared",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("v", type_),
    )


def _stored(engine: sa.Engine, table: sa.Table) -> dict[int, object]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(table.c.id, table.c.v)).all())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("logical", "fits", "too_long", "unit"),
    [
        (sa.String(5), "abcde", "abcdef", "characters"),
        (sa.Unicode(5), "ééééé", "éééééé", "characters"),  # characters, not UTF-8 bytes
        (sa.LargeBinary(4), b"\x00\x01\x02\x03", b"\x00\x01\x02\x03\x04", "bytes"),
    ],
)
def test_a_value_longer_than_the_declared_length_is_refused_and_nothing_stored(
    engine: sa.Engine,
    metadata: sa.MetaData,
    encryptor: Encryptor,
    logical: sa.types.TypeEngine[object],
    fits: object,
    too_long: object,
    unit: str,
) -> None:
    table = _table(metadata, EncryptedType(logical))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, v=fits))
    refused = pytest.raises(InvalidValueError, match=f"of 6 {unit}|of 5 {unit}")
    with refused as caught, engine.begin() as conn:
        conn.execute(table.insert(), [{"id": 2, "v": fits}, {"id": 3, "v": too_long}])
    assert "declared.v" in str(caught.value)
    assert str(too_long) not in str(caught.value)
    assert _stored(engine, table) == {1: fits}


def test_check_length_false_lets_longer_values_through(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    table = _table(metadata, EncryptedType(sa.String(5), check_length=False))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, v="twelve chars"))
    assert _stored(engine, table) == {1: "twelve chars"}
    assert repr(table.c.v.type) == "EncryptedType(sa.String(length=5), check_length=False)"


def test_the_orm_refuses_too_long_values_at_flush(engine: sa.Engine, encryptor: Encryptor) -> None:
    class Base(DeclarativeBase):
        pass

    class Person(Base):
        __tablename__ = "declared_people"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(EncryptedType(sa.String(20)))

    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            session.add(Person(id=1, name="a name of thirty characters!!"))
            with pytest.raises(InvalidValueError, match="String\\(20\\)"):
                session.commit()
        with Session(engine) as session:
            assert session.scalars(sa.select(Person)).all() == []
    finally:
        Base.metadata.drop_all(engine)


@pytest.mark.parametrize("option", ["unique", "index"])
def test_unique_or_index_on_an_encrypted_column_is_refused_at_declaration(option: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{option}=True.*blind index"):
        sa.Column("email", EncryptedType(sa.String(100)), **{option: True})

    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match="blind index"):

        class User(Base):
            __tablename__ = "declared_users"
            id: Mapped[int] = mapped_column(primary_key=True)
            email: Mapped[str] = mapped_column(EncryptedType(sa.String(100)), **{option: True})


def test_a_unique_constraint_or_index_naming_an_encrypted_column_is_refused() -> None:
    metadata = sa.MetaData()
    columns = [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant", sa.Integer),
        sa.Column("email", EncryptedType(sa.String(100))),
    ]
    with pytest.raises(ConfigurationError, match="unique constraint on the encrypted column"):
        sa.Table("declared_a", metadata, *columns, sa.UniqueConstraint("tenant", "email"))
    table = sa.Table(
        "declared_b",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", EncryptedType(sa.String(100))),
        sa.Column("plain", sa.String(100)),
    )
    with pytest.raises(ConfigurationError, match="an index on the encrypted column"):
        sa.Index("ix_email", table.c.email)
    sa.Index("ix_plain", table.c.plain)  # plain columns keep their indexes
    assert sa.Column("n", EncryptedType(sa.String), nullable=False).nullable is False


def test_numeric_precision_and_scale_hold_as_on_a_plaintext_column(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    # Issue 18: EncryptedType(Numeric(10, 2)) kept 1.234, which the plaintext
    # column would round or refuse. Refused: a value is stored as written or not.
    from decimal import Decimal

    table = _table(metadata, EncryptedType(sa.Numeric(10, 2)))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": 1, "v": Decimal("12345678.99")}, {"id": 2, "v": 1.5}])
    for value, match in ((Decimal("1.234"), "decimal places"), (Decimal("123456789"), "digits")):
        with pytest.raises(InvalidValueError, match=match), engine.begin() as conn:
            conn.execute(table.insert().values(id=3, v=value))
    assert _stored(engine, table) == {1: Decimal("12345678.99"), 2: Decimal("1.5")}
