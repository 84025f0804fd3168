"""The fault matrix: KMS failing during insert, select and rewrap, and a killed connection.

Issue 12, item 9(b). Each KMS fault is a real botocore exchange: an error answer
injected after botocore built and signed the request (tests/kms_server.py), or a
closed port for an unreachable KMS. For every fault and phase, on SQLite,
PostgreSQL and MariaDB: the caller gets a library error (never garbage, never a
bare botocore exception), nothing reaches the table in plaintext, no stored row
is lost or changed by a failed step, and once the fault is gone the same step
run again completes and every row reads back. A PostgreSQL connection killed
with ``pg_terminate_backend`` in the middle of a rewrap loses nothing either.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import POSTGRES_URL
from kms_server import (  # noqa: F401 - pytest fixtures
    CLOSED_ENDPOINT,
    REGION,
    Key,
    Recorder,
    aws_env_fixture,
    kms_endpoint_fixture,
    make_key_fixture,
    recorder_fixture,
)

import sqla_envelope
from sqla_envelope import (
    EncryptedType,
    Encryptor,
    EnvelopeError,
    KeyringError,
    KmsKeyring,
    LocalKeyring,
    rewrap,
)
from sqla_envelope.context import EncryptionContext
from sqla_envelope.envelope import WrappedKey
from sqla_envelope.keyrings.base import DataKey

pytestmark = pytest.mark.usefixtures("aws_env")
CONTEXT = {"table": "fault_accounts", "column": "token"}
ROWS = 12
NEW_ROWS = range(100, 104)

# Injected answers: (error code, HTTP status, how many answers fail; None: all).
# "unreachable" is a closed port instead. A brief throttle is absorbed by the
# keyring's retries; every other fault must fail the step.
FAULTS: dict[str, tuple[str, int, int | None] | None] = {
    "unreachable": None,
    "throttled": ("ThrottlingException", 400, None),
    "throttled-briefly": ("ThrottlingException", 400, 2),
    "denied": ("AccessDeniedException", 400, None),
    "disabled": ("DisabledException", 400, None),
    "key-pending-deletion": ("KMSInvalidStateException", 400, None),
}
PHASES = ("insert", "select", "rewrap")


def secret(i: int) -> str:
    """A plaintext distinctive enough to search the raw table for."""
    return f"fault-matrix-secret-{i:04d}"


def token_table(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("token", EncryptedType(sa.String(40), context=CONTEXT)),
    )


@pytest.fixture
def accounts(engine: sa.Engine) -> Iterator[sa.Table]:
    table = token_table("fault_accounts")
    metadata = table.metadata
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield table
    metadata.drop_all(engine)
    sqla_envelope.configure(None)


@pytest.fixture
def keyrings(recorder: Recorder, kms_endpoint: str) -> Iterator[Callable[..., KmsKeyring]]:
    """Build KmsKeyrings through the recorder, with a short retry budget."""
    built: list[KmsKeyring] = []

    def build(key_id: str, *, reachable: bool = True, **kwargs: Any) -> KmsKeyring:
        keyring = KmsKeyring(
            key_id,
            session=recorder.session,
            region_name=REGION,
            endpoint_url=kms_endpoint if reachable else CLOSED_ENDPOINT,
            connect_timeout=0.5,
            **{"retry_budget": 0.3, **kwargs},
        )
        built.append(keyring)
        return keyring

    build.built = built  # type: ignore[attr-defined]
    yield build
    for keyring in built:
        keyring.close()


def settle(keyrings: Callable[..., KmsKeyring], recorder: Recorder) -> None:
    """Wait until no request made ahead is still running and every call was sent."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pools = [k._pool for k in keyrings.built]  # type: ignore[attr-defined]
        if all(pool is None or pool.in_flight() == 0 for pool in pools) and len(
            recorder.sends
        ) == len(recorder.calls):
            return
        time.sleep(0.01)


