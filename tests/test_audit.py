"""Audit events: one per wrap and unwrap, with where, which key, how, and never a secret."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import sqlalchemy as sa

import sqla_envelope
from sqla_envelope import DecryptionError, EncryptedType, Encryptor, KeyringError, LocalKeyring
from sqla_envelope.audit import KeyCounters, KeyEvent, log_events

CTX = {"table": "patients", "column": "ssn"}


def test_every_wrap_and_unwrap_is_an_event() -> None:
    events: list[KeyEvent] = []
    keyring = LocalKeyring.generate("k1")
    enc = Encryptor(keyring, listeners=[events.append])
    envelope = enc.encrypt(b"123-45-6789", CTX)
    enc.decrypt(envelope, CTX)
    enc.decrypt(envelope, CTX)
    assert [(e.operation, e.cache_hit) for e in events] == [
        ("wrap", False),
        ("unwrap", False),
        ("unwrap", True),
    ]
    for event in events:
        assert (event.table, event.column, event.key_ref, event.mode, event.ok) == (
            "patients",
            "ssn",
            "k1",
            "local",
            True,
        )
        assert event.duration >= 0
        assert "123-45-6789" not in repr(event)
    assert events[1].duration > 0 and events[2].duration == 0


def test_events_through_a_column_and_counters() -> None:
    counters = KeyCounters()
    enc = Encryptor(LocalKeyring.generate(), listeners=[counters])
    sqla_envelope.configure(enc)
    md = sa.MetaData()
    table = sa.Table(
        "patients",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ssn", EncryptedType()),
    )
    engine = sa.create_engine("sqlite://")
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "ssn": str(i)} for i in range(3)])
        conn.execute(sa.select(table.c.ssn)).all()
        conn.execute(sa.select(table.c.ssn)).all()
    snapshot = counters.snapshot()
    assert snapshot[("wrap", "patients", "ssn", "miss", "ok")] == 3
    assert snapshot[("unwrap", "patients", "ssn", "miss", "ok")] == 3
    assert snapshot[("unwrap", "patients", "ssn", "hit", "ok")] == 3
    assert counters.keyring_seconds > 0


def test_failures_are_events_too() -> None:
    class Down(LocalKeyring):
        def generate_data_key(self, context: Any) -> Any:
            raise TimeoutError("kms")

    events: list[KeyEvent] = []
    enc = Encryptor(Down({"k": bytes(32)}), listeners=[events.append])
    with pytest.raises(KeyringError):
        enc.encrypt(b"x", CTX)
    assert (events[0].operation, events[0].error, events[0].ok) == ("wrap", "TimeoutError", False)
    good = Encryptor(LocalKeyring.generate("a")).encrypt(b"x", CTX)
    stranger = Encryptor(LocalKeyring.generate("b"), listeners=[events.append])
    with pytest.raises(DecryptionError):
        stranger.decrypt(good, CTX)
    assert (events[-1].operation, events[-1].key_ref, events[-1].error) == (
        "unwrap",
        "a",
        "DecryptionError",
    )


def test_log_lines_carry_no_secrets(caplog: pytest.LogCaptureFixture) -> None:
    keyring = LocalKeyring({"k1": b"\x5a" * 32})
    enc = Encryptor(keyring, listeners=[log_events()])
    with caplog.at_level(logging.INFO, logger="sqla_envelope.audit"):
        enc.decrypt(enc.encrypt(b"4111111111111111", CTX), CTX)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("wrap column=ssn table=patients key=k1 mode=local cache=miss")
    assert lines[1].startswith("unwrap column=ssn table=patients key=k1 mode=local cache=miss")
    assert not any("4111" in line or "5a5a" in line.lower() or "ZZZZ" in line for line in lines)


def test_a_broken_listener_does_not_break_reads(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: KeyEvent) -> None:
        raise RuntimeError("exporter down")

    enc = Encryptor(LocalKeyring.generate())
    enc.add_listener(broken)
    with caplog.at_level(logging.ERROR, logger="sqla_envelope"):
        assert enc.decrypt(enc.encrypt(b"v", CTX), CTX) == b"v"
    assert "audit listener" in caplog.text
    enc.remove_listener(broken)
    caplog.clear()
    enc.encrypt(b"v", CTX)
    assert "audit listener" not in caplog.text
