"""Fork safety: a child never inherits the parent's unwraps in flight, locks or worker threads.

Each test forks while another thread of the parent is inside an unwrap (or holds a
lock), as a pre-forking server (gunicorn, uWSGI) or multiprocessing may, and checks
that the child reads and writes. A child that would hang is killed after
CHILD_TIMEOUT seconds and the test fails.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from kms_server import (  # noqa: F401 - pytest fixtures
    REGION,
    Key,
    Recorder,
    aws_env_fixture,
    kms_endpoint_fixture,
    make_key_fixture,
    recorder_fixture,
)

from sqla_envelope import Encryptor, KmsKeyring, LocalKeyring
from sqla_envelope.context import EncryptionContext
from sqla_envelope.envelope import WrappedKey

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")

CTX = {"table": "users", "column": "ssn"}
CHILD_TIMEOUT = 10.0


def in_child(body: Callable[[], object]) -> str:
    """Run ``body`` in a forked child: "ok", the error it raised, or "hung".

    The child always leaves through os._exit, so it never goes on to run the
    rest of the suite; one still running after CHILD_TIMEOUT seconds is killed.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            os.close(read)
            body()
            os.write(write, b"ok")
            status = 0
        except BaseException as exc:
            os.write(write, f"{type(exc).__name__}: {exc}".encode()[:4000])
        finally:
            os._exit(status)
    os.close(write)
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "hung"
            time.sleep(0.01)
        return os.read(read, 4096).decode()
    finally:
        os.close(read)


