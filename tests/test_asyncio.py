"""EncryptedType under SQLAlchemy's asyncio extension: aiosqlite, asyncpg and FastAPI.

pytest-asyncio is not a dependency: each test is a sync function that drives its
scenario with asyncio.run(), with an engine built and disposed inside that loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import os
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from conftest import IN_CI, POSTGRES_URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import sqla_envelope
from sqla_envelope import (
    ConfigurationError,
    DecryptionError,
    EncryptedType,
    EncryptionContext,
    Encryptor,
    LocalKeyring,
    UnsupportedComparisonError,
    WrappedKey,
)

ROOT = Path(__file__).resolve().parents[1]
ASYNCPG_URL = sa.make_url(POSTGRES_URL).set(drivername="postgresql+asyncpg")


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "aio_patients"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    national_id: Mapped[str | None] = mapped_column(EncryptedType(sa.String(20)))
    visits: Mapped[int | None] = mapped_column(EncryptedType(sa.Integer))
    birth_date: Mapped[dt.date | None] = mapped_column(EncryptedType(sa.Date))
    record: Mapped[dict[str, Any] | None] = mapped_column(EncryptedType(sa.JSON))


core_metadata = sa.MetaData()
NOTES = sa.Table(
    "aio_notes",
    core_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("body", EncryptedType(sa.Text)),
)


# -- engines ------------------------------------------------------------------------------


async def _check_reachable(url: sa.URL) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    finally:
        await engine.dispose()


# Fixtures are defined as ``*_fixture`` and named without the suffix, so that
# test_asyncio_kms.py can import them (as tests/kms_server.py's are).
@pytest.fixture(scope="session", name="asyncpg_url")
def asyncpg_url_fixture() -> sa.URL:
    try:
        asyncio.run(_check_reachable(ASYNCPG_URL))
    except Exception as exc:  # any failure to reach the server
        message = f"PostgreSQL not reachable at {ASYNCPG_URL!r}: {type(exc).__name__}: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: a missing server is a failure)")
        pytest.skip(message)
    return ASYNCPG_URL


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)], name="url")
def url_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> sa.URL:
    """An async URL: aiosqlite on a temporary file, or asyncpg on the suite's PostgreSQL."""
    if request.param == "sqlite":
        return sa.make_url(f"sqlite+aiosqlite:///{tmp_path / 'async.db'}")
    return request.getfixturevalue("asyncpg_url")  # type: ignore[no-any-return]


