"""Never store what cannot be read: MySQL/MariaDB column types and their capacity.

MariaDB and MySQL without a strict ``sql_mode`` cut a value too long for its
column to the column's size, with a warning nobody sees; a cut envelope can
never be decrypted again. These tests run MariaDB with ``sql_mode=''`` and check
that such a write raises before anything is sent, and that the column types
EncryptedType picks for existing declarations are exactly what they were.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import _mariadb_engine
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.mysql import mariadb

from sqla_envelope import EncryptedType, Encryptor, InvalidValueError, LocalKeyring
from sqla_envelope.aead import LOCAL_WRAPPED_SIZE
from sqla_envelope.envelope import envelope_size

BLOB_CAPACITY = 65_535
KEY_ID = "k-2025-a"  # 8 characters, as LocalKeyring.generate() names its keys
# These tests store values longer than their declared length (check_length=False):
# the MySQL capacity check is the backstop for those, and for long headers.
# A LocalKeyring envelope is 113 + len(key id) bytes longer than the encoded value.
OVERHEAD = envelope_size(0, [(len(KEY_ID), LOCAL_WRAPPED_SIZE)])


class Status(enum.Enum):
    ACTIVE = "a"
    RETIRED = "r"


# What each declaration is stored as on MySQL and MariaDB, pinned as e16c428 picked
# it (binary, base64): existing schemas and Alembic autogenerate must see no change.
STORAGE_TYPES: dict[str, tuple[Any, str, str]] = {
    "Integer": (sa.Integer, "BLOB", "TEXT"),
    "BigInteger": (sa.BigInteger, "BLOB", "TEXT"),
    "Float": (sa.Float, "BLOB", "TEXT"),
    "Boolean": (sa.Boolean, "BLOB", "TEXT"),
    "Interval": (sa.Interval, "BLOB", "TEXT"),
    "Uuid": (sa.Uuid, "BLOB", "TEXT"),
    "String(11)": (sa.String(11), "BLOB", "TEXT"),
    "String(8000)": (sa.String(8000), "BLOB", "TEXT"),
    "String(8001)": (sa.String(8001), "LONGBLOB", "LONGTEXT"),
    "String": (sa.String, "LONGBLOB", "LONGTEXT"),
    "Text": (sa.Text, "LONGBLOB", "LONGTEXT"),
    "Unicode(50)": (sa.Unicode(50), "BLOB", "TEXT"),
    "Enum(labels)": (sa.Enum("small", "large", name="size"), "BLOB", "TEXT"),
    "Enum(class)": (sa.Enum(Status), "BLOB", "TEXT"),
    "LargeBinary": (sa.LargeBinary, "LONGBLOB", "LONGTEXT"),
    "LargeBinary(16)": (sa.LargeBinary(16), "BLOB", "TEXT"),
    "LargeBinary(8000)": (sa.LargeBinary(8000), "BLOB", "TEXT"),
    "LargeBinary(9000)": (sa.LargeBinary(9000), "LONGBLOB", "LONGTEXT"),
    "JSON": (sa.JSON, "LONGBLOB", "LONGTEXT"),
    "Numeric(10,2)": (sa.Numeric(10, 2), "LONGBLOB", "LONGTEXT"),
    "Date": (sa.Date, "LONGBLOB", "LONGTEXT"),
    "DateTime": (sa.DateTime, "LONGBLOB", "LONGTEXT"),
    "Time": (sa.Time, "LONGBLOB", "LONGTEXT"),
}


@pytest.fixture(scope="module")
def lax_engine() -> Iterator[sa.Engine]:
    """MariaDB with ``sql_mode=''``: too-long values are cut with a warning, not refused."""
    engine = _mariadb_engine()

    @sa.event.listens_for(engine, "connect")
    def _no_strict_mode(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET SESSION sql_mode = ''")

    yield engine
    engine.dispose()


@pytest.fixture
def keyring() -> LocalKeyring:
    """The keyring of tests/conftest.py's ``encryptor``: a key id of known length."""
    return LocalKeyring.generate(KEY_ID)


@pytest.fixture
def lax_metadata(lax_engine: sa.Engine) -> Iterator[sa.MetaData]:
    md = sa.MetaData()
    yield md
    md.drop_all(lax_engine)


def _table(metadata: sa.MetaData, type_: EncryptedType, name: str = "limits") -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("v", type_),
    )


