"""Hiding KMS latency: keys made ahead for multi-row writes, unwrapped concurrently on reads."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
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
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sqla_envelope
from sqla_envelope import (
    EncryptedType,
    Encryptor,
    KeyringError,
    KmsKeyring,
    rewrap,
    unpack_envelope,
)
from sqla_envelope.context import EncryptionContext
from sqla_envelope.keyrings._kms_pool import DataKeyPool
from sqla_envelope.keyrings.base import DataKey

pytestmark = pytest.mark.usefixtures("aws_env")


class Latency:
    """Holds each KMS request for ``seconds`` and records how many were held at once.

    With ``gather`` set, a request is also held until that many are in flight
    together: requests that are really concurrent then reach the peak whatever
    the machine's load, and serialized ones never do (after 10 s of waiting
    gathering stops, so that such a failure does not cost 10 s a request).
    Asserting on ``peak`` without ``gather`` is a bet on the scheduler.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.now = 0
        self.peak = 0
        self.gather = 0
        self._lock = threading.Condition()

    def __call__(self, **_: Any) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self._lock.notify_all()
            if self.gather and not self._lock.wait_for(
                lambda: self.peak >= self.gather, timeout=10
            ):
                self.gather = 0
        time.sleep(self.seconds)
        with self._lock:
            self.now -= 1


@pytest.fixture
def latency(recorder: Recorder) -> Latency:
    held = Latency(0.03)
    # Registered before the keyring builds its clients, and before the recorder's
    # own before-send hook, so injected failures are delayed too.
    recorder.session.events.register_first("before-send.kms", held)
    return held


@pytest.fixture
def new_keyring(recorder: Recorder, kms_endpoint: str) -> Iterator[Callable[..., KmsKeyring]]:
    built: list[KmsKeyring] = []

    def build(key_id: str, **kwargs: Any) -> KmsKeyring:
        kwargs.setdefault("region_name", REGION)
        kwargs.setdefault("endpoint_url", kms_endpoint)
        kwargs.setdefault("max_attempts", 1)
        keyring = KmsKeyring(key_id, session=recorder.session, **kwargs)
        built.append(keyring)
        return keyring

    yield build
    for keyring in built:
        keyring.close()


@pytest.fixture
def key(make_key: Callable[..., Key]) -> Key:
    return make_key()


@pytest.fixture
def people(tmp_path: Any) -> Iterator[tuple[sa.Engine, type[Any]]]:
    class Base(DeclarativeBase):
        pass

    class Person(Base):
        __tablename__ = "people"
        id: Mapped[int] = mapped_column(primary_key=True)
        ssn: Mapped[str] = mapped_column(EncryptedType(sa.String))

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'people.db'}")
    Base.metadata.create_all(engine)
    yield engine, Person
    sqla_envelope.configure(None)


def _insert(engine: sa.Engine, person: type[Any], count: int, start: int = 0) -> None:
    with Session(engine) as session:
        session.add_all([person(id=i, ssn=f"{i:09d}") for i in range(start, start + count)])
        session.commit()


def _write_rows(engine: sa.Engine, person: type[Any], writer: KmsKeyring, count: int) -> None:
    """A read test's setup: ``count`` rows written through ``writer`` as the default."""
    sqla_envelope.configure(Encryptor(writer))
    _insert(engine, person, count)


@pytest.mark.parametrize(
    ("prefetch", "rows", "overlapped"),
    [
        (8, 40, True),  # a flush's keys are generated concurrently, ahead of its rows
        (0, 6, False),  # prefetch off: one round trip after another
        (32, 1, False),  # a single row: nothing to generate ahead
    ],
)
def test_writes_generate_one_data_key_per_value_ahead_when_there_are_several(
    key: Key,
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    latency: Latency,
    people: tuple[sa.Engine, type[Any]],
    prefetch: int,
    rows: int,
    overlapped: bool,
) -> None:
    engine, person = people
    keyring = new_keyring(key.arn, prefetch=prefetch)
    sqla_envelope.configure(Encryptor(keyring))
    latency.gather = 2 if overlapped else 0
    _insert(engine, person, rows)
    assert recorder.operations().count("GenerateDataKey") == rows  # no key wasted
    assert (latency.peak > 1) == overlapped  # (speed itself is measured in bench/)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT ssn FROM people")).scalars().all()
    assert len({unpack_envelope(bytes(v)).wrapped_keys for v in stored}) == rows  # never reused
    assert (keyring._pool is None) == (prefetch == 0)
    assert keyring._pool is None or keyring._pool.pooled() == 0  # none left over