@asynccontextmanager
async def _database(url: sa.URL, *metadatas: sa.MetaData) -> AsyncIterator[AsyncEngine]:
    """An async engine with fresh tables, dropped and disposed on the way out."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for metadata in metadatas:
                await conn.run_sync(metadata.drop_all)
                await conn.run_sync(metadata.create_all)
        yield engine
    finally:
        async with engine.begin() as conn:
            for metadata in metadatas:
                await conn.run_sync(metadata.drop_all)
        await engine.dispose()


async def _raw(engine: AsyncEngine, sql: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(sa.text(sql))).scalar()


# -- the ORM through AsyncSession -----------------------------------------------------------


class TestAsyncSession:
    def test_insert_select_update_round_trip(self, url: sa.URL, encryptor: Encryptor) -> None:
        async def scenario() -> None:
            async with _database(url, Base.metadata) as engine:
                async with AsyncSession(engine) as session:
                    session.add(
                        Patient(
                            id=1,
                            name="Ada",
                            national_id="AB123456C",
                            visits=3,
                            birth_date=dt.date(1815, 12, 10),
                            record={"allergies": ["penicillin"], "height_cm": 165.5},
                        )
                    )
                    await session.commit()
                stored = await _raw(engine, "SELECT national_id FROM aio_patients")
                assert b"AB123456C" not in bytes(stored)

                async with AsyncSession(engine) as session:
                    ada = (await session.scalars(sa.select(Patient))).one()
                    assert ada.national_id == "AB123456C"
                    assert ada.visits == 3
                    assert ada.birth_date == dt.date(1815, 12, 10)
                    assert ada.record == {"allergies": ["penicillin"], "height_cm": 165.5}
                    ada.national_id = "ZZ999999Z"
                    ada.visits = 4
                    ada.record = {"allergies": []}
                    await session.commit()
                assert await _raw(engine, "SELECT national_id FROM aio_patients") != stored

                async with AsyncSession(engine) as session:
                    again = await session.get(Patient, 1)
                    assert again is not None
                    assert (again.national_id, again.visits) == ("ZZ999999Z", 4)
                    assert again.birth_date == dt.date(1815, 12, 10)
                    assert again.record == {"allergies": []}

        asyncio.run(scenario())

    def test_nulls_are_stored_as_null(self, url: sa.URL, encryptor: Encryptor) -> None:
        async def scenario() -> None:
            async with _database(url, Base.metadata) as engine:
                async with AsyncSession(engine) as session:
                    session.add(Patient(id=1, name="Anonymous"))
                    await session.commit()
                count = "SELECT COUNT(*) FROM aio_patients WHERE national_id IS NULL"
                assert await _raw(engine, count + " AND record IS NULL") == 1
                async with AsyncSession(engine) as session:
                    found = await session.scalars(
                        sa.select(Patient).where(Patient.national_id.is_(None))
                    )
                    anonymous = found.one()
                    assert (anonymous.national_id, anonymous.visits) == (None, None)
                    assert (anonymous.birth_date, anonymous.record) == (None, None)
            assert encryptor.stats()["wraps"] == 0

        asyncio.run(scenario())

    def test_comparing_an_encrypted_column_raises_while_building_the_query(self) -> None:
        with pytest.raises(UnsupportedComparisonError, match="encrypted column"):
            sa.select(Patient).where(Patient.national_id == "AB123456C")
        with pytest.raises(UnsupportedComparisonError):
            sa.select(NOTES).where(NOTES.c.body.like("%secret%"))

    def test_tampered_value_raises_decryption_error(
        self, url: sa.URL, encryptor: Encryptor
    ) -> None:
        async def scenario() -> None:
            async with _database(url, Base.metadata) as engine:
                async with AsyncSession(engine) as session:
                    session.add(Patient(id=1, name="Ada", national_id="AB123456C"))
                    await session.commit()
                stored = bytearray(await _raw(engine, "SELECT national_id FROM aio_patients"))
                stored[-1] ^= 0x01
                overwrite = sa.text("UPDATE aio_patients SET national_id = :v").bindparams(
                    sa.bindparam("v", bytes(stored), type_=sa.LargeBinary)
                )
                async with engine.begin() as conn:
                    await conn.execute(overwrite)
                async with AsyncSession(engine) as session:
                    with pytest.raises(DecryptionError, match=r"aio_patients\.national_id"):
                        await session.execute(sa.select(Patient))

        asyncio.run(scenario())

    def test_no_encryptor_configured_raises_configuration_error(self, url: sa.URL) -> None:
        async def scenario() -> None:
            sqla_envelope.configure(None)
            async with _database(url, Base.metadata) as engine:
                async with AsyncSession(engine) as session:
                    session.add(Patient(id=1, name="Ada", national_id="AB123456C"))
                    with pytest.raises(ConfigurationError, match="no encryptor configured"):
                        await session.commit()
                assert await _raw(engine, "SELECT COUNT(*) FROM aio_patients") == 0

                sqla_envelope.configure(Encryptor(LocalKeyring.generate()))
                async with AsyncSession(engine) as session:
                    session.add(Patient(id=1, name="Ada", national_id="AB123456C"))
                    await session.commit()
                sqla_envelope.configure(None)
                async with AsyncSession(engine) as session:
                    with pytest.raises(ConfigurationError):
                        await session.execute(sa.select(Patient))

        asyncio.run(scenario())


# -- a keyring that behaves like a remote one ----------------------------------------------


class RemoteLikeKeyring(LocalKeyring):
    """A LocalKeyring that poses as a remote one: it reserves, and unwraps slowly.

    Records reservations, the threads that generate and unwrap, and how many
    unwraps ran at the same time. With ``gather`` set, an unwrap also waits until
    that many have run at once (for at most 10 s, then gathering stops): unwraps
    that are really concurrent then overlap whatever the machine's load.
    """

    unwraps_remotely = True

    def __init__(self, *args: Any, delay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay
        self.reservations: list[tuple[dict[str, str], int]] = []
        self.generate_threads: list[int] = []
        self.unwrap_threads: list[int] = []
        self.running = 0
        self.most_at_once = 0
        self.gather = 0
        self._lock = threading.Condition()

    def reserve_data_keys(self, context: EncryptionContext, count: int) -> None:
        self.reservations.append((context.as_dict(), count))

    def generate_data_key(self, context: EncryptionContext) -> Any:
        self.generate_threads.append(threading.get_ident())
        return super().generate_data_key(context)

    def unwrap_data_key(
        self, wrapped_keys: Sequence[WrappedKey], context: EncryptionContext
    ) -> bytes:
        with self._lock:
            self.unwrap_threads.append(threading.get_ident())
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self._lock.notify_all()
            if self.gather and not self._lock.wait_for(
                lambda: self.most_at_once >= self.gather, timeout=10
            ):
                self.gather = 0
        try:
            if self.delay:
                time.sleep(self.delay)
            return super().unwrap_data_key(wrapped_keys, context)
        finally:
            with self._lock:
                self.running -= 1


class LocalRecordingKeyring(RemoteLikeKeyring):
    """The same records, from a keyring that says it works locally."""

    unwraps_remotely = False


@pytest.fixture
def remote() -> Iterator[tuple[RemoteLikeKeyring, Encryptor]]:
    keyring = RemoteLikeKeyring({"k1": b"\x07" * 32}, delay=0.02)
    encryptor = Encryptor(keyring, max_workers=4)
    sqla_envelope.configure(encryptor)
    yield keyring, encryptor
    encryptor.close()


# -- Core through AsyncConnection -----------------------------------------------------------


class TestAsyncConnection:
    def test_executemany_and_select(self, url: sa.URL, encryptor: Encryptor) -> None:
        rows = [{"id": i, "body": f"note {i}" if i % 5 else None} for i in range(1, 51)]

        async def scenario() -> None:
            async with _database(url, core_metadata) as engine:
                async with engine.begin() as conn:
                    await conn.execute(sa.insert(NOTES), rows)
                async with engine.connect() as conn:
                    found = await conn.execute(sa.select(NOTES).order_by(NOTES.c.id))
                    assert [dict(row._mapping) for row in found] == rows
                    plain = "SELECT COUNT(*) FROM aio_notes WHERE body IS NOT NULL"
                    assert (await conn.execute(sa.text(plain))).scalar() == 40
            assert encryptor.stats()["wraps"] == 40

        asyncio.run(scenario())

    def test_streamed_results_are_not_prefetched(
        self, url: sa.URL, remote: tuple[RemoteLikeKeyring, Encryptor]
    ) -> None:
        keyring, encryptor = remote
        rows = [{"id": i, "body": f"note {i}"} for i in range(1, 7)]

        async def scenario() -> None:
            async with _database(url, core_metadata) as engine:
                async with engine.begin() as conn:
                    await conn.execute(sa.insert(NOTES), rows)
                encryptor.clear_cache()
                async with engine.connect() as conn:
                    streamed = await conn.stream(sa.select(NOTES).order_by(NOTES.c.id))
                    assert encryptor.stats()["unwraps"] == 0
                    bodies = [row.body async for row in streamed]
                assert bodies == [row["body"] for row in rows]
                # One by one, as the rows arrived, each off the event loop's thread.
                assert len(keyring.unwrap_threads) == 6
                assert threading.get_ident() not in keyring.unwrap_threads
                assert keyring.most_at_once == 1

        asyncio.run(scenario())


# -- the engine events of batching.py --------------------------------------------------------


class TestEngineEvents:
    def test_multi_row_writes_reserve_their_data_keys(
        self, url: sa.URL, remote: tuple[RemoteLikeKeyring, Encryptor]
    ) -> None:
        keyring, _ = remote

        async def scenario() -> None:
            async with _database(url, core_metadata, Base.metadata) as engine:
                async with engine.begin() as conn:
                    rows = [{"id": i, "body": None if i == 3 else "x"} for i in range(1, 7)]
                    await conn.execute(sa.insert(NOTES), rows)
                    await conn.execute(sa.insert(NOTES), [{"id": 7, "body": "single"}])
                assert keyring.reservations == [({"table": "aio_notes", "column": "body"}, 5)]

                keyring.reservations.clear()
                async with AsyncSession(engine) as session:
                    session.add_all(
                        Patient(id=i, name=f"p{i}", national_id=f"N{i}") for i in range(1, 4)
                    )
                    await session.commit()
                context = {"table": "aio_patients", "column": "national_id"}
                assert keyring.reservations == [(context, 3)]

        asyncio.run(scenario())

    def test_a_results_keys_are_unwrapped_concurrently_before_decrypting(
        self, url: sa.URL, remote: tuple[RemoteLikeKeyring, Encryptor]
    ) -> None:
        keyring, encryptor = remote
        rows = [{"id": i, "body": f"note {i}"} for i in range(1, 9)]

        async def scenario() -> None:
            async with _database(url, core_metadata, Base.metadata) as engine:
                async with engine.begin() as conn:
                    await conn.execute(sa.insert(NOTES), rows)
                encryptor.clear_cache()
                keyring.gather = 2
                async with engine.connect() as conn:
                    result = await conn.execute(sa.select(NOTES).order_by(NOTES.c.id))
                    # Every key is unwrapped, none decrypted yet...
                    before = encryptor.stats()
                    assert (before["unwraps"], before["cache_hits"]) == (8, 0)
                    assert [row.body for row in result] == [row["body"] for row in rows]
                # ...then every row decrypts from the cache.
                after = encryptor.stats()
                assert (after["unwraps"], after["cache_hits"]) == (8, 8)
                assert keyring.most_at_once > 1
                keyring.gather = 0

                # The ORM buffers the rows inside session.execute: same counts.
                async with AsyncSession(engine) as session:
                    session.add_all(Patient(id=i, name="p", national_id="N") for i in range(4))
                    await session.commit()
                encryptor.clear_cache()
                unwraps, hits = encryptor.stats()["unwraps"], encryptor.stats()["cache_hits"]
                async with AsyncSession(engine) as session:
                    patients = (await session.scalars(sa.select(Patient))).all()
                    assert [p.national_id for p in patients] == ["N"] * 4
                stats = encryptor.stats()
                assert (stats["unwraps"] - unwraps, stats["cache_hits"] - hits) == (4, 4)

        asyncio.run(scenario())

    def test_remote_keyring_calls_never_run_on_the_event_loop_thread(
        self, url: sa.URL, remote: tuple[RemoteLikeKeyring, Encryptor]
    ) -> None:
        """A lone write, a lone cache miss, a result's keys: all off the loop (docs/async.md)."""
        keyring, encryptor = remote

        async def scenario() -> None:
            loop_thread = threading.get_ident()
            async with _database(url, core_metadata) as engine:
                async with engine.begin() as conn:
                    await conn.execute(sa.insert(NOTES), [{"id": 1, "body": "one"}])
                    await conn.execute(
                        sa.insert(NOTES), [{"id": 2, "body": "b"}, {"id": 3, "body": "c"}]
                    )
                assert len(keyring.generate_threads) == 3
                assert loop_thread not in keyring.generate_threads

                encryptor.clear_cache()
                async with engine.connect() as conn:
                    one = sa.select(NOTES.c.body).where(NOTES.c.id == 1)
                    assert (await conn.execute(one)).scalar() == "one"
                    assert len(keyring.unwrap_threads) == 1
                    # The other two keys of a result: on the Encryptor's threads.
                    await conn.execute(sa.select(NOTES))
                    assert len(keyring.unwrap_threads) == 3
                    assert loop_thread not in keyring.unwrap_threads

        asyncio.run(scenario())

    def test_local_keyring_calls_stay_on_the_event_loop_thread(self, url: sa.URL) -> None:
        """CPU-bound, microseconds: a thread hop would cost more than the call."""
        keyring = LocalRecordingKeyring({"k1": b"\x07" * 32})
        encryptor = Encryptor(keyring, prefetch=True, max_workers=4)
        sqla_envelope.configure(encryptor)

        async def scenario() -> None:
            loop_thread = threading.get_ident()
            async with _database(url, core_metadata) as engine:
                async with engine.begin() as conn:
                    await conn.execute(sa.insert(NOTES), [{"id": 1, "body": "one"}])
                encryptor.clear_cache()
                async with engine.connect() as conn:
                    one = sa.select(NOTES.c.body).where(NOTES.c.id == 1)
                    assert (await conn.execute(one)).scalar() == "one"
            assert keyring.generate_threads == [loop_thread]
            assert keyring.unwrap_threads == [loop_thread]  # the lone prefetch, inline

        asyncio.run(scenario())

    def test_tasks_missing_on_one_key_share_one_unwrap(
        self, url: sa.URL, remote: tuple[RemoteLikeKeyring, Encryptor]
    ) -> None:
        """A task waiting for another task's unwrap of the same key must not block the loop.

        The leader's unwrap can only finish on the loop: a follower that waited
        for it there would wait for ``unwrap_timeout``, then raise KeyringError.
        """
        keyring, _ = remote
        encryptor = Encryptor(keyring, prefetch=False, unwrap_timeout=10)
        sqla_envelope.configure(encryptor)

        async def scenario() -> None:
            async with _database(url, Base.metadata) as engine:
                async with AsyncSession(engine) as session:
                    session.add(Patient(id=1, name="Ada", national_id="AB123456C"))
                    await session.commit()
                encryptor.clear_cache()

                async def read() -> str | None:
                    async with AsyncSession(engine) as session:
                        return (await session.scalars(sa.select(Patient))).one().national_id

                assert await asyncio.gather(*(read() for _ in range(4))) == ["AB123456C"] * 4
            assert len(keyring.unwrap_threads) == 1
            assert encryptor.stats()["unwraps"] == 1

        asyncio.run(scenario())


