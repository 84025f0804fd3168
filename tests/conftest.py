"""Shared fixtures: one behavioural suite over SQLite, PostgreSQL and MariaDB.

Servers are reached at the URLs below (override with SQLA_ENVELOPE_PG_URL and
SQLA_ENVELOPE_MARIADB_URL). Locally a missing server skips its tests; with
CI=true it fails them, so CI can never pass without all three databases.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase

import sqla_envelope
from sqla_envelope import Encryptor, LocalKeyring

# Every test's logs, error messages and reprs are searched for its plaintexts and keys.
pytest_plugins = ("logscan",)

POSTGRES_URL = os.environ.get(
    "SQLA_ENVELOPE_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get(
    "SQLA_ENVELOPE_MARIADB_URL", "mariadb+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Room for the 16 MiB values the suite stores, plus their envelope.
MARIADB_PACKET = 64 * 1024 * 1024


def _server_engine(url: str, **kwargs: object) -> sa.Engine:
    engine = sa.create_engine(url, **kwargs)  # type: ignore[arg-type]
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any failure to reach the server
        engine.dispose()
        message = f"database server not reachable at {engine.url!r}: {type(exc).__name__}: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: a missing server is a failure)")
        pytest.skip(message)
    return engine


def _mariadb_engine() -> sa.Engine:
    engine = _server_engine(MARIADB_URL, connect_args={"max_allowed_packet": MARIADB_PACKET})
    with engine.connect() as conn:
        current = conn.execute(sa.text("SELECT @@global.max_allowed_packet")).scalar_one()
        if int(current) < MARIADB_PACKET:
            conn.execute(sa.text(f"SET GLOBAL max_allowed_packet = {MARIADB_PACKET}"))
    engine.dispose()  # new connections see the new global
    return engine


@pytest.fixture(scope="session", params=["sqlite", "postgresql", "mariadb"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sa.Engine]:
    """An engine for each of the three databases; tests using it run three times."""
    name = request.param
    if name == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "suite.db"
        eng = sa.create_engine(f"sqlite:///{path}")
    elif name == "postgresql":
        eng = _server_engine(POSTGRES_URL)
    else:
        eng = _mariadb_engine()
    yield eng
    eng.dispose()


@pytest.fixture
def keyring() -> LocalKeyring:
    return LocalKeyring.generate()


@pytest.fixture
def encryptor(keyring: LocalKeyring) -> Iterator[Encryptor]:
    """A fresh encryptor, also installed as the default for the test's duration."""
    enc = Encryptor(keyring)
    sqla_envelope.configure(enc)
    yield enc
    sqla_envelope.configure(None)


@pytest.fixture(autouse=True)
def _no_default_encryptor_leaks() -> Iterator[None]:
    yield
    sqla_envelope.configure(None)


@pytest.fixture
def base(engine: sa.Engine) -> Iterator[type[DeclarativeBase]]:
    """A fresh declarative base whose tables are dropped after the test."""

    class Base(DeclarativeBase):
        pass

    yield Base
    Base.metadata.drop_all(engine)


@pytest.fixture
def metadata(engine: sa.Engine) -> Iterator[sa.MetaData]:
    """A fresh MetaData whose tables are dropped after the test."""
    md = sa.MetaData()
    yield md
    md.drop_all(engine)
