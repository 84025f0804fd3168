"""rewrap with KMS: one Decrypt under the old key and one GenerateDataKey under the new, per value.

Format v2 authenticates the wrapped keys with the value, so a rewrap seals each
value again under a fresh data key instead of re-wrapping it in KMS (ReEncrypt).
"""

from __future__ import annotations

from collections.abc import Callable
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
from sqla_envelope import (
    EncryptedType,
    Encryptor,
    KeyringError,
    KmsKeyring,
    LocalKeyring,
    rewrap,
    unpack_envelope,
)
from sqla_envelope.maintenance import rewrap_column

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
def new_keyring(recorder: Recorder, kms_endpoint: str) -> Callable[..., KmsKeyring]:
    def build(key_id: str, **kwargs: Any) -> KmsKeyring:
        kwargs.setdefault("region_name", REGION)
        kwargs.setdefault("endpoint_url", kms_endpoint)
        kwargs.setdefault("max_attempts", 1)
        kwargs.setdefault("prefetch", 0)
        return KmsKeyring(key_id, session=recorder.session, **kwargs)

    return build


@pytest.fixture
def table(tmp_path: Any) -> tuple[sa.Engine, sa.Table]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'kms-rotation.db'}")
    md = sa.MetaData()
    accounts = sa.Table(
        "accounts",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token", EncryptedType(sa.String)),
    )
    md.create_all(engine)
    return engine, accounts


def _fill(engine: sa.Engine, accounts: sa.Table, keyring: Any, rows: int) -> None:
    """Write tok-0 .. tok-(rows-1) under ``keyring``, which becomes the default."""
    sqla_envelope.configure(Encryptor(keyring))
    with engine.begin() as conn:
        conn.execute(accounts.insert(), [{"id": i, "token": f"tok-{i}"} for i in range(rows)])


def _tokens(engine: sa.Engine, accounts: sa.Table, keyring: Any) -> list[str]:
    """The values as a reader holding only ``keyring`` reads them, sorted."""
    sqla_envelope.configure(Encryptor(keyring))
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(accounts.c.token)).scalars())


