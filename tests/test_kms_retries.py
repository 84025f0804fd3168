"""KMS failures that pass are retried within a budget; the others stop the work at once.

Issue 12, finding 8: a rewrap batch failed on three throttled answers in a row
to one request, and under a persistent denial about 170 more requests were sent
before the error reached the caller. Against moto's server, faults injected as
real KMS error responses through botocore (tests/kms_server.py).
"""

from __future__ import annotations

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

import sqla_envelope
from sqla_envelope import EncryptedType, Encryptor, KeyringError, KmsKeyring, rewrap
from sqla_envelope.context import EncryptionContext
from sqla_envelope.keyrings import kms as kms_module
from sqla_envelope.keyrings._kms_errors import backoff
from sqla_envelope.maintenance import rewrap_column

pytestmark = pytest.mark.usefixtures("aws_env")
CONTEXT = {"table": "accounts", "column": "token"}
ROWS = 40


@pytest.fixture
def new_keyring(recorder: Recorder, kms_endpoint: str) -> Iterator[Callable[..., KmsKeyring]]:
    built: list[KmsKeyring] = []

    def build(key_id: str, **kwargs: Any) -> KmsKeyring:
        kwargs.setdefault("region_name", REGION)
        kwargs.setdefault("endpoint_url", kms_endpoint)
        kwargs.setdefault("prefetch", 0)
        keyring = KmsKeyring(key_id, session=recorder.session, **kwargs)
        built.append(keyring)
        return keyring

    yield build
    for keyring in built:
        keyring.close()


@pytest.fixture
def accounts(engine: sa.Engine) -> Iterator[sa.Table]:
    metadata = sa.MetaData()
    table = sa.Table(
        "retry_accounts",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("token", EncryptedType(sa.String(40), context=CONTEXT)),
    )
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield table
    metadata.drop_all(engine)
    sqla_envelope.configure(None)


def _fill(engine: sa.Engine, table: sa.Table, keyring: KmsKeyring) -> None:
    sqla_envelope.configure(Encryptor(keyring))
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "token": f"tok-{i}"} for i in range(1, ROWS + 1)])


def _tokens(engine: sa.Engine, table: sa.Table, keyring: KmsKeyring) -> list[str]:
    sqla_envelope.configure(Encryptor(keyring))
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(table.c.token)).scalars())


def test_a_rewrap_absorbs_four_throttled_answers_in_a_row(
    engine: sa.Engine,
    accounts: sa.Table,
    make_key: Callable[..., Key],
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
) -> None:
    old, new = make_key(), make_key()
    _fill(engine, accounts, new_keyring(old.arn))
    recorder.clear()
    recorder.fail("Decrypt", "ThrottlingException", times=4)
    assert rewrap(engine, accounts.c.token, new_keyring(new.arn), workers=1) == ROWS
    assert recorder.sends.count("Decrypt") == ROWS + 4  # each throttled answer asked again
    assert _tokens(engine, accounts, new_keyring(new.arn)) == sorted(
        f"tok-{i}" for i in range(1, ROWS + 1)
    )


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("AccessDeniedException", 400),
        ("DisabledException", 400),
        ("NotFoundException", 400),
        ("KMSInvalidStateException", 400),
    ],
)
def test_a_permanent_error_stops_the_rewrap_after_the_requests_in_flight(
    engine: sa.Engine,
    accounts: sa.Table,
    make_key: Callable[..., Key],
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    code: str,
    status: int,
) -> None:
    old, new = make_key(), make_key()
    _fill(engine, accounts, new_keyring(old.arn))
    recorder.clear()
    recorder.fail("GenerateDataKey", code, status)
    workers = 4
    with pytest.raises(KeyringError, match=code):
        rewrap_column(
            engine, accounts.c.token, new_keyring(new.arn), batch_size=ROWS, workers=workers
        )
    # Never asked twice, and no row started after the first denial: at most the
    # requests already in flight on the other workers.
    assert 1 <= recorder.sends.count("GenerateDataKey") <= workers
    recorder.failures.clear()
    assert rewrap(engine, accounts.c.token, new_keyring(new.arn)) == ROWS  # the rerun finishes


class _FakeTime:
    """kms.py's ``time``: a clock that only the keyring's own sleeps move forward.

    The retry budget is then checked in the keyring's own seconds, which a
    loaded machine cannot stretch as it can a stopwatch around the call.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_permanent_error_is_raised_at_once_and_a_throttle_within_the_budget(
    make_key: Callable[..., Key],
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _FakeTime()
    monkeypatch.setattr(kms_module, "time", fake)
    key = make_key()
    recorder.fail("GenerateDataKey", "AccessDeniedException")
    with pytest.raises(KeyringError, match="AccessDeniedException"):
        new_keyring(key.arn).generate_data_key(EncryptionContext(CONTEXT))
    assert recorder.sends == ["GenerateDataKey"]
    recorder.clear()
    recorder.fail("GenerateDataKey", "ThrottlingException")
    assert fake.slept == []  # a permanent error is not waited on either
    keyring = new_keyring(key.arn, max_attempts=50, retry_budget=0.5)
    with pytest.raises(KeyringError, match="ThrottlingException"):
        keyring.generate_data_key(EncryptionContext(CONTEXT))
    # Backed off until the budget was spent, and no longer: the budget, not 50 attempts.
    assert sum(fake.slept) == pytest.approx(0.5)
    assert 2 <= recorder.sends.count("GenerateDataKey") < 50


def test_backoff_is_full_jitter_under_a_growing_cap() -> None:
    highest = [backoff(n, lambda low, high: high) for n in range(8)]
    assert highest == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert all(backoff(n, lambda low, high: low) == 0.0 for n in range(8))
