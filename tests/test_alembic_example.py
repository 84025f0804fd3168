"""alembic_example/ runs end to end on SQLite, PostgreSQL and MariaDB, up and back down.

The chain: 0001 creates customers with plaintext national ids, 0002 encrypts them
in place, 0003 adds an encrypted phone column from a plaintext one, 0004 rotates the
master key. Each step is checked on the way up and on the way down, through the
stored bytes (which key an envelope is under) and through EncryptedType.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import sqla_envelope
from sqla_envelope import EncryptedType, Encryptor, LocalKeyring

EXAMPLE = Path(__file__).resolve().parent.parent / "alembic_example"

# What 0001 and 0003 insert: id -> (name, email, national_id, phone).
CUSTOMERS = {
    1: ("Ada Lovelace", "ada@example.com", "QQ123456C", "+44 20 7946 0018"),
    2: ("Grace Hopper", "grace@example.com", "078-05-1120", "+1 202 555 0143"),
    3: ("José Núñez", "jose@example.com", "12345678Z", None),
    4: ("Alan Turing", "alan@example.com", None, "+44 161 496 0753"),
}

# The application's view of the table after 0004 (alembic_example/models.py).
customers = sa.Table(
    "customers",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("email", sa.String(200), nullable=False),
    sa.Column("national_id", EncryptedType(sa.String(20), storage="base64")),
    sa.Column("phone", EncryptedType(sa.String(30))),
)


def _drop_example_tables(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for name in ("customers", "alembic_version"):
            sa.Table(name, sa.MetaData()).drop(conn, checkfirst=True)


@pytest.fixture
def example_db(engine: sa.Engine) -> Iterator[sa.Engine]:
    """The fixture's database without the example's tables, before and after."""
    _drop_example_tables(engine)
    yield engine
    _drop_example_tables(engine)


@pytest.fixture(autouse=True)
def _restore_imports() -> Iterator[None]:
    """env.py prepends the example folder to sys.path and imports ``models`` from it."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name == "models":
            del sys.modules[name]


def _config(monkeypatch: pytest.MonkeyPatch, folder: Path, url: str, key_file: Path) -> Config:
    # The example reads both from the environment, as documented in its README.
    monkeypatch.setenv("SQLA_ENVELOPE_DB_URL", url)
    monkeypatch.setenv("SQLA_ENVELOPE_KEY_FILE", str(key_file))
    cfg = Config(str(folder / "alembic.ini"))
    cfg.attributes["configure_logger"] = False  # leave pytest's logging alone
    return cfg


def _url(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _stored(engine: sa.Engine) -> dict[int, dict[str, Any]]:
    """The rows as stored, no decryption; phone only once the column exists."""
    columns = {c["name"] for c in sa.inspect(engine).get_columns("customers")}
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM customers ORDER BY id")).mappings().all()
    result = {}
    for row in rows:
        values = dict(row)
        if values.get("phone") is not None:
            values["phone"] = bytes(values["phone"])
        result[values.pop("id")] = values
    assert set(next(iter(result.values()))) == columns - {"id"}
    return result


def _key_ref(envelope: bytes) -> str:
    return sqla_envelope.unpack_envelope(envelope).wrapped_keys[0].key_ref


def _check_encrypted(engine: sa.Engine, key_file: Path, *, under: str, phone: bool) -> None:
    """Every value is an envelope under key ``under`` and reads back as the original."""
    stored = _stored(engine)
    assert sorted(stored) == sorted(CUSTOMERS)
    for key, (name, email, national_id, phone_number) in CUSTOMERS.items():
        row = stored[key]
        assert (row["name"], row["email"]) == (name, email)
        if national_id is None:
            assert row["national_id"] is None
        else:
            assert national_id not in row["national_id"]
            assert _key_ref(base64.b64decode(row["national_id"], validate=True)) == under
        if phone:
            if phone_number is None:
                assert row["phone"] is None
            else:
                assert phone_number.encode() not in row["phone"]
                assert _key_ref(row["phone"]) == under
        else:
            assert "phone" not in row

    # Read back with a keyring loaded from the key file as it is on disk now.
    sqla_envelope.configure(Encryptor(LocalKeyring.from_file(key_file)))
    columns = [customers.c.id, customers.c.national_id]
    if phone:
        columns.append(customers.c.phone)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*columns).order_by(customers.c.id)).all()
    expected = [
        (key, national_id, phone_number) if phone else (key, national_id)
        for key, (_, _, national_id, phone_number) in CUSTOMERS.items()
    ]
    assert [tuple(row) for row in rows] == expected


