"""SQLAlchemy engines and sessions on the databases of Django's DATABASES.

Django's ORM and these engines keep separate connections: EncryptedType models
are SQLAlchemy models, and their transactions are SQLAlchemy's (a Django
``atomic()`` block does not include them).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session, sessionmaker

from ..errors import ConfigurationError
from .conf import SETTING

__all__ = ["database_url", "dispose_engines", "engine_for", "get_engine", "session"]

# Django backend -> SQLAlchemy dialect and driver.
_DIALECTS = {
    "django.db.backends.sqlite3": "sqlite",
    "django.db.backends.postgresql": "postgresql+psycopg",
    "django.db.backends.mysql": "mysql+pymysql",
}
# OPTIONS that Django consumes itself; the others go to the driver, as Django passes them.
_DJANGO_OPTIONS = {
    "sqlite": {"init_command", "transaction_mode"},
    "postgresql": {"isolation_level", "server_side_binding", "pool", "assume_role"},
    "mysql": {"isolation_level", "charset"},  # the charset goes in the URL
}

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_sessions: dict[str, sessionmaker[Session]] = {}


def database_url(database: Mapping[str, Any]) -> URL:
    """The SQLAlchemy URL of one ``DATABASES`` entry (sqlite3, postgresql or mysql).

    PostgreSQL goes through psycopg 3, MySQL and MariaDB through PyMySQL with
    utf8mb4 unless OPTIONS names a charset. Raises ConfigurationError for another
    ENGINE: build that engine yourself.
    """
    backend = database.get("ENGINE")
    dialect = _DIALECTS.get(str(backend))
    if dialect is None:
        raise ConfigurationError(
            f"ENGINE {backend!r} has no SQLAlchemy equivalent here; sqla_envelope.django "
            f"maps {', '.join(sorted(_DIALECTS))}"
        )
    name = str(database.get("NAME") or "")
    if dialect == "sqlite":
        if name.startswith("file:"):  # a URI, as Django's test databases use
            return sa.make_url(f"sqlite:///{name}").update_query_dict({"uri": "true"})
        return URL.create("sqlite", database=name if name != ":memory:" else None)
    port = database.get("PORT")
    query = {}
    if dialect.startswith("mysql"):
        query["charset"] = str((database.get("OPTIONS") or {}).get("charset", "utf8mb4"))
    return URL.create(
        dialect,
        username=database.get("USER") or None,
        password=database.get("PASSWORD") or None,
        host=database.get("HOST") or None,
        port=int(port) if port else None,
        database=name or None,
        query=query,
    )


def engine_for(database: Mapping[str, Any]) -> Engine:
    """A new Engine for one ``DATABASES`` entry; ``get_engine`` caches them by alias.

    OPTIONS become the driver's connect arguments, as Django passes them, less
    the ones Django consumes itself. CONN_HEALTH_CHECKS turns on ``pool_pre_ping``.
    """
    url = database_url(database)
    family = url.get_backend_name()
    ignored = _DJANGO_OPTIONS.get(family, set())
    given = database.get("OPTIONS") or {}
    connect_args = {key: value for key, value in given.items() if key not in ignored}
    options: dict[str, Any] = {"pool_pre_ping": bool(database.get("CONN_HEALTH_CHECKS"))}
    if url.query.get("mode") == "memory":
        # Django's SQLite test database: a pool keeps the shared in-memory database alive.
        options["poolclass"] = sa.pool.QueuePool
    return sa.create_engine(url, connect_args=connect_args, **options)


def _alias(alias: str | None) -> str:
    if alias is not None:
        return alias
    from django.conf import settings  # type: ignore[import-untyped]

    options = getattr(settings, SETTING, None)
    database = options.get("DATABASE") if isinstance(options, Mapping) else None
    return database if isinstance(database, str) else "default"


def get_engine(alias: str | None = None) -> Engine:
    """The Engine of ``DATABASES[alias]``, made on first use and kept for the process.

    ``alias=None`` is ``SQLA_ENVELOPE["DATABASE"]``, else ``"default"``. Raises
    ConfigurationError for an alias that is not in DATABASES.
    """
    from django.db import connections  # type: ignore[import-untyped]

    alias = _alias(alias)
    with _lock:
        engine = _engines.get(alias)
        if engine is None:
            database = connections.settings.get(alias)
            if database is None:
                raise ConfigurationError(
                    f"no database {alias!r} in settings.DATABASES "
                    f"(it has {', '.join(map(repr, connections.settings))})"
                )
            engine = _engines[alias] = engine_for(database)
        return engine


def session(alias: str | None = None) -> Session:
    """A new Session on ``get_engine(alias)``, for one request: ``with session() as s:``.

    Objects stay readable after commit (``expire_on_commit=False``), so a view
    can commit and then build its response without reading the row again.
    """
    alias = _alias(alias)
    factory = _sessions.get(alias)
    if factory is None:
        factory = _sessions.setdefault(
            alias, sessionmaker(get_engine(alias), expire_on_commit=False)
        )
    return factory()


def dispose_engines() -> None:
    """Close every engine's pooled connections and forget them (tests, after a fork)."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
        _sessions.clear()
    for engine in engines:
        engine.dispose()