@contextmanager
def busy(
    call: Callable[..., object], *args: object, until: Callable[[], bool], gate: threading.Event
) -> Iterator[None]:
    """Run ``call(*args)`` on another thread until ``until()``; open ``gate`` and join on exit."""
    thread = threading.Thread(target=call, args=args, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT
        while not until():
            assert time.monotonic() < deadline, "the parent's thread never got there"
            time.sleep(0.005)
        yield
    finally:
        gate.set()
        thread.join()


class GatedKeyring(LocalKeyring):
    """A LocalKeyring whose unwraps in the parent wait for ``gate``, as slow KMS calls would."""

    def __init__(self) -> None:
        super().__init__({"k1": b"\x11" * 32})
        self.parent = os.getpid()
        self.gate = threading.Event()
        self.started = 0
        self._lock = threading.Lock()

    def unwrap_data_key(
        self, wrapped_keys: Sequence[WrappedKey], context: EncryptionContext
    ) -> bytes:
        if os.getpid() == self.parent:
            with self._lock:
                self.started += 1
            self.gate.wait(30)
        return super().unwrap_data_key(wrapped_keys, context)


def test_a_child_forked_during_an_unwrap_reads_that_key() -> None:
    # The reproduction of issue 12: the parent's reader leads the unwrap of the
    # key, and the child must not wait for a thread it does not have.
    keyring = GatedKeyring()
    enc = Encryptor(keyring)
    envelope = enc.encrypt(b"secret", CTX)

    def child() -> None:
        assert enc.decrypt(envelope, CTX) == b"secret"

    with busy(enc.decrypt, envelope, CTX, until=lambda: keyring.started == 1, gate=keyring.gate):
        outcome = in_child(child)
    assert outcome == "ok"
    assert enc.decrypt(envelope, CTX) == b"secret"
    assert enc.stats()["unwraps"] == 1  # the parent's own flight was left alone


def test_a_child_forked_during_a_prefetch_prefetches_and_reads() -> None:
    keyring = GatedKeyring()
    enc = Encryptor(keyring, max_workers=4)
    envelopes = [enc.encrypt(b"v%d" % i, CTX) for i in range(8)]

    def child() -> None:
        assert enc.unwrap_all(envelopes, CTX) == 8
        assert [enc.decrypt(e, CTX) for e in envelopes] == [b"v%d" % i for i in range(8)]
        enc.close()  # its own workers, not the parent's

    # Until every worker is inside an unwrap.
    with busy(
        enc.unwrap_all, envelopes, CTX, until=lambda: keyring.started == 4, gate=keyring.gate
    ):
        outcome = in_child(child)
    assert outcome == "ok"
    assert enc.stats()["unwraps"] == 8
    enc.close()


def test_a_child_forked_while_the_unwrap_pool_is_being_built_prefetches() -> None:
    enc = Encryptor(LocalKeyring({"k1": b"\x11" * 32}), max_workers=2)
    envelopes = [enc.encrypt(b"v%d" % i, CTX) for i in range(3)]
    held, release = threading.Event(), threading.Event()

    def builder() -> None:
        with enc._executor_lock:  # as a thread inside _pool() holds it
            held.set()
            release.wait(30)

    def child() -> None:
        assert enc.unwrap_all(envelopes, CTX) == 3
        enc.close()

    with busy(builder, until=held.is_set, gate=release):
        outcome = in_child(child)
    assert outcome == "ok"
    assert enc.unwrap_all(envelopes, CTX) == 3
    enc.close()


# -- KmsKeyring, against the moto server ------------------------------------------------


class HeldRequests:
    """A botocore hook holding the parent's requests of one operation until ``gate`` opens."""

    def __init__(self) -> None:
        self.parent = os.getpid()
        self.gate = threading.Event()
        self.held = 0
        self._lock = threading.Lock()

    def __call__(self, **_: Any) -> None:
        if os.getpid() == self.parent:
            with self._lock:
                self.held += 1
            self.gate.wait(30)


@pytest.fixture
def new_keyring(
    recorder: Recorder, kms_endpoint: str, make_key: Callable[..., Key]
) -> Iterator[Callable[..., KmsKeyring]]:
    key = make_key()
    built: list[KmsKeyring] = []

    def build(**kwargs: Any) -> KmsKeyring:
        keyring = KmsKeyring(
            key.arn,
            session=recorder.session,
            region_name=REGION,
            endpoint_url=kms_endpoint,
            max_attempts=1,
            **kwargs,
        )
        built.append(keyring)
        return keyring

    yield build
    for keyring in built:
        keyring.close()


def test_a_child_forked_during_a_wrapping_key_decrypt_reads_under_that_key(
    recorder: Recorder, new_keyring: Callable[..., KmsKeyring]
) -> None:
    writer = Encryptor(new_keyring(mode="bounded_reuse"))
    first, second = writer.encrypt(b"first", CTX), writer.encrypt(b"second", CTX)
    hold = HeldRequests()
    # Before the reader's keyring builds its client, which copies the session's hooks.
    recorder.session.events.register_first("before-send.kms.Decrypt", hold)
    reader = Encryptor(new_keyring(mode="bounded_reuse"))

    def child() -> None:
        # Another value under the same wrapping key: the keyring's own flight.
        assert reader.decrypt(second, CTX) == b"second"
        # The value the parent is reading: the Encryptor's flight.
        assert reader.decrypt(first, CTX) == b"first"

    with busy(reader.decrypt, first, CTX, until=lambda: hold.held == 1, gate=hold.gate):
        outcome = in_child(child)
    assert outcome == "ok"
    assert reader.decrypt(second, CTX) == b"second"
    assert hold.held == 1  # one Decrypt per wrapping key in the parent still


def test_a_child_forked_while_data_keys_are_generated_ahead_writes(
    recorder: Recorder, new_keyring: Callable[..., KmsKeyring]
) -> None:
    hold = HeldRequests()
    recorder.session.events.register_first("before-send.kms.GenerateDataKey", hold)
    keyring = new_keyring(prefetch=4, prefetch_workers=4)
    enc = Encryptor(keyring)

    def child() -> None:
        enc.reserve(CTX, 3)
        envelopes = [enc.encrypt(b"c%d" % i, CTX) for i in range(3)]
        assert [enc.decrypt(e, CTX) for e in envelopes] == [b"c0", b"c1", b"c2"]
        keyring.close()

    # Until every pool worker waits on KMS.
    with busy(enc.reserve, CTX, 4, until=lambda: hold.held == 4, gate=hold.gate):
        outcome = in_child(child)
    assert outcome == "ok"
    assert enc.decrypt(enc.encrypt(b"parent", CTX), CTX) == b"parent"