def raw_rows(engine: sa.Engine, table: sa.Table) -> dict[int, bytes]:
    """The stored bytes of every row, read past the column type."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT id, token FROM {table.name}")).all()
    return {row[0]: bytes(row[1]) if row[1] is not None else b"" for row in rows}


def plaintexts(engine: sa.Engine, table: sa.Table, keyring: KmsKeyring) -> dict[int, str]:
    sqla_envelope.configure(Encryptor(keyring))
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(table.c.id, table.c.token)).all())  # type: ignore[arg-type]


def inject(recorder: Recorder, fault: tuple[str, int, int | None] | None) -> None:
    if fault is not None:
        code, status, times = fault
        for operation in ("GenerateDataKey", "Decrypt"):
            recorder.fail(operation, code, status, times=times)


def expected_error(fault_name: str) -> str:
    fault = FAULTS[fault_name]
    return "could not reach|connect|Connect" if fault is None else fault[0]


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("fault_name", list(FAULTS))
def test_a_kms_fault_fails_closed_loses_nothing_and_the_rerun_completes(
    engine: sa.Engine,
    accounts: sa.Table,
    make_key: Callable[..., Key],
    keyrings: Callable[..., KmsKeyring],
    recorder: Recorder,
    fault_name: str,
    phase: str,
) -> None:
    old, new = make_key(), make_key()
    sqla_envelope.configure(Encryptor(keyrings(old.arn)))
    with engine.begin() as conn:
        conn.execute(accounts.insert(), [{"id": i, "token": secret(i)} for i in range(ROWS)])
    before = raw_rows(engine, accounts)
    fault = FAULTS[fault_name]
    transient = fault is not None and fault[2] is not None
    reachable = fault is not None
    recorder.clear()
    inject(recorder, fault)

    # A brief throttle must be absorbed whatever the machine's load: its requests
    # run concurrently (data keys ahead, unwraps together), and a retry answered
    # after a short budget would fail the step. The others fail fast.
    budget = {"retry_budget": 10.0} if transient else {}

    def step() -> Any:
        if phase == "insert":
            sqla_envelope.configure(Encryptor(keyrings(old.arn, reachable=reachable, **budget)))
            with engine.begin() as conn:
                conn.execute(accounts.insert(), [{"id": i, "token": secret(i)} for i in NEW_ROWS])
            return None
        if phase == "select":
            return plaintexts(engine, accounts, keyrings(old.arn, reachable=reachable, **budget))
        # rewrap: the old values read through a working keyring, the new data
        # keys asked of the failing one (or both failing, for injected answers)
        sqla_envelope.configure(Encryptor(keyrings(old.arn, **budget)))
        return rewrap(engine, accounts.c.token, keyrings(new.arn, reachable=reachable, **budget))

    used = {"insert": "GenerateDataKey", "select": "Decrypt", "rewrap": "GenerateDataKey"}[phase]
    if transient:
        step()  # two throttled answers are retried within the budget
        assert recorder.remaining[used] < 0  # both were answered, and asked again
    else:
        with pytest.raises(EnvelopeError) as raised:
            step()
        assert isinstance(raised.value, KeyringError), repr(raised.value)
        message = str(raised.value)
        assert any(part in message for part in expected_error(fault_name).split("|")), message
        assert "fault-matrix-secret" not in message
        if fault is not None:
            # Each attempt is a request of its own (the keyring retries, not
            # botocore). Only those already started when the first error came
            # back follow it: the keyring's concurrent unwraps or data keys
            # ahead, never one per row after it, and a permanent error is never
            # asked again.
            settle(keyrings, recorder)
            blobs = [params["CiphertextBlob"] for params in recorder.params("Decrypt")]
            generated = len(recorder.params("GenerateDataKey"))
            if fault_name == "throttled":
                assert len(recorder.sends) <= ROWS * 8  # max_attempts each, in the budget
            else:
                assert len(blobs) == len(set(blobs)) <= ROWS
                assert generated <= (len(NEW_ROWS) if phase == "insert" else ROWS)
            # botocore retries nothing itself: each attempt is one request.
            assert len(recorder.sends) == len(recorder.calls)
            if phase == "insert" and fault_name != "throttled":
                # The rows' keys were asked for together, ahead; the refusal ended
                # the batch: no second round ahead, no call of the writer's own.
                assert len(recorder.params("GenerateDataKey")) == len(NEW_ROWS)
        after = raw_rows(engine, accounts)
        assert after == before  # nothing lost, nothing changed, nothing added

    stored = raw_rows(engine, accounts)
    assert not any(b"fault-matrix-secret" in value for value in stored.values())

    # The fault is gone: the same step again, then every row reads back.
    recorder.failures.clear()
    recorder.remaining.clear()
    reachable = True
    if not transient:
        step()
    expected = {i: secret(i) for i in range(ROWS)}
    if phase == "insert":
        expected.update({i: secret(i) for i in NEW_ROWS})
    reader = (
        keyrings(new.arn, decrypt_key_ids=[old.arn]) if phase == "rewrap" else keyrings(old.arn)
    )
    assert plaintexts(engine, accounts, reader) == expected
    if phase == "rewrap":  # every value moved: a second rerun has nothing to do
        assert rewrap(engine, accounts.c.token, keyrings(new.arn)) == 0


class _KillAfter:
    """A LocalKeyring whose Nth new data key first kills the rewrap's connection.

    ``pg_terminate_backend`` from another connection, as an operator or a failover
    would: the rewrap's open transaction is lost in the middle of a batch.
    """

    unwraps_in_memory = True

    def __init__(self, keyring: LocalKeyring, after: int, kill: Callable[[], None]) -> None:
        self._keyring = keyring
        self._left = after
        self._kill = kill
        self.mode = keyring.mode

    def generate_data_key(self, context: EncryptionContext) -> DataKey:
        self._left -= 1
        if self._left == 0:
            self._kill()
        return self._keyring.generate_data_key(context)

    def wrap_data_key(self, data_key: bytes, context: EncryptionContext) -> tuple[WrappedKey, ...]:
        return self._keyring.wrap_data_key(data_key, context)

    def unwrap_data_key(
        self, wrapped_keys: Sequence[WrappedKey], context: EncryptionContext
    ) -> bytes:
        return self._keyring.unwrap_data_key(wrapped_keys, context)

    def is_primary(self, wrapped_key: WrappedKey) -> bool:
        return self._keyring.is_primary(wrapped_key)


def test_a_rewrap_whose_postgresql_connection_is_killed_loses_no_row_and_reruns() -> None:
    app = "sqla-envelope-fault-rewrap"
    engine = sa.create_engine(POSTGRES_URL, connect_args={"application_name": app})
    admin = sa.create_engine(POSTGRES_URL)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:  # pragma: no cover - conftest's rule
        pytest.fail(f"PostgreSQL not reachable: {exc}")
    table = token_table("fault_killed")
    metadata = table.metadata
    metadata.drop_all(admin)
    metadata.create_all(admin)
    keys = {"old": os.urandom(32), "new": os.urandom(32)}
    old, new = LocalKeyring({"old": keys["old"]}), LocalKeyring({"new": keys["new"]})
    both = LocalKeyring(keys, primary="new")
    kills: list[int] = []

    def kill() -> None:
        with admin.connect() as conn:
            pids = conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :app AND pid <> pg_backend_pid()"
                ),
                {"app": app},
            ).all()
            kills.append(len(pids))

    try:
        sqla_envelope.configure(Encryptor(old))
        rows = 50
        with admin.begin() as conn:
            conn.execute(table.insert(), [{"id": i, "token": secret(i)} for i in range(rows)])
        before = raw_rows(admin, table)
        # batches of 10: the kill lands while the third batch seals its values
        with pytest.raises(sa.exc.DBAPIError):
            rewrap(engine, table.c.token, Encryptor(_KillAfter(new, 25, kill)), batch_size=10)
        assert kills == [1]
        after = raw_rows(admin, table)
        assert after.keys() == before.keys()  # no row lost
        moved = [i for i in after if after[i] != before[i]]
        assert sorted(moved) == list(range(20))  # the two committed batches, no more
        sqla_envelope.configure(Encryptor(both))
        with admin.connect() as conn:
            values = dict(conn.execute(sa.select(table.c.id, table.c.token)).all())
        assert values == {i: secret(i) for i in range(rows)}
        # The rerun moves the rest, and nothing was ever stored in plaintext.
        assert rewrap(engine, table.c.token, Encryptor(new), batch_size=10) == rows - 20
        assert not any(b"fault-matrix-secret" in v for v in raw_rows(admin, table).values())
        sqla_envelope.configure(Encryptor(new))
        with admin.connect() as conn:
            values = dict(conn.execute(sa.select(table.c.id, table.c.token)).all())
        assert values == {i: secret(i) for i in range(rows)}
    finally:
        sqla_envelope.configure(None)
        metadata.drop_all(admin)
        engine.dispose()
        admin.dispose()
