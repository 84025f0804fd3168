"""KMS under SQLAlchemy's asyncio: requests never run on the event loop's thread.

Against moto's KMS server, through aiosqlite and asyncpg (the ``url`` fixture of
test_asyncio.py). Each KMS request is seen by a botocore ``before-send`` hook on
the thread that sends it, after botocore has built and signed it.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from kms_server import (  # noqa: F401 - pytest fixtures
    REGION,
    Key,
    Recorder,
    aws_env_fixture,
    kms_endpoint_fixture,
    make_key_fixture,
    recorder_fixture,
)
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from test_asyncio import (  # noqa: F401 - pytest fixtures
    NOTES,
    Base,
    Patient,
    _database,
    asyncpg_url_fixture,
    core_metadata,
    url_fixture,
)
from test_fork import in_child

import sqla_envelope
from sqla_envelope import DecryptionError, Encryptor, KeyringError, KmsKeyring, LocalKeyring
from sqla_envelope.audit import KeyEvent

pytestmark = pytest.mark.usefixtures("aws_env")

ROOT = Path(__file__).resolve().parents[1]


class Sends:
    """The KMS requests sent, each as (operation, sending thread); can hold one open.

    ``hold(operation)`` makes the next requests of that operation wait, inside
    botocore, until ``release`` is set (at most ``HOLD_TIMEOUT`` seconds);
    ``released`` tells, for each, whether it was released or timed out.
    """

    HOLD_TIMEOUT = 30.0

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []
        self.holding: str | None = None
        self.held = threading.Event()
        self.release = threading.Event()
        self.released: list[bool] = []

    def __call__(self, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        self.sent.append((operation, threading.get_ident()))
        if operation == self.holding:
            self.held.set()
            self.released.append(self.release.wait(self.HOLD_TIMEOUT))

    def hold(self, operation: str) -> None:
        self.holding = operation
        self.held.clear()
        self.release.clear()

    def operations(self) -> set[str]:
        return {operation for operation, _ in self.sent}

    def threads(self) -> set[int]:
        return {thread for _, thread in self.sent}


@pytest.fixture
def sends(recorder: Recorder) -> Sends:
    hook = Sends()
    # Before the keyrings build their clients: each client copies the session's hooks.
    recorder.session.events.register("before-send.kms", hook)
    return hook


class Kms:
    """A key on the moto server, and KmsKeyrings that reach it through the recording session."""

    def __init__(self, key: Key, recorder: Recorder, endpoint: str) -> None:
        self.key = key
        self._recorder = recorder
        self._endpoint = endpoint
        self.built: list[KmsKeyring] = []

    def keyring(self, key_id: str | None = None, **kwargs: Any) -> KmsKeyring:
        """A keyring for ``key_id`` (the key's ARN by default), failing at the first error."""
        keyring = KmsKeyring(
            key_id or self.key.arn,
            session=self._recorder.session,
            region_name=REGION,
            endpoint_url=self._endpoint,
            max_attempts=1,
            **kwargs,
        )
        self.built.append(keyring)
        return keyring


@pytest.fixture
def kms(
    make_key: Callable[..., Key], recorder: Recorder, kms_endpoint: str, sends: Sends
) -> Iterator[Kms]:
    server = Kms(make_key(), recorder, kms_endpoint)
    yield server
    for keyring in server.built:
        keyring.close()


def _configure(keyring: KmsKeyring, **kwargs: Any) -> Encryptor:
    encryptor = Encryptor(keyring, max_workers=4, **kwargs)
    sqla_envelope.configure(encryptor)
    return encryptor


def _patients(first: int, count: int) -> list[Patient]:
    return [
        Patient(id=i, name=f"p{i}", national_id=f"N{i:08}") for i in range(first, first + count)
    ]


async def _national_ids(session: AsyncSession) -> list[str | None]:
    return list(await session.scalars(sa.select(Patient.national_id).order_by(Patient.id)))


class TestOffTheLoop:
    def test_direct_mode_requests_never_run_on_the_event_loop_thread(
        self, url: sa.URL, kms: Kms, sends: Sends
    ) -> None:
        encryptor = _configure(kms.keyring())
        # Configured with the alias, a reader learns the key's ARN from DescribeKey
        # while it plans a result's unwraps.
        reader = Encryptor(kms.keyring(kms.key.alias_name), max_workers=4)

        async def scenario() -> int:
            loop_thread = threading.get_ident()
            async with _database(url, Base.metadata, core_metadata) as engine:
                async with AsyncSession(engine) as session:
                    session.add(Patient(id=1, name="Ada", national_id="AB123456C"))
                    await session.commit()  # one value: GenerateDataKey
                    session.add_all(_patients(2, 5))
                    await session.commit()  # several: reserved, generated ahead
                async with engine.begin() as conn:
                    await conn.execute(sa.insert(NOTES), [{"id": 1, "body": "a note"}])

                encryptor.clear_cache()
                async with AsyncSession(engine) as session:
                    ada = await session.get(Patient, 1)  # one key: its Decrypt
                    assert ada is not None and ada.national_id == "AB123456C"
                    assert len(await _national_ids(session)) == 6  # a result's keys
                encryptor.clear_cache()
                async with engine.connect() as conn:
                    # Core: keys unwrapped during the await, rows decrypted after it.
                    assert (await conn.execute(sa.select(NOTES.c.body))).scalar() == "a note"
                    encryptor.clear_cache()
                    streamed = await conn.stream(sa.select(Patient.national_id))
                    assert len([row async for row in streamed]) == 6  # a Decrypt per row

                sqla_envelope.configure(reader)
                async with AsyncSession(engine) as session:
                    assert len(await _national_ids(session)) == 6
            return loop_thread

        loop_thread = asyncio.run(scenario())
        assert sends.operations() == {"GenerateDataKey", "Decrypt", "DescribeKey"}
        assert loop_thread not in sends.threads()

    def test_bounded_reuse_requests_never_run_on_the_event_loop_thread(
        self, url: sa.URL, kms: Kms, sends: Sends
    ) -> None:
        """New wrapping keys, for a batch or one value, and a result's: off the loop."""
        encryptor = _configure(kms.keyring(mode="bounded_reuse", max_rows=2))

        async def scenario() -> int:
            async with _database(url, Base.metadata) as engine:
                async with AsyncSession(engine) as session:
                    session.add_all(_patients(1, 6))
                    await session.commit()  # three wrapping keys, made ahead
                encryptor.clear_cache()
                async with AsyncSession(engine) as session:
                    assert len(await _national_ids(session)) == 6  # three wrapping keys
                encryptor.clear_cache()  # forgets the wrapping keys, for writing too
                async with AsyncSession(engine) as session:
                    ada = await session.get(Patient, 1)  # one wrapping key
                    assert ada is not None
                    assert ada.national_id == "N00000001"
                    session.add(Patient(id=7, name="Bo", national_id="B7"))
                    await session.commit()  # a new wrapping key for one value
            return threading.get_ident()

        loop_thread = asyncio.run(scenario())
        assert sorted(op for op, _ in sends.sent) == ["Decrypt"] * 4 + ["GenerateDataKey"] * 4
        assert loop_thread not in sends.threads()

    def test_bounded_reuse_wraps_on_the_loop_while_a_wrapping_key_is_at_hand(
        self, url: sa.URL, kms: Kms, sends: Sends
    ) -> None:
        """A thread hop per value cost eight times the wrap: only a KMS call hops."""
        keyring = kms.keyring(mode="bounded_reuse", max_rows=4)
        generated: list[int] = []  # threads of the calls that may need KMS
        in_memory: list[int] = []  # threads of the values wrapped under a key at hand
        generate, at_hand = keyring.generate_data_key, keyring.generate_data_key_in_memory

        def watched_generate(context: Any) -> Any:
            generated.append(threading.get_ident())
            return generate(context)

        def watched_at_hand(context: Any) -> Any:
            made = at_hand(context)
            if made is not None:
                in_memory.append(threading.get_ident())
            return made

        keyring.generate_data_key = watched_generate  # type: ignore[method-assign]
        keyring.generate_data_key_in_memory = watched_at_hand  # type: ignore[method-assign]
        _configure(keyring)

        async def scenario() -> int:
            async with _database(url, Base.metadata) as engine:
                async with AsyncSession(engine) as session:
                    session.add_all(_patients(1, 12))
                    await session.commit()  # three wrapping keys, made ahead off the loop
                async with AsyncSession(engine) as session:
                    session.add(Patient(id=13, name="Bo", national_id="B13"))
                    await session.commit()  # the keys are used up: a new one, off the loop
                async with AsyncSession(engine) as session:
                    assert len(await _national_ids(session)) == 13
            return threading.get_ident()

        loop_thread = asyncio.run(scenario())
        assert set(in_memory) == {loop_thread} and len(in_memory) == 12
        assert len(generated) == 1 and loop_thread not in generated
        assert [op for op, _ in sends.sent].count("GenerateDataKey") == 4
        assert loop_thread not in sends.threads()

    def test_the_loop_serves_other_tasks_while_a_kms_request_is_held(
        self, url: sa.URL, kms: Kms, sends: Sends
    ) -> None:
        encryptor = _configure(kms.keyring())

        async def meanwhile(engine: Any) -> None:
            """Another task: waits for the held request, queries the database, releases it."""
            while not sends.held.is_set():
                await asyncio.sleep(0.001)
            async with engine.connect() as conn:
                assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1
            sends.release.set()

        async def write(engine: Any) -> None:
            async with AsyncSession(engine) as session:
                session.add(Patient(id=1, name="Ada", national_id="AB123456C"))
                await session.commit()

        async def read(engine: Any) -> str | None:
            async with AsyncSession(engine) as session:
                ada = await session.get(Patient, 1)
                return ada.national_id if ada is not None else None

        async def scenario() -> None:
            async with _database(url, Base.metadata) as engine:
                sends.hold("GenerateDataKey")
                await asyncio.gather(write(engine), meanwhile(engine))
                encryptor.clear_cache()
                sends.hold("Decrypt")
                found, _ = await asyncio.gather(read(engine), meanwhile(engine))
                assert found == "AB123456C"

        asyncio.run(scenario())
        # Released by the other task, not by the hook's timeout.
        assert sends.released == [True, True]


class TestErrorsAndEvents:
    def test_kms_errors_keep_their_types(
        self,
        url: sa.URL,
        kms: Kms,
        recorder: Recorder,
        sends: Sends,
    ) -> None:
        encryptor = _configure(kms.keyring())

        async def scenario() -> None:
            async with _database(url, Base.metadata, core_metadata) as engine:
                recorder.fail("GenerateDataKey", "DisabledException")
                async with AsyncSession(engine) as session:
                    session.add(Patient(id=1, name="Ada", national_id="AB123456C"))
                    with pytest.raises(KeyringError, match="DisabledException"):
                        await session.commit()
                recorder.failures.clear()
                async with AsyncSession(engine) as session:
                    assert await _national_ids(session) == []
                    session.add(Patient(id=1, name="Ada", national_id="AB123456C"))
                    await session.commit()

                encryptor.clear_cache()
                recorder.fail("Decrypt", "AccessDeniedException")
                async with AsyncSession(engine) as session:
                    with pytest.raises(KeyringError, match="AccessDeniedException"):
                        await session.get(Patient, 1)
                recorder.failures.clear()

                # A value copied into another column: KMS refuses its context.
                copy = sa.text("UPDATE aio_patients SET record = national_id")
                async with engine.begin() as conn:
                    await conn.execute(copy)
                async with AsyncSession(engine) as session:
                    with pytest.raises(DecryptionError, match=r"aio_patients\.record"):
                        await session.get(Patient, 1)

        asyncio.run(scenario())
        assert threading.main_thread().ident not in sends.threads()

    def test_audit_events_fire_in_the_requesting_tasks_context(
        self, url: sa.URL, kms: Kms, sends: Sends
    ) -> None:
        request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
        events: list[tuple[str, bool, str]] = []

        def listener(event: KeyEvent) -> None:
            events.append((event.operation, event.cache_hit, request_id.get("none")))

        encryptor = _configure(kms.keyring(), listeners=[listener])

        async def handle(engine: Any, name: str, body: Callable[[AsyncSession], Any]) -> None:
            request_id.set(name)
            async with AsyncSession(engine) as session:
                await body(session)

        async def create(session: AsyncSession) -> None:
            session.add(Patient(id=1, name="Ada", national_id="AB123456C"))
            await session.commit()

        async def show(session: AsyncSession) -> None:
            ada = await session.get(Patient, 1)
            assert ada is not None and ada.national_id == "AB123456C"

        async def scenario() -> None:
            async with _database(url, Base.metadata) as engine:
                await asyncio.create_task(handle(engine, "create", create))
                encryptor.clear_cache()
                await asyncio.create_task(handle(engine, "show", show))
                await asyncio.create_task(handle(engine, "again", show))

        asyncio.run(scenario())
        assert events == [
            ("wrap", False, "create"),
            ("unwrap", False, "show"),  # prefetched off the loop, in a copy of the context
            ("unwrap", True, "show"),
            ("unwrap", True, "again"),
        ]
        assert len(sends.sent) == 2


class TestElsewhere:
    def test_outside_asyncio_requests_run_on_the_calling_thread(
        self,
        engine: sa.Engine,
        metadata: sa.MetaData,
        kms: Kms,
        sends: Sends,
    ) -> None:
        _configure(kms.keyring(), prefetch=False)
        table = sa.Table(
            "sync_notes",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("body", sqla_envelope.EncryptedType(sa.Text)),
        )
        metadata.create_all(engine)
        threads: list[int] = []

        def work() -> None:
            threads.append(threading.get_ident())
            with engine.begin() as conn:
                conn.execute(sa.insert(table), [{"id": len(threads), "body": "x"}])
                assert conn.execute(sa.select(table.c.body)).scalars().all()[-1] == "x"

        work()
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        assert [thread for _, thread in sends.sent] == [threads[0]] * 2 + [threads[1]] * 2

    def test_without_greenlet_every_call_runs_inline(self) -> None:
        """SQLAlchemy's asyncio needs greenlet; sqla_envelope must not."""
        program = """
import sys
sys.modules["greenlet"] = None  # as if not installed: importing it raises ImportError
import threading
import sqla_envelope
from sqla_envelope import Encryptor, LocalKeyring
from sqla_envelope.offload import in_async_greenlet

class Remote(LocalKeyring):
    unwraps_remotely = True
    def unwrap_data_key(self, wrapped_keys, context):
        assert threading.current_thread() is threading.main_thread()
        return super().unwrap_data_key(wrapped_keys, context)

enc = Encryptor(Remote.generate(), prefetch=False)
assert not in_async_greenlet()
assert enc.decrypt(enc.encrypt(b"v", {"t": "x"}), {"t": "x"}) == b"v"
print("ok")
"""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=60
        )
        assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_forked_child_moves_requests_off_its_own_loop(tmp_path: Path) -> None:
    """The parent's worker threads do not exist in a child; new ones must be started."""

    class Remote(LocalKeyring):
        unwraps_remotely = True
        threads: list[int] = []

        def generate_data_key(self, context: Any) -> Any:
            self.threads.append(threading.get_ident())
            return super().generate_data_key(context)

    keyring = Remote.generate()
    sqla_envelope.configure(Encryptor(keyring))

    async def write(db: Path) -> int:
        engine = create_async_engine(f"sqlite+aiosqlite:///{db}")
        try:
            async with engine.begin() as conn:
                await conn.run_sync(core_metadata.create_all)
                await conn.execute(sa.insert(NOTES), [{"id": 1, "body": "one"}])
        finally:
            await engine.dispose()
        return threading.get_ident()

    loop_thread = asyncio.run(write(tmp_path / "parent.db"))  # starts the workers
    assert len(keyring.threads) == 1 and keyring.threads[0] != loop_thread

    def child() -> None:
        loop_thread = asyncio.run(write(tmp_path / "child.db"))
        assert len(keyring.threads) == 2 and keyring.threads[1] != loop_thread

    assert in_child(child) == "ok"