def _key_refs(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT token FROM accounts ORDER BY id")).scalars().all()
    return [unpack_envelope(bytes(v)).wrapped_keys[0].key_ref for v in stored]


def test_kms_to_kms_rewrap_decrypts_under_the_old_key_and_seals_under_the_new(
    make_key: Callable[..., Key],
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    table: tuple[sa.Engine, sa.Table],
) -> None:
    engine, accounts = table
    old, new = make_key(), make_key()
    _fill(engine, accounts, new_keyring(old.arn), 12)
    recorder.clear()
    changed = rewrap(engine, accounts.c.token, new_keyring(new.arn), batch_size=5)
    assert changed == 12
    ops = recorder.operations()
    assert ops.count("Decrypt") == 12 and ops.count("GenerateDataKey") == 12
    assert "ReEncrypt" not in ops and "Encrypt" not in ops
    context = {"table": "accounts", "column": "token"}
    for params in recorder.params("Decrypt"):
        assert params["EncryptionContext"] == context and params["KeyId"] == old.arn
    for params in recorder.params("GenerateDataKey"):
        assert params["EncryptionContext"] == context and params["KeyId"] == new.arn
    assert set(_key_refs(engine)) == {new.arn}
    assert _tokens(engine, accounts, new_keyring(new.arn)) == sorted(f"tok-{i}" for i in range(12))
    assert rewrap(engine, accounts.c.token, new_keyring(new.arn)) == 0  # idempotent


def test_local_to_kms_rewrap_unwraps_locally_and_wraps_in_kms(
    make_key: Callable[..., Key],
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    table: tuple[sa.Engine, sa.Table],
) -> None:
    engine, accounts = table
    local = LocalKeyring.generate()
    _fill(engine, accounts, local, 5)
    target = make_key()
    assert rewrap(engine, accounts.c.token, new_keyring(target.arn)) == 5
    ops = recorder.operations()
    assert ops.count("GenerateDataKey") == 5 and "Decrypt" not in ops  # unwrapped locally
    assert set(_key_refs(engine)) == {target.arn}
    # KMS alone reads them now
    assert _tokens(engine, accounts, new_keyring(target.arn)) == [f"tok-{i}" for i in range(5)]


def test_a_kms_outage_during_rewrap_stops_cleanly(
    make_key: Callable[..., Key],
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    table: tuple[sa.Engine, sa.Table],
) -> None:
    engine, accounts = table
    old, new = make_key(), make_key()
    _fill(engine, accounts, new_keyring(old.arn), 10)
    recorder.fail("GenerateDataKey", "KMSInternalException", 500)
    with pytest.raises(KeyringError):
        rewrap_column(engine, accounts.c.token, new_keyring(new.arn), batch_size=4, workers=1)
    assert set(_key_refs(engine)) == {old.arn}  # nothing half-written
    recorder.failures.clear()
    assert rewrap(engine, accounts.c.token, new_keyring(new.arn), batch_size=4) == 10


@pytest.fixture
def key(make_key: Callable[..., Key]) -> Key:
    return make_key()


def test_reencrypt_after_a_rename_makes_one_decrypt_per_row_and_none_that_fails(
    key: Any,
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    tmp_path: Any,
) -> None:
    from sqla_envelope.maintenance import reencrypt

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'renamed.db'}")
    sqla_envelope.configure(Encryptor(new_keyring(key.arn)))
    md = sa.MetaData()
    old = sa.Table("old_name", md, sa.Column("id", sa.Integer, primary_key=True),
                   sa.Column("token", EncryptedType(sa.String)))  # fmt: skip
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(old.insert(), [{"id": i, "token": f"tok-{i}"} for i in range(6)])
        conn.execute(sa.text("ALTER TABLE old_name RENAME TO new_name"))
    new = sa.Table("new_name", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                   sa.Column("token", EncryptedType(sa.String)))  # fmt: skip
    moved_from = {"table": "old_name", "column": "token"}
    recorder.clear()
    assert reencrypt(engine, new.c.token, from_context=moved_from).changed == 6
    assert recorder.operations().count("Decrypt") == 6
    assert recorder.sends.count("Decrypt") == 6  # no attempt KMS refused
    assert all(p["EncryptionContext"] == moved_from for p in recorder.params("Decrypt"))
    recorder.clear()
    again = reencrypt(engine, new.c.token, from_context=moved_from)
    assert (again.changed, again.skipped) == (0, 6)  # idempotent: recognised, not redone
    assert "GenerateDataKey" not in recorder.operations()
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.select(new.c.token)).scalars()) == [
            f"tok-{i}" for i in range(6)
        ]


def test_a_kms_outage_stops_verify_and_reencrypt_instead_of_failing_rows(
    key: Key,
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    table: tuple[sa.Engine, sa.Table],
) -> None:
    from sqla_envelope.maintenance import reencrypt, verify

    engine, accounts = table
    _fill(engine, accounts, new_keyring(key.arn), 4)
    before = _stored(engine)
    recorder.fail("Decrypt", "KMSInternalException", 500)
    for operation in (verify, reencrypt):
        sqla_envelope.configure(Encryptor(new_keyring(key.arn)))  # a cold key cache
        # An outage is not a bad row: not reported row by row, even with strict=False.
        with pytest.raises(KeyringError, match="KMSInternalException"):
            operation(engine, accounts.c.token, strict=False)
    assert _stored(engine) == before  # nothing rewritten
    recorder.failures.clear()
    assert verify(engine, accounts.c.token).failed == 0


def _stored(engine: sa.Engine) -> list[bytes]:
    with engine.connect() as conn:
        return [bytes(v) for v in conn.execute(sa.text("SELECT token FROM accounts ORDER BY id"))
                .scalars()]  # fmt: skip
