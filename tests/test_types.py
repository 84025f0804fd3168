"""EncryptedType behaviour, the same on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sqla_envelope
from sqla_envelope import (
    ConfigurationError,
    DecryptionError,
    EncryptedType,
    Encryptor,
    InvalidValueError,
    KeyringError,
    LocalKeyring,
    MalformedEnvelopeError,
    UnsupportedComparisonError,
)
from sqla_envelope.envelope import unpack


class Color(enum.Enum):
    RED = "r"
    GREEN = "g"


IST = dt.timezone(dt.timedelta(hours=5, minutes=30))

# (id, logical type, a value of it)
LOGICAL_VALUES: list[tuple[str, Any, Any]] = [
    ("string", sa.String(50), "héllo wörld ✓"),
    ("empty_string", sa.String, ""),
    ("text", sa.Text, "line\n" * 500),
    ("unicode", sa.Unicode(20), "日本語のテキスト"),
    ("binary", sa.LargeBinary, b"\x00\xff\x01bytes\x00"),
    ("integer", sa.Integer, -42),
    ("biginteger_max", sa.BigInteger, 2**63 - 1),
    ("biginteger_min", sa.BigInteger, -(2**63)),
    ("smallinteger", sa.SmallInteger, 7),
    ("numeric_scale", sa.Numeric(10, 2), Decimal("12345.60")),
    ("numeric_tiny", sa.Numeric, Decimal("-0.000123")),
    ("float", sa.Float, 3.141592653589793),
    ("double", sa.Double, -1e-300),
    ("boolean_true", sa.Boolean, True),
    ("boolean_false", sa.Boolean, False),
    ("date", sa.Date, dt.date(1987, 6, 5)),
    ("datetime_naive", sa.DateTime, dt.datetime(2024, 2, 29, 13, 14, 15, 123456)),
    (
        "datetime_aware",
        sa.DateTime(timezone=True),
        dt.datetime(2024, 2, 29, 13, 14, 15, tzinfo=IST),
    ),
    ("time", sa.Time, dt.time(23, 59, 58, 999)),
    ("interval", sa.Interval, dt.timedelta(days=-3, seconds=5, microseconds=7)),
    ("uuid", sa.Uuid, uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("uuid_as_str", sa.Uuid(as_uuid=False), "12345678-1234-5678-1234-567812345678"),
    ("enum_class", sa.Enum(Color), Color.GREEN),
    ("enum_strings", sa.Enum("small", "large", name="size"), "large"),
    ("json_object", sa.JSON, {"a": [1, 2.5, None, True], "b": {"c": "ü"}}),
    ("json_list", sa.JSON, [1, "two", [3]]),
]


def _secrets_table(
    metadata: sa.MetaData, *columns: sa.Column[Any], name: str = "secrets"
) -> sa.Table:
    return sa.Table(name, metadata, sa.Column("id", sa.Integer, primary_key=True), *columns)


def _raw(engine: sa.Engine, table: str, column: str, row_id: int = 1) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT {column} FROM {table} WHERE id = {row_id}")).scalar()


def _set_raw(engine: sa.Engine, table: sa.Table, column: str, value: Any, row_id: int = 1) -> None:
    raw = sa.table(table.name, sa.column("id"), sa.column(column, sa.LargeBinary))
    with engine.begin() as conn:
        conn.execute(sa.update(raw).where(raw.c.id == row_id).values({column: value}))


@pytest.mark.parametrize(
    ("logical", "value"),
    [(t, v) for _, t, v in LOGICAL_VALUES],
    ids=[i for i, _, _ in LOGICAL_VALUES],
)
def test_every_logical_type_round_trips_through_the_orm(
    engine: sa.Engine, base: type[DeclarativeBase], encryptor: Encryptor, logical: Any, value: Any
) -> None:
    class Record(base):  # type: ignore[valid-type,misc]
        __tablename__ = "records"
        id: Mapped[int] = mapped_column(primary_key=True)
        secret: Mapped[Any] = mapped_column(EncryptedType(logical), nullable=True)

    base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Record(id=1, secret=value))
        session.commit()
    with Session(engine) as session:
        loaded = session.get(Record, 1)
        assert loaded is not None
        assert type(loaded.secret) is type(value)
        assert loaded.secret == value
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            assert loaded.secret.utcoffset() == value.utcoffset()
        if isinstance(value, Decimal):
            assert loaded.secret.as_tuple() == value.as_tuple()


def test_none_is_stored_as_sql_null(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    table = _secrets_table(metadata, sa.Column("ssn", EncryptedType(sa.String(11))))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, ssn=None))
        assert conn.execute(sa.select(table.c.ssn)).scalar() is None
        assert conn.execute(sa.select(sa.func.count()).where(table.c.ssn.is_(None))).scalar() == 1
    assert _raw(engine, "secrets", "ssn") is None
    assert encryptor.stats()["wraps"] == 0


def test_core_insert_executemany_and_select(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    table = _secrets_table(
        metadata,
        sa.Column("ssn", EncryptedType(sa.String(11))),
        sa.Column("score", EncryptedType(sa.Integer)),
    )
    metadata.create_all(engine)
    rows = [{"id": i, "ssn": f"{i:03d}-00-0000", "score": i * 10} for i in range(1, 51)]
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=100, ssn="999-99-9999", score=-1))
        conn.execute(table.insert(), rows)
    with engine.connect() as conn:
        got = conn.execute(
            sa.select(table.c.id, table.c.ssn, table.c.score).order_by(table.c.id)
        ).all()
    assert [tuple(r) for r in got] == [(r["id"], r["ssn"], r["score"]) for r in rows] + [
        (100, "999-99-9999", -1)
    ]
    assert encryptor.stats()["wraps"] == 102  # a data key per value, none shared


def test_stored_value_is_a_versioned_envelope_not_the_plaintext(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor, keyring: LocalKeyring
) -> None:
    table = _secrets_table(metadata, sa.Column("ssn", EncryptedType(sa.String(11))))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(), [{"id": 1, "ssn": "123-45-6789"}, {"id": 2, "ssn": "123-45-6789"}]
        )
    first, second = (
        bytes(_raw(engine, "secrets", "ssn", 1)),
        bytes(_raw(engine, "secrets", "ssn", 2)),
    )
    assert b"123-45-6789" not in first
    assert first != second  # same plaintext, different data key and nonce
    parsed = unpack(first)
    assert parsed.version == 2
    assert [k.key_ref for k in parsed.wrapped_keys] == [keyring.primary]
    assert parsed.wrapped_keys[0].blob != unpack(second).wrapped_keys[0].blob
    assert parsed.commitment != unpack(second).commitment
    assert len(first) == 113 + len(keyring.primary) + len("123-45-6789")


def test_storage_type_is_binary_on_every_database(engine: sa.Engine, metadata: sa.MetaData) -> None:
    _secrets_table(
        metadata,
        sa.Column("short", EncryptedType(sa.Integer)),
        sa.Column("long", EncryptedType(sa.Text)),
    )
    metadata.create_all(engine)
    columns = {c["name"]: c["type"] for c in sa.inspect(engine).get_columns("secrets")}
    expected = {
        "sqlite": ("BLOB", "BLOB"),
        "postgresql": ("BYTEA", "BYTEA"),
        "mariadb": ("BLOB", "LONGBLOB"),
    }[engine.dialect.name]
    assert (type(columns["short"]).__name__, type(columns["long"]).__name__) == expected


def test_base64_storage_keeps_envelopes_as_text(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    table = _secrets_table(metadata, sa.Column("token", EncryptedType(sa.String, storage="base64")))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, token="tok_live_abc"))
    raw = _raw(engine, "secrets", "token")
    assert isinstance(raw, str) and "tok_live" not in raw
    import base64

    assert unpack(base64.b64decode(raw)).version == 2
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.token)).scalar() == "tok_live_abc"


@pytest.mark.parametrize(
    "logical", [sa.Text, sa.LargeBinary, sa.JSON], ids=["text", "binary", "json"]
)
def test_sixteen_mebibyte_values_are_stored(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor, logical: Any
) -> None:
    size = 16 * 1024 * 1024
    value: Any = {
        sa.Text: "a" * size,
        sa.LargeBinary: bytes(range(256)) * (size // 256),
        sa.JSON: ["x" * (size - 8)],
    }[logical]
    table = _secrets_table(metadata, sa.Column("blob", EncryptedType(logical)))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, blob=value))
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.blob)).scalar() == value


# -- binding to table and column --------------------------------------------------------


def test_value_copied_to_another_column_fails(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    table = _secrets_table(
        metadata,
        sa.Column("ssn", EncryptedType(sa.String)),
        sa.Column("passport", EncryptedType(sa.String)),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, ssn="123-45-6789", passport="X1"))
    _set_raw(engine, table, "passport", bytes(_raw(engine, "secrets", "ssn")))
    with engine.connect() as conn, pytest.raises(DecryptionError) as failure:
        conn.execute(sa.select(table.c.passport)).scalar()
    assert "secrets.passport" in str(failure.value)
    assert "123-45-6789" not in str(failure.value)


def test_value_copied_to_another_table_fails(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    users = _secrets_table(metadata, sa.Column("ssn", EncryptedType(sa.String)), name="users")
    admins = _secrets_table(metadata, sa.Column("ssn", EncryptedType(sa.String)), name="admins")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(users.insert().values(id=1, ssn="123-45-6789"))
        conn.execute(admins.insert().values(id=1, ssn="000-00-0000"))
    _set_raw(engine, admins, "ssn", bytes(_raw(engine, "users", "ssn")))
    with engine.connect() as conn, pytest.raises(DecryptionError):
        conn.execute(sa.select(admins.c.ssn)).scalar()
    encryptor.clear_cache()
    with engine.connect() as conn, pytest.raises(DecryptionError):
        conn.execute(sa.select(admins.c.ssn)).scalar()


def test_context_label_survives_a_table_rename(engine: sa.Engine, encryptor: Encryptor) -> None:
    before = sa.MetaData()
    old = sa.Table(
        "people_old",
        before,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ssn", EncryptedType(sa.String, context={"label": "person.ssn"})),
    )
    before.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(old.insert().values(id=1, ssn="123-45-6789"))
            conn.execute(sa.text("ALTER TABLE people_old RENAME TO people_new"))
        after = sa.MetaData()
        new = sa.Table(
            "people_new",
            after,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("ssn", EncryptedType(sa.String, context={"label": "person.ssn"})),
        )
        with engine.connect() as conn:
            assert conn.execute(sa.select(new.c.ssn)).scalar() == "123-45-6789"
        default_bound = sa.Table(
            "people_new",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("ssn", EncryptedType(sa.String)),
        )
        with engine.connect() as conn, pytest.raises(DecryptionError):
            conn.execute(sa.select(default_bound.c.ssn)).scalar()
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS people_new"))
            conn.execute(sa.text("DROP TABLE IF EXISTS people_old"))


def test_default_context_names_schema_qualified_table_and_column() -> None:
    md = sa.MetaData()
    plain = sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ssn", EncryptedType()),
    )
    qualified = sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ssn", EncryptedType()),
        schema="hr",
    )
    assert dict(plain.c.ssn.type.encryption_context()) == {"table": "users", "column": "ssn"}
    assert dict(qualified.c.ssn.type.encryption_context()) == {"table": "hr.users", "column": "ssn"}


def test_one_type_instance_shared_by_two_columns_binds_each_to_its_own(
    engine: sa.Engine, encryptor: Encryptor
) -> None:
    shared = EncryptedType(sa.String)

    class Base(DeclarativeBase):
        type_annotation_map = {str: shared}

    class Person(Base):
        __tablename__ = "people_shared"
        id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
        ssn: Mapped[str]
        passport: Mapped[str]

    table = Person.__table__
    assert dict(table.c.ssn.type.encryption_context())["column"] == "ssn"
    assert dict(table.c.passport.type.encryption_context())["column"] == "passport"
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            session.add(Person(id=1, ssn="s", passport="p"))
            session.commit()
        with Session(engine) as session:
            person = session.get(Person, 1)
            assert person is not None and (person.ssn, person.passport) == ("s", "p")
    finally:
        Base.metadata.drop_all(engine)


def test_a_table_copied_after_use_binds_its_own_context(encryptor: Encryptor) -> None:
    # The context is computed once and kept on the type; a copy of the table made
    # afterwards (to_metadata, as Alembic does) must not inherit the original's.
    table = sa.Table("orig", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("v", EncryptedType(sa.String)))  # fmt: skip
    assert table.c.v.type.encryption_context().as_dict() == {"table": "orig", "column": "v"}
    copy = table.to_metadata(sa.MetaData(), name="copy", schema="other")
    assert copy.c.v.type.encryption_context().as_dict() == {"table": "other.copy", "column": "v"}
    assert table.c.v.type.encryption_context().as_dict() == {"table": "orig", "column": "v"}


def test_mixin_columns_bind_to_each_table() -> None:
    class Base(DeclarativeBase):
        pass

    class HasSecret:
        secret: Mapped[str] = mapped_column(EncryptedType(sa.String))

    class A(HasSecret, Base):
        __tablename__ = "a"
        id: Mapped[int] = mapped_column(primary_key=True)

    class B(HasSecret, Base):
        __tablename__ = "b"
        id: Mapped[int] = mapped_column(primary_key=True)

    assert dict(A.__table__.c.secret.type.encryption_context())["table"] == "a"
    assert dict(B.__table__.c.secret.type.encryption_context())["table"] == "b"


def test_type_outside_a_table_needs_an_explicit_context(encryptor: Encryptor) -> None:
    unbound = EncryptedType(sa.String)
    with pytest.raises(ConfigurationError):
        unbound.encryption_context()
    labelled = EncryptedType(sa.String, context={"purpose": "export"})
    processor = labelled.bind_processor(sa.create_engine("sqlite://").dialect)
    assert unpack(processor("x")).version == 2


# -- SQL comparisons ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        lambda c: c == "x",
        lambda c: c != "x",
        lambda c: c.in_(["x", "y"]),
        lambda c: c.like("x%"),
        lambda c: c > "a",
        lambda c: c.startswith("x"),
        lambda c: c.between("a", "b"),
        lambda c: "x" == c,  # noqa: SIM300 - the reversed operand is the point
    ],
    ids=["eq", "ne", "in", "like", "gt", "startswith", "between", "reversed_eq"],
)
def test_comparing_in_sql_raises(expression: Any) -> None:
    table = _secrets_table(sa.MetaData(), sa.Column("ssn", EncryptedType(sa.String)))
    with pytest.raises(UnsupportedComparisonError, match="encrypted column"):
        expression(table.c.ssn)


def test_null_checks_are_allowed(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    table = _secrets_table(metadata, sa.Column("ssn", EncryptedType(sa.String)))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": 1, "ssn": "a"}, {"id": 2, "ssn": None}])
        assert conn.execute(sa.select(table.c.id).where(table.c.ssn == None)).scalar() == 2  # noqa: E711
        assert conn.execute(sa.select(table.c.id).where(table.c.ssn.is_not(None))).scalar() == 1


# -- failing closed ---------------------------------------------------------------------------


class _FailingKeyring(LocalKeyring):
    def generate_data_key(self, context: Any) -> Any:
        raise ConnectionError("key service unreachable")


def test_keyring_failure_on_write_stores_nothing(
    engine: sa.Engine, base: type[DeclarativeBase]
) -> None:
    class Account(base):  # type: ignore[valid-type,misc]
        __tablename__ = "accounts"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(20))
        token: Mapped[str] = mapped_column(EncryptedType(sa.String))

    base.metadata.create_all(engine)
    failing = _FailingKeyring({"k1": b"\x01" * 32})
    sqla_envelope.configure(Encryptor(failing))
    with Session(engine) as session:
        session.add(Account(id=1, name="first", token="tok_secret_1"))
        session.add(Account(id=2, name="second", token="tok_secret_2"))
        with pytest.raises(KeyringError) as failure:
            session.commit()
        assert isinstance(failure.value.__cause__, ConnectionError)
        assert "tok_secret" not in str(failure.value)
        session.rollback()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM accounts")).scalar() == 0


def test_no_encryptor_configured_raises_and_stores_nothing(
    engine: sa.Engine, base: type[DeclarativeBase]
) -> None:
    class Account(base):  # type: ignore[valid-type,misc]
        __tablename__ = "accounts"
        id: Mapped[int] = mapped_column(primary_key=True)
        token: Mapped[str] = mapped_column(EncryptedType(sa.String))

    base.metadata.create_all(engine)
    sqla_envelope.configure(None)
    with Session(engine) as session:
        session.add(Account(id=1, token="tok_secret"))
        with pytest.raises(ConfigurationError):
            session.commit()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM accounts")).scalar() == 0
    # Models were declared before any key existed; configuring later just works.
    sqla_envelope.configure(Encryptor(LocalKeyring.generate()))
    with Session(engine) as session:
        session.add(Account(id=1, token="tok_secret"))
        session.commit()
        session.expire_all()
        assert session.get(Account, 1).token == "tok_secret"  # type: ignore[union-attr]


def test_wrong_python_type_is_refused_without_quoting_the_value(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    table = _secrets_table(metadata, sa.Column("n", EncryptedType(sa.Integer)))
    metadata.create_all(engine)
    with engine.connect() as conn:
        with pytest.raises(InvalidValueError) as failure:
            conn.execute(table.insert().values(id=1, n="4111 1111 1111 1111"))
        assert "4111" not in str(failure.value)
        with pytest.raises(InvalidValueError):
            conn.execute(table.insert().values(id=1, n=2**64))


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """exc and every exception reachable from it, suppressed contexts included."""
    found: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is not None and all(current is not e for e in found):
            found.append(current)
            pending += [current.__cause__, current.__context__]
    return found


def _holds(exc: BaseException, secret: str) -> bool:
    """Whether any exception of the chain shows ``secret``: message, args or attributes."""
    return any(
        secret in str(e) or secret in repr(e.args) or secret in repr(vars(e))
        for e in _exception_chain(exc)
    )


def test_an_unencodable_value_fails_the_write_without_quoting_the_row(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    # A codec failure that is not ours (json's RecursionError, float's ValueError
    # on Decimal("sNaN")) would reach SQLAlchemy, which quotes every parameter of
    # the row in a StatementError: the ssn beside it included.
    table = _secrets_table(
        metadata,
        sa.Column("ssn", EncryptedType(sa.String)),
        sa.Column("doc", EncryptedType(sa.JSON)),
        sa.Column("score", EncryptedType(sa.Float)),
    )
    metadata.create_all(engine)
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    for bad in ({"doc": deep}, {"score": Decimal("sNaN")}):
        with engine.connect() as conn, pytest.raises(InvalidValueError) as failure:
            conn.execute(table.insert(), [{"id": 1, "ssn": "123-45-6789", **bad}])
        assert "secrets." in str(failure.value)  # names the column, not the value
        assert not _holds(failure.value, "123-45-6789")
    with engine.connect() as conn, pytest.raises(InvalidValueError) as failure:
        conn.execute(table.insert().values(id=1, ssn="lone \udcff 123-45-6789"))
    assert not _holds(failure.value, "123-45-6789")  # UnicodeEncodeError.object is the str
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM secrets")).scalar() == 0


def test_a_decrypted_value_the_codec_refuses_is_not_quoted_in_the_error(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    # Written when the Enum still had the member; the KeyError of the lookup
    # names it, and must not ride along as the error's __context__.
    class Status(enum.Enum):
        ACTIVE = "a"

    context = {"label": "patient.status"}
    table = _secrets_table(
        metadata, sa.Column("status", EncryptedType(sa.Enum(Status), context=context))
    )
    metadata.create_all(engine)
    _insert_raw = sa.table("secrets", sa.column("id"), sa.column("status", sa.LargeBinary))
    with engine.begin() as conn:
        conn.execute(
            _insert_raw.insert().values(id=1, status=encryptor.encrypt(b"HIV_POSITIVE", context))
        )
    with engine.connect() as conn, pytest.raises(DecryptionError) as failure:
        conn.execute(sa.select(table.c.status)).scalar()
    assert "not a valid Status member" in str(failure.value)
    assert not _holds(failure.value, "HIV_POSITIVE")


@pytest.mark.parametrize("storage", ["binary", "base64"])
@pytest.mark.parametrize("keep", [16, 24, 40, -1])
def test_allow_plaintext_never_reads_a_damaged_envelope_as_plaintext(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor, storage: str, keep: int
) -> None:
    lenient = EncryptedType(sa.LargeBinary, storage=storage, allow_plaintext=True)  # type: ignore[arg-type]
    # a table per storage: PostgreSQL's cached plans must not see a column change type
    name = f"secrets_{storage}"
    table = _secrets_table(metadata, sa.Column("v", lenient), name=name)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": 1, "v": b"secret"}, {"id": 2, "v": b"x"}])
        stored = conn.execute(sa.text(f"SELECT v FROM {name} WHERE id = 1")).scalar()
        legacy = b"\x7flegacy bytes" if storage == "binary" else "legacy text"
        raw = sa.table(
            name,
            sa.column("id"),
            sa.column("v", sa.LargeBinary if storage == "binary" else sa.Text),
        )
        # what a column too short for it keeps: the first bytes, or characters (a
        # remnant too short to hold the key reference, 11 bytes or 16 characters
        # of base64 here, cannot be told from data: test_allow_plaintext.py)
        cut = stored[:keep] if storage == "base64" else bytes(stored)[:keep]
        conn.execute(raw.update().where(raw.c.id == 1).values(v=cut))
        conn.execute(raw.update().where(raw.c.id == 2).values(v=legacy))
    with engine.connect() as conn:
        with pytest.raises(DecryptionError):  # an envelope cut short raises
            conn.execute(sa.select(table.c.v).where(table.c.id == 1)).scalar()
        plain = conn.execute(sa.select(table.c.v).where(table.c.id == 2)).scalar()
    assert plain == (legacy if isinstance(legacy, bytes) else legacy.encode())  # still read


def _stored_envelope(engine: sa.Engine, metadata: sa.MetaData) -> tuple[sa.Table, bytes]:
    table = _secrets_table(metadata, sa.Column("ssn", EncryptedType(sa.String)))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, ssn="123-45-6789"))
    return table, bytes(_raw(engine, "secrets", "ssn"))


def _read(engine: sa.Engine, table: sa.Table) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(table.c.ssn)).scalar()


@pytest.mark.parametrize("region", ["key_ref", "wrapped_key", "nonce", "ciphertext", "tag"])
def test_tampered_byte_fails_to_decrypt(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor, region: str
) -> None:
    table, stored = _stored_envelope(engine, metadata)
    assert _read(engine, table) == "123-45-6789"  # warms the key cache on purpose
    ref_len = stored[2]
    offsets = {
        "key_ref": 3,
        "wrapped_key": 3 + ref_len + 2 + 20,
        "nonce": len(stored) - 16 - 11 - 5,
        "ciphertext": len(stored) - 16 - 3,
        "tag": len(stored) - 1,
    }
    tampered = bytearray(stored)
    tampered[offsets[region]] ^= 0x01
    _set_raw(engine, table, "ssn", bytes(tampered))
    with pytest.raises(DecryptionError):
        _read(engine, table)


@pytest.mark.parametrize("keep", [0, 1, 3, 40, -17, -1])
def test_truncated_value_is_malformed(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor, keep: int
) -> None:
    table, stored = _stored_envelope(engine, metadata)
    _set_raw(engine, table, "ssn", stored[:keep])
    with pytest.raises(DecryptionError):
        _read(engine, table)


@pytest.mark.parametrize(
    "garbage", [b"\x00garbage", b"\x02" + b"\x01" * 100, b"not an envelope at all, just text"]
)
def test_garbage_is_malformed(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor, garbage: bytes
) -> None:
    table, _ = _stored_envelope(engine, metadata)
    _set_raw(engine, table, "ssn", garbage)
    with pytest.raises(MalformedEnvelopeError):
        _read(engine, table)


def test_wrong_key_fails_to_decrypt(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    table, _ = _stored_envelope(engine, metadata)
    sqla_envelope.configure(Encryptor(LocalKeyring.generate()))
    with pytest.raises(DecryptionError, match="no key in this keyring"):
        _read(engine, table)
    same_id_other_key = LocalKeyring({encryptor.keyring.primary: b"\x07" * 32})  # type: ignore[attr-defined]
    sqla_envelope.configure(Encryptor(same_id_other_key))
    with pytest.raises(DecryptionError):
        _read(engine, table)


def test_old_keys_still_decrypt_after_a_new_primary(
    engine: sa.Engine, metadata: sa.MetaData, keyring: LocalKeyring
) -> None:
    sqla_envelope.configure(Encryptor(keyring))
    table, _ = _stored_envelope(engine, metadata)
    rotated = keyring.with_new_primary()
    sqla_envelope.configure(Encryptor(rotated))
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=2, ssn="new"))
    assert (
        unpack(bytes(_raw(engine, "secrets", "ssn", 2))).wrapped_keys[0].key_ref == rotated.primary
    )
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.ssn).order_by(table.c.id)).scalars().all() == [
            "123-45-6789",
            "new",
        ]


def test_column_level_encryptor_wins_over_the_default(
    engine: sa.Engine, metadata: sa.MetaData
) -> None:
    own = Encryptor(LocalKeyring.generate("own"))
    sqla_envelope.configure(Encryptor(LocalKeyring.generate("default")))
    table = _secrets_table(metadata, sa.Column("ssn", EncryptedType(sa.String, own)))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, ssn="x"))
    assert unpack(bytes(_raw(engine, "secrets", "ssn"))).wrapped_keys[0].key_ref == "own"
    sqla_envelope.configure(None)
    assert _read(engine, table) == "x"


def test_statement_cache_keeps_columns_apart(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    """cache_ok=True must not let one column's compiled processors serve another."""
    first = _secrets_table(metadata, sa.Column("v", EncryptedType(sa.String)), name="first_t")
    second = _secrets_table(metadata, sa.Column("v", EncryptedType(sa.String)), name="second_t")
    metadata.create_all(engine)
    for _ in range(3):  # repeated executions go through the compiled cache
        with engine.begin() as conn:
            conn.execute(first.insert(), [{"id": _ * 2 + 1, "v": "a"}])
            conn.execute(second.insert(), [{"id": _ * 2 + 1, "v": "b"}])
    reader = Encryptor(encryptor.keyring)
    for table, value, other in ((first, b"a", second), (second, b"b", first)):
        for row_id in (1, 3, 5):
            raw = bytes(_raw(engine, table.name, "v", row_id))
            assert reader.decrypt(raw, {"table": table.name, "column": "v"}) == value
            with pytest.raises(DecryptionError):  # bound to its own table, not the other's
                reader.decrypt(raw, {"table": other.name, "column": "v"})