def _write_and_read_back(engine: sa.Engine, table: sa.Table, value: Any) -> Any:
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, v=value))
    with engine.connect() as conn:
        return conn.execute(sa.select(table.c.v)).scalar()


def _stored_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT COUNT(*) FROM limits").scalar_one())


@pytest.fixture
def limits(lax_engine: sa.Engine, lax_metadata: sa.MetaData) -> Any:
    """Makes the ``limits`` table with a column ``v`` of the given type, on the lax engine."""

    def make(type_: EncryptedType) -> sa.Table:
        table = _table(lax_metadata, type_)
        lax_metadata.create_all(lax_engine)
        return table

    return make


def _column_type(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return str(
            conn.exec_driver_sql(
                "SELECT DATA_TYPE FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'limits' AND COLUMN_NAME = 'v'"
            ).scalar_one()
        ).upper()


def test_the_server_really_cuts_without_strict_mode(lax_engine: sa.Engine, limits: Any) -> None:
    # The premise of this file: without the check, MariaDB stores a cut value.
    limits(EncryptedType(sa.LargeBinary(100)))
    assert _column_type(lax_engine) == "BLOB"
    plain = sa.table("limits", sa.column("id"), sa.column("v", sa.LargeBinary))
    with lax_engine.begin() as conn:
        conn.execute(plain.insert().values(id=1, v=b"x" * 70_000))
        assert conn.exec_driver_sql("SELECT LENGTH(v) FROM limits").scalar() == BLOB_CAPACITY


@pytest.mark.parametrize("storage", ["binary", "base64"])
def test_string_too_large_for_its_column_is_refused_before_it_is_sent(
    lax_engine: sa.Engine, limits: Any, encryptor: Encryptor, storage: str
) -> None:
    table = limits(EncryptedType(sa.String(100), storage=storage, check_length=False))  # type: ignore[arg-type]
    assert _column_type(lax_engine) == ("BLOB" if storage == "binary" else "TEXT")
    secret = "confidential-" + "x" * 69_987  # 70,000 characters
    with pytest.raises(InvalidValueError) as failure, lax_engine.begin() as conn:
        conn.execute(table.insert().values(id=1, v=secret))
    message = str(failure.value)
    envelope = 70_000 + OVERHEAD
    size = envelope if storage == "binary" else 4 * -(-envelope // 3)
    assert message.startswith("limits.v: ")
    assert f"{size:,} bytes" in message and f"{BLOB_CAPACITY:,}" in message
    assert ("LONGBLOB" if storage == "binary" else "LONGTEXT") in message
    assert "confidential" not in message and "xxxx" not in message
    assert _stored_rows(lax_engine) == 0


def test_one_oversized_value_stops_the_whole_executemany(
    lax_engine: sa.Engine, limits: Any, encryptor: Encryptor
) -> None:
    table = limits(EncryptedType(sa.String(100), check_length=False))
    rows = [{"id": 1, "v": "short"}, {"id": 2, "v": "y" * 70_000}, {"id": 3, "v": "short"}]
    with pytest.raises(InvalidValueError), lax_engine.begin() as conn:
        conn.execute(table.insert(), rows)
    assert _stored_rows(lax_engine) == 0


@pytest.mark.parametrize("storage", ["binary", "base64"])
def test_the_largest_value_that_fits_is_stored_and_one_byte_more_is_refused(
    lax_engine: sa.Engine, limits: Any, encryptor: Encryptor, storage: str
) -> None:
    table = limits(EncryptedType(sa.LargeBinary(8000), storage=storage, check_length=False))  # type: ignore[arg-type]
    # base64 makes 4 characters of every 3 bytes: 49,149 envelope bytes -> 65,532
    largest = (BLOB_CAPACITY if storage == "binary" else BLOB_CAPACITY // 4 * 3) - OVERHEAD
    value = bytes(range(256)) * (largest // 256) + b"\xff" * (largest % 256)
    assert _write_and_read_back(lax_engine, table, value) == value
    with pytest.raises(InvalidValueError), lax_engine.begin() as conn:
        conn.execute(table.insert().values(id=2, v=value + b"!" * 3))
    assert _stored_rows(lax_engine) == 1


def test_base64_counts_the_text_it_stores_not_the_envelope(
    lax_engine: sa.Engine, limits: Any, encryptor: Encryptor
) -> None:
    # 50,000 characters: a 50,121-byte envelope fits a BLOB, its 66,828 base64
    # characters do not fit a TEXT.
    value = "z" * 50_000
    text = 4 * -(-(50_000 + OVERHEAD) // 3)
    assert (50_000 + OVERHEAD, text) == (50_121, 66_828)
    table = limits(EncryptedType(sa.String(1000), storage="base64", check_length=False))
    with pytest.raises(InvalidValueError, match=f"{text:,} bytes"), lax_engine.begin() as conn:
        conn.execute(table.insert().values(id=1, v=value))
    assert _stored_rows(lax_engine) == 0


@pytest.mark.parametrize(
    ("logical", "value"),
    [
        (sa.Text, "t" * 70_000),
        (sa.String, "s" * 70_000),
        (sa.LargeBinary, b"\x00\x01" * 35_000),
        (sa.JSON, {"notes": "n" * 70_000}),
    ],
    ids=["text", "string", "binary", "json"],
)
@pytest.mark.parametrize("storage", ["binary", "base64"])
def test_long_columns_take_large_values_without_strict_mode(
    lax_engine: sa.Engine,
    limits: Any,
    encryptor: Encryptor,
    logical: Any,
    value: Any,
    storage: str,
) -> None:
    table = limits(EncryptedType(logical, storage=storage))  # type: ignore[arg-type]
    assert _column_type(lax_engine) == ("LONGBLOB" if storage == "binary" else "LONGTEXT")
    assert _write_and_read_back(lax_engine, table, value) == value


def test_other_databases_store_what_mysql_refuses(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    # The check is MySQL's: SQLite and PostgreSQL columns have no such limit.
    table = _table(metadata, EncryptedType(sa.String(100), check_length=False), name="limits_any")
    metadata.create_all(engine)
    value = "w" * 70_000
    if engine.dialect.name == "mariadb":
        with pytest.raises(InvalidValueError), engine.begin() as conn:
            conn.execute(table.insert().values(id=1, v=value))
        return
    assert _write_and_read_back(engine, table, value) == value


# -- the column types themselves -------------------------------------------------------


@pytest.mark.parametrize("dialect", [mysql.dialect(), mariadb.MariaDBDialect()], ids=str)
@pytest.mark.parametrize("name", list(STORAGE_TYPES))
def test_storage_type_of_every_declaration_is_unchanged(name: str, dialect: Any) -> None:
    logical, binary, text = STORAGE_TYPES[name]
    for storage, expected in (("binary", binary), ("base64", text)):
        type_ = EncryptedType(logical, storage=storage)  # type: ignore[arg-type]
        assert type_.dialect_impl(dialect).compile(dialect=dialect) == expected


def test_autogenerate_sees_no_change_for_existing_declarations(lax_engine: sa.Engine) -> None:
    def declared() -> sa.MetaData:
        md = sa.MetaData()
        columns = [
            sa.Column(f"c{i}_{storage}", EncryptedType(logical, storage=storage))  # type: ignore[arg-type]
            for i, (logical, _, _) in enumerate(STORAGE_TYPES.values())
            for storage in ("binary", "base64")
        ]
        sa.Table("limits_ddl", md, sa.Column("id", sa.Integer, primary_key=True), *columns)
        return md

    # The table as e16c428 created it, written out in plain SQL types.
    pinned = sa.MetaData()
    pinned_columns = [
        sa.Column(f"c{i}_{storage}", getattr(mysql, expected)())
        for i, (_, binary, text) in enumerate(STORAGE_TYPES.values())
        for storage, expected in (("binary", binary), ("base64", text))
    ]
    sa.Table("limits_ddl", pinned, sa.Column("id", sa.Integer, primary_key=True), *pinned_columns)
    pinned.drop_all(lax_engine)
    pinned.create_all(lax_engine)
    try:
        with lax_engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, declared()) == []
            # and the comparison does notice a storage type that differs
            changed = declared()
            changed.tables["limits_ddl"].append_column(
                sa.Column("c0_binary", EncryptedType(sa.Text)), replace_existing=True
            )
            assert [diff[0][0] for diff in compare_metadata(context, changed)] == ["modify_type"]
    finally:
        pinned.drop_all(lax_engine)