def _column_type(engine: sa.Engine, name: str) -> sa.types.TypeEngine[Any]:
    return {c["name"]: c["type"] for c in sa.inspect(engine).get_columns("customers")}[name]


def _rotations(key_file: Path) -> Path:
    return key_file.with_suffix(".rotations.json")


def test_example_chain_upgrades_and_downgrades(
    example_db: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = example_db
    key_file = tmp_path / "example.keys.json"
    cfg = _config(monkeypatch, EXAMPLE, _url(engine), key_file)

    command.upgrade(cfg, "0003")
    assert key_file.exists()  # created by env.py on first run
    first = LocalKeyring.from_file(key_file)
    assert len(first.key_ids) == 1
    _check_encrypted(engine, key_file, under=first.primary, phone=True)

    command.upgrade(cfg, "head")
    rotated = LocalKeyring.from_file(key_file)
    assert rotated.primary != first.primary
    assert set(rotated.key_ids) == {first.primary, rotated.primary}
    assert json.loads(_rotations(key_file).read_text())["0004"] == {
        "previous_primary": first.primary,
        "new_primary": rotated.primary,
    }
    _check_encrypted(engine, key_file, under=rotated.primary, phone=True)

    # Back down, step by step.
    command.downgrade(cfg, "0003")
    restored = LocalKeyring.from_file(key_file)
    assert restored.primary == first.primary
    assert set(restored.key_ids) == set(rotated.key_ids)  # the added key is kept
    assert not _rotations(key_file).exists()
    _check_encrypted(engine, key_file, under=first.primary, phone=True)

    command.downgrade(cfg, "0002")
    _check_encrypted(engine, key_file, under=first.primary, phone=False)

    command.downgrade(cfg, "0001")
    stored = _stored(engine)
    assert {key: tuple(row.values()) for key, row in stored.items()} == {
        key: (name, email, national_id) for key, (name, email, national_id, _) in CUSTOMERS.items()
    }
    national_id_type = _column_type(engine, "national_id")
    assert isinstance(national_id_type, sa.String)
    assert national_id_type.length == 20

    # Up again from plaintext: a downgrade leaves nothing behind that stops it.
    command.upgrade(cfg, "head")
    again = LocalKeyring.from_file(key_file)
    assert len(again.key_ids) == 3
    assert again.primary not in rotated.key_ids
    _check_encrypted(engine, key_file, under=again.primary, phone=True)

    command.downgrade(cfg, "base")
    assert not sa.inspect(engine).has_table("customers")


def test_example_migrations_match_the_model(
    example_db: sa.Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """At head, autogenerate finds nothing to do against alembic_example/models.py."""
    cfg = _config(monkeypatch, EXAMPLE, _url(example_db), tmp_path / "example.keys.json")
    command.upgrade(cfg, "head")
    command.check(cfg)  # raises AutogenerateDiffsDetected on any difference


def test_autogenerate_writes_an_importable_encrypted_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new EncryptedType column in the model becomes sqla_envelope.EncryptedType(...)."""
    folder = tmp_path / "example"
    shutil.copytree(
        EXAMPLE,
        folder,
        ignore=shutil.ignore_patterns("__pycache__", "*.db", "*.keys.json", "*.rotations.json"),
    )
    key_file = tmp_path / "example.keys.json"
    url = f"sqlite:///{tmp_path / 'autogen.db'}"
    cfg = _config(monkeypatch, folder, url, key_file)
    command.upgrade(cfg, "head")

    # The model of customers plus a new encrypted column.
    target = sa.MetaData()
    table = customers.to_metadata(target)
    table.append_column(sa.Column("date_of_birth", EncryptedType(sa.Date)))
    cfg.attributes["target_metadata"] = target
    script = command.revision(cfg, "add date of birth", autogenerate=True, rev_id="0005")
    assert script is not None and not isinstance(script, list)
    source = Path(script.path).read_text(encoding="utf-8")

    assert "sqla_envelope.EncryptedType(sa.Date())" in source
    assert source.count("\nimport sqla_envelope\n") == 1  # template and render_item: once
    assert "alter_column" not in source  # the existing encrypted columns match
    assert "Encryptor" not in source and "LocalKeyring" not in source

    spec = importlib.util.spec_from_file_location("migration_0005", script.path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (module.revision, module.down_revision) == ("0005", "0004")

    engine = sa.create_engine(url)
    try:
        command.upgrade(cfg, "head")
        assert "date_of_birth" in {c["name"] for c in sa.inspect(engine).get_columns("customers")}
        command.downgrade(cfg, "0004")
        assert "date_of_birth" not in {
            c["name"] for c in sa.inspect(engine).get_columns("customers")
        }
    finally:
        engine.dispose()