def test_a_binary_value_in_a_base64_column_is_named_as_such(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    # Issue 13: a BLOB column read with storage="base64" said "stored text is not base64".
    binary = _secrets_table(metadata, sa.Column("token", EncryptedType(sa.String)))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(binary.insert().values(id=1, token="tok"))
    as_text = sa.Table(
        "secrets",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token", EncryptedType(sa.String, storage="base64")),
    )
    with engine.connect() as conn, pytest.raises(MalformedEnvelopeError) as caught:
        conn.execute(sa.select(as_text.c.token)).scalar_one()
    assert "stored bytes, not base64 text" in str(caught.value)


def test_two_contexts_never_share_compiled_processors(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    # Issue 18: the statement cache keyed EncryptedType by its impl type only, so
    # the same SQL under context A then B reused A's processors, and a value
    # meant for B was stored under A.
    _secrets_table(metadata, sa.Column("ssn", sa.LargeBinary))
    metadata.create_all(engine)
    insert = sa.text("INSERT INTO secrets (id, ssn) VALUES (:id, :ssn)")
    for row, label in ((1, "a"), (2, "b")):
        typed = EncryptedType(sa.String, context={"label": label})
        with engine.begin() as conn:
            conn.execute(
                insert.bindparams(sa.bindparam("ssn", type_=typed)), {"id": row, "ssn": f"v{label}"}
            )
    stored = {i: bytes(_raw(engine, "secrets", "ssn", i)) for i in (1, 2)}
    assert encryptor.decrypt(stored[2], {"label": "b"}) == b"vb"
    with pytest.raises(DecryptionError):
        encryptor.decrypt(stored[2], {"label": "a"})
    keys = {
        EncryptedType(sa.String, context={"label": "a"})._static_cache_key,
        EncryptedType(sa.String, context={"label": "b"})._static_cache_key,
        EncryptedType(sa.String, storage="base64")._static_cache_key,
        EncryptedType(sa.String, allow_plaintext=True)._static_cache_key,
        EncryptedType(sa.String, check_length=False)._static_cache_key,
        EncryptedType(sa.String)._static_cache_key,
    }
    assert len(keys) == 6
    assert EncryptedType(sa.String)._static_cache_key == EncryptedType(sa.String)._static_cache_key


def test_orm_returning_and_null_checks_in_bulk_statements(
    engine: sa.Engine, encryptor: Encryptor
) -> None:
    # Issue 18: insert().returning(Model) with a Python default on another column,
    # update().returning(Model.secret) and delete().where(Model.secret.is_(None))
    # raised before a statement was sent.
    class Base(DeclarativeBase):
        pass

    class Note(Base):
        __tablename__ = "returning_notes"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        secret: Mapped[str | None] = mapped_column(EncryptedType(sa.String(40)))
        made_by: Mapped[str] = mapped_column(sa.String(20), default=lambda: "app")

    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            rows = [{"id": 1, "secret": "a"}, {"id": 2, "secret": None}]
            if engine.dialect.insert_returning:
                notes = session.scalars(sa.insert(Note).returning(Note), rows).all()
                assert sorted((n.id, n.secret, n.made_by) for n in notes) == [
                    (1, "a", "app"),
                    (2, None, "app"),
                ]
            else:
                session.execute(sa.insert(Note), rows)
            if engine.dialect.update_returning:  # not MariaDB
                changed = session.execute(
                    sa.update(Note).where(Note.id == 1).values(secret="b").returning(Note.secret)
                ).all()
                assert [tuple(r) for r in changed] == [("b",)]
            deleted = session.execute(sa.delete(Note).where(Note.secret.is_(None)))
            assert deleted.rowcount == 1  # type: ignore[attr-defined]
            session.commit()
            assert session.scalars(sa.select(Note.id)).all() == [1]
    finally:
        Base.metadata.drop_all(engine)


def test_a_read_error_raised_again_keeps_its_attributes_but_never_its_cause() -> None:
    """A column names itself in a read error: the new error keeps what the old one says
    (a shredded tenant's name) and drops its recorded cause, which may quote the value."""
    from sqla_envelope.errors import DecryptionError, TenantShreddedError

    column_type = EncryptedType(sa.String, context={"label": "x"})
    quoting = ValueError("could not decode 'the-plaintext'")
    failure = TenantShreddedError("tenant 'acme' was crypto-shredded", tenant="acme")
    failure.chain(quoting)
    with pytest.raises(DecryptionError) as raised:
        column_type._unreadable(b"\x02" + bytes(60), failure)
    assert type(raised.value) is TenantShreddedError
    assert raised.value.tenant == "acme"
    assert raised.value.__cause__ is None and raised.value.__context__ is None
    assert "the-plaintext" not in repr(raised.value)
