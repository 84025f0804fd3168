"""TypeDecorators as logical types, sqlalchemy-utils' and an application's own."""

from __future__ import annotations

import json
import uuid
import warnings
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql.cache_key import NO_CACHE
from sqlalchemy_utils import (
    ChoiceType,
    ColorType,
    EmailType,
    JSONType,
    PhoneNumberType,
    ScalarListType,
    URLType,
    UUIDType,
)
from sqlalchemy_utils.types.phone_number import PhoneNumber

from sqla_envelope import (
    ConfigurationError,
    DecryptionError,
    EncryptedType,
    Encryptor,
    InvalidValueError,
    UnsupportedComparisonError,
)
from sqla_envelope.maintenance import verify
from sqla_envelope.migrations import encrypt_column

PHONE = PhoneNumber("(555) 555-5555", "US")
SECRET = "a secret of more than sixteen characters"


class Lowered(sa.TypeDecorator[str]):
    """An application's own decorator: stores its text lower-cased, reads it upper-cased."""

    impl = sa.String(24)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value is None else value.lower()

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value is None else value.upper()


class Tagged(sa.TypeDecorator[str]):
    """A decorator over a decorator: the order of the two conversions shows."""

    impl = Lowered
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value is None else f"<{value}>"

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value is None else f"[{value}]"


class EmptyAsNull(sa.TypeDecorator[str]):
    """Stores None as an empty string and reads an empty string as None."""

    impl = sa.String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        return "" if value is None else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value == "" else value


class Quoting(sa.TypeDecorator[str]):
    """A careless decorator whose errors quote the value, writing and reading."""

    impl = sa.String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value.startswith("bad"):
            raise ValueError(f"cannot store {value!r}")
        return value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is not None and value.startswith("ok-but-unreadable"):
            raise ValueError(f"cannot read {value!r}")
        return value


class Passthrough(sa.TypeDecorator[int]):
    """A decorator that converts nothing (it may change only comparisons or DDL)."""

    impl = sa.Integer
    cache_ok = True


# (id, logical type, value written, what is read back compared as, plaintext encrypted)
DECORATED: list[tuple[str, Any, Any, Any, bytes]] = [
    ("phone", PhoneNumberType, "(555) 555-5555", PHONE, b"+15555555555"),
    ("color", ColorType, "#fff", "#fff", b"#fff"),
    ("json", JSONType, {"key": "välue"}, {"key": "välue"}, b'{"key": "v\\u00e4lue"}'),
    ("choice", ChoiceType([("s", "Small"), ("l", "Large")]), "l", "l", b"l"),
    ("scalar_list", ScalarListType(int), [1, 2, 3], [1, 2, 3], b"1,2,3"),
    ("email", EmailType, "Ada@Example.COM", "ada@example.com", b"ada@example.com"),
    ("url", URLType, "https://example.com/a?b=c", "https://example.com/a?b=c", b""),
    (
        "uuid_binary",
        UUIDType,
        uuid.UUID(int=7),
        uuid.UUID(int=7),
        uuid.UUID(int=7).bytes,
    ),
    ("app_lowered", Lowered, "MiXeD Case", "MIXED CASE", b"mixed case"),
    ("app_chain", Tagged, "AbC", "[<ABC>]", b"<abc>"),
    ("app_passthrough", Passthrough, 7, 7, (7).to_bytes(8, "big")),
]


def _comparable(value: Any) -> Any:
    """What a read value is compared as: colours and URLs by their text, choices by code."""
    kind = type(value).__name__
    if kind == "Color":
        return value.hex
    if kind in ("URL", "Choice"):
        return str(value) if kind == "URL" else value.code
    return value


def _table(metadata: sa.MetaData, *columns: sa.Column[Any]) -> sa.Table:
    return sa.Table("decorated", metadata, sa.Column("id", sa.Integer, primary_key=True), *columns)


def _decrypt_raw(engine: sa.Engine, encryptor: Encryptor, table: str, column: str) -> bytes:
    with engine.connect() as conn:
        stored = conn.execute(sa.text(f"SELECT {column} FROM {table} WHERE id = 1")).scalar()
    return encryptor.decrypt(bytes(stored), {"table": table, "column": column})


