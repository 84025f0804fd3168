"""From sqlalchemy-utils' EncryptedType to ours, in one run, for every engine (issue 18, item 4).

A table written by sqlalchemy-utils' own StringEncryptedType (AES-GCM, Fernet, and
AES-CBC with each padding) is migrated in place with ``encrypt_column(...,
decode_with=<the old type>)``, on SQLite, PostgreSQL and MariaDB; and into a new
column with ``source=<the old column>``, which failed before: its conflict guard
bound the decrypted value again, and a randomized cipher never matched.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from sqla_envelope import DecryptionError, EncryptedType, Encryptor, LocalKeyring, configure
from sqla_envelope.envelope import unpack
from sqla_envelope.migrations import encrypt_column
from sqla_envelope.storage import loader

utils = pytest.importorskip("sqlalchemy_utils")
from sqlalchemy_utils.types.encrypted.encrypted_type import (  # noqa: E402
    AesEngine,
    AesGcmEngine,
    FernetEngine,
)

OLD_KEY = "the key sqlalchemy-utils used"
ENGINES = [
    pytest.param(AesGcmEngine, None, id="aesgcm"),
    pytest.param(FernetEngine, None, id="fernet"),
    *(
        pytest.param(AesEngine, p, id=f"aes-{p}")
        for p in ("pkcs5", "oneandzeroes", "zeroes", "naive")
    ),
]
ROWS = [(i, f"QQ{i:06d}C", 1000 + i) for i in range(1, 13)]


def old_type(engine: Any, padding: str | None, logical: Any = sa.String, key: str = OLD_KEY) -> Any:
    return utils.StringEncryptedType(logical, key, engine, padding, length=255)


def legacy_table(name: str, engine: Any, padding: str | None) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("national_id", old_type(engine, padding)),
        sa.Column("amount", old_type(engine, padding, sa.Integer)),
    )


def our_table(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("national_id", EncryptedType(sa.String(20), storage="base64")),
        sa.Column("amount", EncryptedType(sa.Integer, storage="base64")),
    )


@pytest.fixture
def encryptor() -> Iterator[Encryptor]:
    enc = Encryptor(LocalKeyring.generate())
    configure(enc)
    yield enc
    configure(None)


@pytest.fixture
def legacy(engine: sa.Engine, request: pytest.FixtureRequest) -> Iterator[Any]:
    created: list[sa.Table] = []

    def make(name: str, cipher: Any, padding: str | None) -> sa.Table:
        table = legacy_table(name, cipher, padding)
        table.drop(engine, checkfirst=True)
        table.create(engine)
        created.append(table)
        with engine.begin() as conn:
            conn.execute(
                table.insert(), [{"id": i, "national_id": n, "amount": a} for i, n, a in ROWS]
            )
        return table

    yield make
    for table in created:
        table.drop(engine, checkfirst=True)


def raw(engine: sa.Engine, name: str, column: str) -> dict[int, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(f"SELECT id, {column} FROM {name}")).all())  # type: ignore[arg-type]


@pytest.mark.parametrize(("cipher", "padding"), ENGINES)
def test_every_engine_migrates_in_place_in_one_run(
    engine: sa.Engine, legacy: Any, encryptor: Encryptor, cipher: Any, padding: str | None
) -> None:
    legacy("utils_customers", cipher, padding)
    ours = our_table("utils_customers")
    for column, logical in (("national_id", sa.String), ("amount", sa.Integer)):
        report = encrypt_column(
            engine, ours.c[column], decode_with=old_type(cipher, padding, logical)
        )
        assert (report.changed, report.failed, report.conflicts) == (len(ROWS), 0, 0)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ours).order_by(ours.c.id)).all()
    assert [tuple(row) for row in rows] == ROWS
    for stored in raw(engine, "utils_customers", "national_id").values():
        assert unpack(loader("base64")(stored)).version == 2  # our envelopes now
    again = encrypt_column(engine, ours.c.national_id, decode_with=old_type(cipher, padding))
    assert (again.changed, again.skipped) == (0, len(ROWS))  # a rerun has nothing to do


@pytest.mark.parametrize(("cipher", "padding"), ENGINES)
def test_a_wrong_old_key_fails_closed_and_writes_nothing(
    engine: sa.Engine, legacy: Any, encryptor: Encryptor, cipher: Any, padding: str | None
) -> None:
    legacy("utils_wrong_key", cipher, padding)
    before = raw(engine, "utils_wrong_key", "national_id")
    ours = our_table("utils_wrong_key")
    wrong = old_type(cipher, padding, key="not the key it was written with")
    with pytest.raises(DecryptionError, match="old key") as raised:
        encrypt_column(engine, ours.c.national_id, decode_with=wrong)
    assert "QQ0000" not in str(raised.value)
    assert raw(engine, "utils_wrong_key", "national_id") == before


def test_into_a_new_column_from_a_randomized_source_column(
    engine: sa.Engine, legacy: Any, encryptor: Encryptor
) -> None:
    legacy("utils_side", AesGcmEngine, None)
    with engine.begin() as conn:
        blob = "BYTEA" if engine.dialect.name == "postgresql" else "BLOB"
        conn.exec_driver_sql(f"ALTER TABLE utils_side ADD COLUMN national_id_new {blob}")
    both = sa.Table(
        "utils_side",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("national_id", old_type(AesGcmEngine, None)),
        sa.Column("national_id_new", EncryptedType(sa.String(20))),
    )
    report = encrypt_column(engine, both.c.national_id_new, source=both.c.national_id)
    assert (report.changed, report.conflicts) == (len(ROWS), 0)  # 0 changed, 12 conflicts before
    with engine.connect() as conn:
        moved = conn.execute(sa.select(both.c.id, both.c.national_id_new)).all()
    assert sorted(moved) == [(i, n) for i, n, _ in ROWS]


def test_the_one_command_migration_from_the_shell(
    engine: sa.Engine,
    legacy: Any,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sqla_envelope.cli import main

    legacy("utils_cli", FernetEngine, None)
    keys = tmp_path / "app.keys.json"
    LocalKeyring.generate().to_file(keys)
    url = engine.url.render_as_string(hide_password=False)
    argv = ["encrypt-column", "--url", url, "--table", "utils_cli", "--column", "national_id"]
    argv += ["--storage", "base64", "--key-file", str(keys), "--from-sqlalchemy-utils", "fernet"]
    assert main([*argv, "--old-key-env", "UTILS_OLD_KEY"]) == 2  # not set: nothing done
    assert "UTILS_OLD_KEY" in capsys.readouterr().err
    assert main([*argv[:-2], "aes", "--old-key-env", "UTILS_OLD_KEY"]) == 2  # aes needs --padding
    monkeypatch.setenv("UTILS_OLD_KEY", OLD_KEY)
    assert main([*argv, "--old-key-env", "UTILS_OLD_KEY"]) == 0
    err = capsys.readouterr().err
    assert f"{len(ROWS)} changed" in err and "Traceback" not in err
    configure(Encryptor(LocalKeyring.from_file(keys)))
    try:
        ours = our_table("utils_cli")
        with engine.connect() as conn:
            ids = conn.execute(sa.select(ours.c.id, ours.c.national_id)).all()
        assert sorted(ids) == [(i, n) for i, n, _ in ROWS]
    finally:
        configure(None)