def test_select_unwraps_a_results_keys_concurrently_and_duplicates_once(
    key: Key,
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    latency: Latency,
    people: tuple[sa.Engine, type[Any]],
) -> None:
    engine, person = people
    _write_rows(engine, person, new_keyring(key.arn, prefetch=0), 30)
    with engine.begin() as conn:  # row 29 now holds a copy of row 0's value
        conn.execute(
            sa.text("UPDATE people SET ssn = (SELECT ssn FROM people WHERE id = 0) WHERE id = 29")
        )
    reader = Encryptor(new_keyring(key.arn))
    sqla_envelope.configure(reader)
    recorder.clear()
    latency.peak = 0
    latency.gather = 2
    with Session(engine) as session:
        loaded = session.scalars(sa.select(person).order_by(person.id)).all()
        assert [p.ssn for p in loaded[:3]] == ["000000000", "000000001", "000000002"]
        assert loaded[29].ssn == "000000000"
    assert recorder.operations().count("Decrypt") == 29  # 30 rows, 29 distinct keys
    assert latency.peak > 1
    assert reader.stats()["cache_hits"] >= 30


def test_a_kms_failure_stops_the_rest_of_a_results_prefetch(
    key: Key,
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    people: tuple[sa.Engine, type[Any]],
) -> None:
    engine, person = people
    _write_rows(engine, person, new_keyring(key.arn, prefetch=0), 40)
    sqla_envelope.configure(Encryptor(new_keyring(key.arn), max_workers=2))
    recorder.fail("Decrypt", "ThrottlingException")
    recorder.clear()
    with Session(engine) as session, pytest.raises(KeyringError, match="ThrottlingException"):
        session.scalars(sa.select(person)).all()
    time.sleep(0.5)  # what is still queued would run now
    # about a failing request per worker (two), not one per row (forty)
    assert recorder.operations().count("Decrypt") <= 4


def test_prefetch_can_be_turned_off_per_statement(
    key: Key,
    new_keyring: Callable[..., KmsKeyring],
    latency: Latency,
    people: tuple[sa.Engine, type[Any]],
) -> None:
    engine, person = people
    _write_rows(engine, person, new_keyring(key.arn, prefetch=0), 5)
    sqla_envelope.configure(Encryptor(new_keyring(key.arn)))
    latency.peak = 0
    with Session(engine) as session:
        stmt = sa.select(person).execution_options(sqla_envelope_prefetch=False)
        assert len(session.scalars(stmt).all()) == 5
    assert latency.peak == 1


def test_core_results_prefetch_too_and_unwrap_all_is_explicit(
    key: Key,
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    latency: Latency,
    people: tuple[sa.Engine, type[Any]],
) -> None:
    engine, person = people
    _write_rows(engine, person, new_keyring(key.arn, prefetch=0), 10)
    table = person.__table__
    reader = Encryptor(new_keyring(key.arn), prefetch=False)
    sqla_envelope.configure(reader)
    with engine.connect() as conn:
        raw = conn.execute(sa.select(sa.type_coerce(table.c.ssn, sa.LargeBinary))).scalars().all()
        latency.peak = 0
        latency.gather = 2
        assert reader.unwrap_all(raw, {"table": "people", "column": "ssn"}) == 10
        assert latency.peak > 1
        latency.gather = 0
        recorder.clear()
        values = conn.execute(sa.select(table.c.ssn)).scalars().all()
    assert sorted(values) == [f"{i:09d}" for i in range(10)]
    assert "Decrypt" not in recorder.operations()  # every key came from the cache


def test_kms_failure_during_a_bulk_write_fails_the_statement(
    key: Key,
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    people: tuple[sa.Engine, type[Any]],
) -> None:
    engine, person = people
    sqla_envelope.configure(Encryptor(new_keyring(key.arn, prefetch=8)))
    recorder.fail("GenerateDataKey", "KMSInternalException", 500)
    with pytest.raises(KeyringError, match="KMSInternalException"):
        _insert(engine, person, 20)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM people")).scalar() == 0