# -- the FastAPI example ---------------------------------------------------------------------


def _load_example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """examples/fastapi_app/main.py as a fresh module, read with the current environment."""
    name = "fastapi_example_main"
    path = ROOT / "examples" / "fastapi_app" / "main.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # SQLAlchemy resolves Mapped[...] there
    spec.loader.exec_module(module)
    return module


def test_fastapi_example_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = tmp_path / "app.db"
    key_file = tmp_path / "app.keys.json"
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{database}")
    monkeypatch.setenv("SQLA_ENVELOPE_KEY_FILE", str(key_file))
    app = _load_example(monkeypatch).app
    ada = {
        "name": "Ada Lovelace",
        "birth_date": "1815-12-10",
        "national_id": "AB123456C",
        "notes": "allergic to penicillin",
    }

    @asynccontextmanager
    async def client() -> AsyncIterator[httpx.AsyncClient]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                yield http

    async def first_start() -> None:
        async with client() as http:
            created = await http.post("/patients", json=ada)
            assert created.status_code == 201
            assert created.json() == {**ada, "id": 1}
            bob = {**ada, "name": "Bob", "national_id": "CD654321E", "notes": None}
            assert (await http.post("/patients", json=bob)).status_code == 201
            listed = await http.get("/patients")
            assert listed.status_code == 200
            assert [p["national_id"] for p in listed.json()] == ["AB123456C", "CD654321E"]
            assert (await http.get("/patients/2")).json() == {**bob, "id": 2}
            assert (await http.get("/patients/99")).status_code == 404
            bad = {**ada, "national_id": "X" * 21}
            assert (await http.post("/patients", json=bad)).status_code == 422

    asyncio.run(first_start())
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 or os.name != "posix"
    key = key_file.read_bytes()
    stored = database.read_bytes()
    assert b"AB123456C" not in stored and b"penicillin" not in stored
    assert b"Ada Lovelace" in stored  # the name is not an encrypted column

    async def restart() -> None:
        async with client() as http:
            assert (await http.get("/patients/1")).json() == {**ada, "id": 1}

    asyncio.run(restart())
    assert key_file.read_bytes() == key  # reused, not replaced
    with pytest.raises(ConfigurationError):
        sqla_envelope.get_default_encryptor()  # shutdown removed it


