"""Alembic environment of the sqla-envelope example.

Two things differ from Alembic's generic env.py:

* the default encryptor is configured before any migration runs, from a key file
  (``SQLA_ENVELOPE_KEY_FILE``, default ``example.keys.json`` next to this file,
  created with a fresh key on first run), so data migrations can encrypt and decrypt;
* ``render_item=sqla_envelope.migrations.render_item`` makes autogenerate write
  ``sqla_envelope.EncryptedType(...)`` and import ``sqla_envelope``.

The database URL is ``SQLA_ENVELOPE_DB_URL`` if set, else ``sqlalchemy.url`` from
alembic.ini (a SQLite file next to this file). A program running Alembic can pass
both through ``Config.attributes`` instead: ``sqla_envelope_db_url`` and
``sqla_envelope_key_file`` (and ``target_metadata`` to autogenerate against
another model).
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from pathlib import Path

import sqlalchemy as sa
from alembic import context
from models import Base  # the application's model (models.py in this folder)

import sqla_envelope
from sqla_envelope import Encryptor, LocalKeyring
from sqla_envelope.migrations import render_item

HERE = Path(__file__).resolve().parent

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = config.attributes.get("target_metadata", Base.metadata)


def database_url() -> str:
    url = (
        config.attributes.get("sqla_envelope_db_url")
        or os.environ.get("SQLA_ENVELOPE_DB_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise RuntimeError("set SQLA_ENVELOPE_DB_URL or sqlalchemy.url in alembic.ini")
    return url


def key_file() -> Path:
    path = config.attributes.get("sqla_envelope_key_file") or os.environ.get(
        "SQLA_ENVELOPE_KEY_FILE"
    )
    return Path(path) if path else HERE / "example.keys.json"


def configure_encryption() -> Path:
    """Install the default encryptor from the key file, creating the file on first run."""
    path = key_file()
    if not path.exists():
        LocalKeyring.generate().to_file(path)  # mode 0600: it holds the master key
    sqla_envelope.configure(Encryptor(LocalKeyring.from_file(path)))
    # Migrations that change keys (0004) find the file here.
    config.attributes["sqla_envelope_key_file"] = str(path)
    return path


def run_migrations_offline() -> None:
    # encrypt_column, decrypt_column and rewrap read and write rows: they need a
    # database connection, so these migrations cannot be rendered as a SQL script.
    raise SystemExit("this example's migrations transform data; run them online (no --sql)")


def run_migrations_online() -> None:
    configure_encryption()
    engine = sa.create_engine(database_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_item=render_item,
                include_name=_only_our_tables,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


def _only_our_tables(name: str | None, type_: str, parent_names: object) -> bool:
    """Autogenerate compares this project's tables only: the database may hold others."""
    if type_ != "table" or target_metadata is None:
        return True
    return name in target_metadata.tables


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