@pytest.mark.parametrize(
    ("code", "status"), [("AccessDeniedException", 400), ("KMSInternalException", 500)]
)
def test_a_failed_batch_asks_kms_only_what_was_already_in_flight(
    key: Key,
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    latency: Latency,
    people: tuple[sa.Engine, type[Any]],
    code: str,
    status: int,
) -> None:
    """The first refusal ends the batch: no second round ahead, no call of the writer's own.

    Before, the writer found no key ready, started another round of ``prefetch``
    requests for the rows still reserved, then asked once more itself: 17 requests
    for a refusal that the first 8 had already answered.
    """
    engine, person = people
    writer = new_keyring(key.arn, prefetch=8)
    sqla_envelope.configure(Encryptor(writer))
    recorder.fail("GenerateDataKey", code, status)
    with pytest.raises(KeyringError, match=code):
        _insert(engine, person, 20)
    pool = writer._pool
    assert pool is not None
    deadline = time.monotonic() + 10
    while pool.in_flight() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert recorder.sends == ["GenerateDataKey"] * 8
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM people")).scalar() == 0
    # The refusal was the failed statement's own: once KMS answers, the next
    # statement, one row or many, writes, and a single-row one asks once.
    recorder.failures.clear()
    recorder.clear()
    _insert(engine, person, 1)
    assert recorder.sends == ["GenerateDataKey"]
    _insert(engine, person, 20, start=1)
    assert recorder.sends.count("GenerateDataKey") == 21


def test_kms_failure_during_a_prefetch_fails_the_select(
    key: Key,
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    latency: Latency,
    people: tuple[sa.Engine, type[Any]],
) -> None:
    engine, person = people
    _write_rows(engine, person, new_keyring(key.arn, prefetch=0), 5)
    sqla_envelope.configure(Encryptor(new_keyring(key.arn)))
    recorder.fail("Decrypt", "AccessDeniedException")
    latency.peak = 0
    latency.gather = 2  # else the first refusal may come back before a second request starts
    with Session(engine) as session, pytest.raises(KeyringError, match="AccessDenied"):
        session.scalars(sa.select(person)).all()
    # The keys were asked for together, ahead of the rows (a row by row read
    # makes one request and stops at its refusal).
    assert latency.peak > 1


def test_pool_is_emptied_in_a_forked_child(
    key: Key, new_keyring: Callable[..., KmsKeyring]
) -> None:
    keyring = new_keyring(key.arn, prefetch=8)
    encryptor = Encryptor(keyring)
    encryptor.reserve({"table": "people", "column": "ssn"}, 8)
    deadline = time.monotonic() + 30
    assert keyring._pool is not None
    while keyring._pool.pooled() < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert keyring._pool.pooled() == 8
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: must not hold the parent's keys
        os.close(read)
        status = b"ok" if keyring._pool.pooled() == 0 else b"kept parent keys"
        os.write(write, status)
        os._exit(0)
    os.close(write)
    answer = os.read(read, 100)
    os.waitpid(pid, 0)
    assert answer == b"ok"
    assert keyring._pool.pooled() == 8  # the parent keeps its own


def test_close_stops_workers_and_drops_pooled_keys(
    key: Key, new_keyring: Callable[..., KmsKeyring]
) -> None:
    keyring = new_keyring(key.arn, prefetch=4)
    encryptor = Encryptor(keyring)
    encryptor.reserve({"table": "t", "column": "c"}, 4)
    keyring.close()
    assert keyring._pool is not None and keyring._pool.pooled() == 0
    envelope = encryptor.encrypt(b"still works", {"table": "t", "column": "c"})
    assert encryptor.decrypt(envelope, {"table": "t", "column": "c"}) == b"still works"


# -- bounded reuse: wrapping keys made ahead for a batch, fetched together for a read


def _wrapping_keys(engine: sa.Engine) -> list[bytes]:
    """The KMS ciphertext of each stored value's wrapping key, in id order."""
    from sqla_envelope.keyrings._kms_blob import parse_blob

    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT ssn FROM people ORDER BY id")).scalars().all()
    return [
        parse_blob(unpack_envelope(bytes(v)).wrapped_keys[0].blob).kms_ciphertext for v in stored
    ]


def test_bounded_reuse_makes_a_batchs_wrapping_keys_together_and_no_more(
    key: Key,
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    latency: Latency,
    people: tuple[sa.Engine, type[Any]],
) -> None:
    engine, person = people
    sqla_envelope.configure(Encryptor(new_keyring(key.arn, mode="bounded_reuse", max_rows=10)))
    latency.gather = 4
    _insert(engine, person, 35)
    assert recorder.operations().count("GenerateDataKey") == 4  # ceil(35 / 10), as row by row
    assert latency.peak == 4  # all four at once: the flush waited one round trip, not four
    latency.gather = 0
    wrapping = _wrapping_keys(engine)
    # each wrapping key serves at most max_rows values, in the order rows were written
    assert [wrapping.count(k) for k in dict.fromkeys(wrapping)] == [10, 10, 10, 5]
    recorder.clear()
    latency.peak = 0
    _insert(engine, person, 15, start=35)  # 5 left on the current key, then 10 more
    assert recorder.operations().count("GenerateDataKey") == 1 and latency.peak == 1
    assert len(set(_wrapping_keys(engine))) == 5