# -- values bound to their row's tenant (issue 17) ---------------------------------------

tenant_metadata = sa.MetaData()
TENANT_NOTES = sa.Table(
    "aio_tenant_notes",
    tenant_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.Integer, nullable=False),
    sa.Column("body", EncryptedType(sa.Text, context_columns=("tenant_id",))),
)


class TestRowBoundUnderAsyncio:
    def test_written_read_and_moved_between_tenants(
        self, url: sa.URL, encryptor: Encryptor
    ) -> None:
        async def scenario() -> None:
            async with _database(url, tenant_metadata) as engine:
                async with engine.begin() as conn:
                    await conn.execute(
                        TENANT_NOTES.insert(),
                        [{"id": i, "tenant_id": 10 + i % 2, "body": f"note {i}"} for i in range(6)],
                    )
                async with engine.connect() as conn:
                    rows = (await conn.execute(sa.select(TENANT_NOTES).order_by("id"))).all()
                    assert [r.body for r in rows] == [f"note {i}" for i in range(6)]
                    stored = (
                        await conn.execute(
                            sa.text("SELECT body FROM aio_tenant_notes WHERE id = 1")
                        )
                    ).scalar()
                context = {"table": "aio_tenant_notes", "column": "body", "tenant_id": "11"}
                assert encryptor.decrypt(bytes(stored), context) == b"note 1"
                async with engine.begin() as conn:  # moved by raw SQL: unreadable, and says why
                    await conn.execute(
                        sa.text("UPDATE aio_tenant_notes SET tenant_id = 10 WHERE id = 1")
                    )
                async with engine.connect() as conn:
                    result = await conn.execute(
                        sa.select(TENANT_NOTES).where(TENANT_NOTES.c.id == 1)
                    )
                    with pytest.raises(DecryptionError, match="tenant_id='10'"):
                        result.all()

        asyncio.run(scenario())