@pytest.mark.parametrize(
    ("logical", "written", "expected", "plaintext"),
    [case[1:] for case in DECORATED],
    ids=[case[0] for case in DECORATED],
)
def test_a_decorated_type_round_trips_through_its_own_conversions(
    engine: sa.Engine,
    base: type[DeclarativeBase],
    encryptor: Encryptor,
    logical: Any,
    written: Any,
    expected: Any,
    plaintext: bytes,
) -> None:
    class Record(base):  # type: ignore[valid-type,misc]
        __tablename__ = "records"
        id: Mapped[int] = mapped_column(primary_key=True)
        secret: Mapped[Any] = mapped_column(EncryptedType(logical), nullable=True)

    base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Record(id=1, secret=written))
        session.commit()
    with Session(engine) as session:
        loaded = session.get(Record, 1)
        assert loaded is not None
        assert _comparable(loaded.secret) == expected
    # What is encrypted is the impl's value, as a plaintext column of the decorator
    # would store it, and the same on every database (JSONType's PostgreSQL path
    # would hand a dict to the impl's codec).
    if plaintext:
        assert _decrypt_raw(engine, encryptor, "records", "secret") == plaintext


def test_the_python_type_is_the_decorators() -> None:
    assert EncryptedType(PhoneNumberType).python_type is PhoneNumber


def test_the_declared_length_of_the_impl_holds(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    table = _table(
        metadata,
        sa.Column("name", EncryptedType(Lowered)),  # String(24) underneath
        sa.Column("color", EncryptedType(ColorType(max_length=3))),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, name="x" * 24, color="red"))
    too_long = r"longer than the declared String\(24\)"
    with pytest.raises(InvalidValueError, match=too_long), engine.begin() as conn:
        conn.execute(table.insert().values(id=2, name="x" * 25))
    too_long = r"4 characters .* String\(3\)"
    with pytest.raises(InvalidValueError, match=too_long), engine.begin() as conn:
        conn.execute(table.insert().values(id=3, color="#fff"))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 1


def test_a_decorator_that_stores_none_as_a_value_is_encrypted(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    # SQLAlchemy calls a TypeDecorator for None too; a plaintext column of this
    # type holds '' for None, so the encrypted one holds an envelope of ''.
    table = _table(metadata, sa.Column("note", EncryptedType(EmptyAsNull)))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, note=None))
        assert conn.execute(sa.select(table.c.note)).scalar() is None
    assert _decrypt_raw(engine, encryptor, "decorated", "note") == b""


def test_a_decorators_error_names_it_and_never_the_value(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    table = _table(metadata, sa.Column("note", EncryptedType(Quoting)))
    metadata.create_all(engine)
    with pytest.raises(InvalidValueError) as written, engine.begin() as conn:
        conn.execute(table.insert().values(id=1, note="bad " + SECRET))
    message = str(written.value)
    assert "decorated.note" in message and "Quoting" in message and "ValueError" in message
    assert SECRET not in message
    assert written.value.__context__ is None and written.value.__cause__ is None

    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, note="ok-but-unreadable " + SECRET))
    with pytest.raises(DecryptionError) as read, engine.connect() as conn:
        conn.execute(sa.select(table.c.note)).scalar()
    message = str(read.value)
    assert "decorated.note" in message and "not a valid Quoting value: ValueError" in message
    assert SECRET not in message
    assert read.value.__context__ is None and read.value.__cause__ is None


def test_comparisons_stay_refused() -> None:
    column = sa.Column("phone", EncryptedType(PhoneNumberType))
    with pytest.raises(UnsupportedComparisonError):
        column == "(555) 555-5555"  # noqa: B015


@pytest.mark.parametrize(
    ("logical", "names"),
    [
        (sa.PickleType, ["PickleType", "bind_processor()"]),
        (sa.ARRAY(sa.Integer), ["ARRAY", "TypeDecorators over them"]),
    ],
    ids=["driver_processing", "unsupported_impl"],
)
def test_what_cannot_be_encrypted_is_refused_by_name(logical: Any, names: list[str]) -> None:
    with pytest.raises(ConfigurationError) as refused:
        EncryptedType(logical)
    for name in names:
        assert name in str(refused.value)