@pytest.mark.parametrize("reader_mode", ["bounded_reuse", "direct"])
def test_bounded_reuse_read_fetches_a_results_wrapping_keys_together(
    reader_mode: str,
    key: Key,
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    latency: Latency,
    people: tuple[sa.Engine, type[Any]],
) -> None:
    engine, person = people
    sqla_envelope.configure(Encryptor(new_keyring(key.arn, mode="bounded_reuse", max_rows=10)))
    _insert(engine, person, 35)
    for prefetch, peak in ((False, 1), (True, 4)):
        # either mode reads values written in the other, at the same cost
        reader = Encryptor(new_keyring(key.arn, mode=reader_mode))
        sqla_envelope.configure(reader)
        recorder.clear()
        latency.peak = 0
        latency.gather = peak
        with Session(engine) as session:
            statement = sa.select(person).order_by(person.id)
            options = {sqla_envelope.PREFETCH_OPTION: prefetch}
            loaded = session.scalars(statement.execution_options(**options)).all()
            assert [p.ssn for p in loaded] == [f"{i:09d}" for i in range(35)]
        assert recorder.operations() == ["Decrypt"] * 4  # one per wrapping key, not per row
        assert latency.peak == peak
        assert reader.stats()["unwraps"] == 35  # each data key still unwrapped, locally


def test_bounded_reuse_kms_failure_before_a_batch_stores_nothing(
    key: Key,
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    people: tuple[sa.Engine, type[Any]],
) -> None:
    engine, person = people
    sqla_envelope.configure(Encryptor(new_keyring(key.arn, mode="bounded_reuse", max_rows=10)))
    recorder.fail("GenerateDataKey", "ThrottlingException")
    with pytest.raises(KeyringError, match="ThrottlingException"):
        _insert(engine, person, 35)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM people")).scalar() == 0
    recorder.failures.clear()
    _insert(engine, person, 35)  # KMS is back: the same batch goes through
    assert len(set(_wrapping_keys(engine))) == 4


def test_rewrap_between_kms_keys_runs_its_kms_calls_concurrently(
    make_key: Callable[..., Key],
    new_keyring: Callable[..., KmsKeyring],
    latency: Latency,
    people: tuple[sa.Engine, type[Any]],
) -> None:
    # Format v2's rewrap seals each value again: a Decrypt and a GenerateDataKey a
    # value, both on the network, so a batch's rows must be worked on together.
    # d942f64 counted workers from the Encryptors instead of their keyrings: one.
    engine, person = people
    old, new = make_key(), make_key()
    _write_rows(engine, person, new_keyring(old.arn, prefetch=0), 12)
    latency.peak = 0
    latency.gather = 2
    changed = rewrap(engine, person.ssn, new_keyring(new.arn, prefetch=0))
    assert changed == 12
    assert latency.peak > 1


class _Recovering:
    """A GenerateDataKey that refuses the first request at once, answers "down" to the
    three others of its batch when ``answer`` is set, and succeeds once KMS is back."""

    def __init__(self) -> None:
        self.back = False
        self.answer = threading.Event()
        self.waiting = threading.Semaphore(0)
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, context: EncryptionContext) -> DataKey:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if self.back:
            return DataKey(os.urandom(32), ())
        if first:
            raise KeyringError("first refusal")
        self.waiting.release()
        assert self.answer.wait(30)
        raise KeyringError("an answer of the failed batch")


def test_a_failed_batchs_requests_still_in_flight_do_not_fail_the_next_batch() -> None:
    # As a read's unwraps (d4f293d), so a write's data keys made ahead: a statement
    # run again once KMS is back got the failure of a request of the statement
    # that had failed, answered after the new batch had started.
    kms = _Recovering()
    pool = DataKeyPool(kms, size=4, workers=4)
    context = EncryptionContext({"table": "people", "column": "ssn"})
    pool.reserve(context, 4)
    with pytest.raises(KeyringError, match="first refusal"):
        pool.take(context)
    for _ in range(3):  # the others of that batch are under way
        assert kms.waiting.acquire(timeout=30)
    kms.back = True
    pool.reserve(context, 4)  # the statement again
    kms.answer.set()  # the old requests' answers arrive now
    try:
        assert len({pool.take(context).plaintext for _ in range(4)}) == 4
    finally:
        pool.close()