class TestTenantKeyringUnderAsyncio:
    def test_branch_keys_load_off_the_event_loop_and_values_read_back(
        self, url: sa.URL, tmp_path: Path
    ) -> None:
        """An AsyncEngine app with TenantKeyring (its branch keys on a sync engine of their own)."""
        from sqla_envelope.tenants import TenantKeyring, create_branch_key_table

        keys_engine = sa.create_engine(f"sqlite:///{tmp_path / 'keys.db'}")
        create_branch_key_table(keys_engine)
        loop_thread: list[int] = []
        master_threads: list[int] = []

        class WatchedMaster(LocalKeyring):
            def unwrap_data_key(self, wrapped_keys: Sequence[WrappedKey], context: Any) -> bytes:
                master_threads.append(threading.get_ident())
                return super().unwrap_data_key(wrapped_keys, context)

        master = WatchedMaster.generate()
        sqla_envelope.configure(Encryptor(TenantKeyring(master, keys_engine)))

        async def scenario() -> None:
            loop_thread.append(threading.get_ident())
            async with _database(url, tenant_metadata) as engine:
                async with engine.begin() as conn:
                    await conn.execute(
                        TENANT_NOTES.insert(),
                        [{"id": i, "tenant_id": i % 3, "body": f"note {i}"} for i in range(9)],
                    )
                # a cold process: every branch key unwrapped again, by the master
                sqla_envelope.configure(Encryptor(TenantKeyring(master, keys_engine)))
                async with engine.connect() as conn:
                    rows = (await conn.execute(sa.select(TENANT_NOTES).order_by("id"))).all()
                assert [r.body for r in rows] == [f"note {i}" for i in range(9)]

        asyncio.run(scenario())
        keys_engine.dispose()
        assert len(master_threads) == 3  # one unwrap per tenant's branch key
        assert loop_thread[0] not in master_threads  # never on the event loop's thread

    def test_a_cached_tenants_writes_stay_on_the_loop_and_its_key_load_does_not(
        self, url: sa.URL, tmp_path: Path
    ) -> None:
        """A thread hop per row cost three times the wrap: only a branch key load hops."""
        from sqla_envelope.tenants import TenantKeyring, create_branch_key_table

        keys_engine = sa.create_engine(f"sqlite:///{tmp_path / 'keys.db'}")
        create_branch_key_table(keys_engine)
        loads: list[int] = []  # threads where a data key needed the branch key store
        in_memory: list[int] = []  # threads where it was made under a cached branch key

        class WatchedKeyring(TenantKeyring):
            def generate_data_key(self, context: Any) -> Any:
                loads.append(threading.get_ident())
                return super().generate_data_key(context)

            def generate_data_key_in_memory(self, context: Any) -> Any:
                made = super().generate_data_key_in_memory(context)
                if made is not None:
                    in_memory.append(threading.get_ident())
                return made

        sqla_envelope.configure(Encryptor(WatchedKeyring(LocalKeyring.generate(), keys_engine)))

        async def scenario() -> int:
            async with _database(url, tenant_metadata) as engine:
                for first in (0, 30):  # a new tenant's key is made, then it is cached
                    async with engine.begin() as conn:
                        await conn.execute(
                            TENANT_NOTES.insert(),
                            [
                                {"id": first + i, "tenant_id": i % 3, "body": f"note {i}"}
                                for i in range(30)
                            ],
                        )
                async with engine.connect() as conn:
                    rows = (await conn.execute(sa.select(TENANT_NOTES))).all()
                assert sorted(r.body for r in rows) == sorted(f"note {i % 30}" for i in range(60))
            return threading.get_ident()

        loop_thread = asyncio.run(scenario())
        keys_engine.dispose()
        assert len(loads) == 3 and loop_thread not in loads  # one load per tenant, off the loop
        assert len(in_memory) == 57 and set(in_memory) == {loop_thread}