def test_a_decorator_over_an_unsupported_type_names_both() -> None:
    class Coordinates(sa.TypeDecorator[list[float]]):
        impl = sa.ARRAY(sa.Float)
        cache_ok = True

    with pytest.raises(ConfigurationError, match=r"Coordinates \(a TypeDecorator over ARRAY\)"):
        EncryptedType(Coordinates)


def test_a_decorator_over_an_encrypted_type_is_refused() -> None:
    class Doubly(sa.TypeDecorator[str]):
        impl = EncryptedType(sa.String, context={"label": "inner"})
        cache_ok = True

    with pytest.raises(ConfigurationError, match="cannot wrap another EncryptedType"):
        EncryptedType(Doubly)


class Uppered(Lowered):
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value is None else value.upper()


def test_two_decorators_never_share_compiled_processors(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    # The same SQL with a type over the same impl: the statement cache must key
    # the decorator too, or the second would run the first's conversion.
    _table(metadata, sa.Column("note", sa.LargeBinary))
    metadata.create_all(engine)
    insert = sa.text("INSERT INTO decorated (id, note) VALUES (:id, :note)")
    for row, logical in ((1, Lowered), (2, Uppered)):
        typed = EncryptedType(logical, context={"label": "notes"})
        with engine.begin() as conn:
            conn.execute(
                insert.bindparams(sa.bindparam("note", type_=typed)), {"id": row, "note": "MiXeD"}
            )
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.text("SELECT id, note FROM decorated")).all())
    assert encryptor.decrypt(bytes(stored[1]), {"label": "notes"}) == b"mixed"
    assert encryptor.decrypt(bytes(stored[2]), {"label": "notes"}) == b"MIXED"
    keys = {
        EncryptedType(Lowered)._static_cache_key,
        EncryptedType(Uppered)._static_cache_key,
        EncryptedType(sa.String(24))._static_cache_key,
        EncryptedType(ColorType(max_length=20))._static_cache_key,
        EncryptedType(ColorType(max_length=30))._static_cache_key,
    }
    assert len(keys) == 5


def test_a_decorator_without_cache_ok_leaves_the_statement_uncached() -> None:
    class Uncached(sa.TypeDecorator[str]):
        impl = sa.String

        def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
            return value

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)  # SQLAlchemy's own cache_ok warning
        assert EncryptedType(Uncached)._static_cache_key is NO_CACHE


def test_the_codec_converts_application_values(encryptor: Encryptor) -> None:
    codec = EncryptedType(PhoneNumberType).codec
    assert codec.encode("(555) 555-5555") == b"+15555555555"
    assert codec.decode(b"+15555555555") == PhoneNumber("(555) 555-5555", "US")
    assert json.loads(EncryptedType(JSONType).codec.encode({"a": 1})) == {"a": 1}


def test_encrypt_column_from_a_plaintext_decorated_column(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    table = _table(
        metadata,
        sa.Column("phone", PhoneNumberType),
        sa.Column("phone_enc", EncryptedType(PhoneNumberType)),
    )
    metadata.create_all(engine)
    numbers = {1: "(555) 555-5555", 2: "+44 20 7946 0958", 3: None}
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "phone": n} for i, n in numbers.items()])
    report = encrypt_column(engine, table.c.phone_enc, source=table.c.phone)
    assert report.changed == 2
    assert verify(engine, table.c.phone_enc).failed == 0
    with engine.connect() as conn:
        read = dict(conn.execute(sa.select(table.c.id, table.c.phone_enc)).all())
    assert read == {i: PhoneNumber(n, "US") if n else None for i, n in numbers.items()}


def test_allow_plaintext_reads_legacy_values_through_the_decorator(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    _table(metadata, sa.Column("phone", sa.LargeBinary))
    metadata.create_all(engine)
    with engine.begin() as conn:
        # Columns named: a pooled SQLite connection that last saw the previous test's
        # three-column "decorated" compiles a bare VALUES against that stale schema.
        conn.execute(
            sa.text("INSERT INTO decorated (id, phone) VALUES (1, :p)"), {"p": b"+15555555555"}
        )
    reading = sa.Table(
        "decorated",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("phone", EncryptedType(PhoneNumberType, allow_plaintext=True)),
    )
    with engine.connect() as conn:
        assert conn.execute(sa.select(reading.c.phone)).scalar() == PHONE
