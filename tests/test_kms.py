"""KmsKeyring against a moto KMS server: the requests it makes, round trips, failures."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import boto3
import botocore
import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from kms_server import (  # noqa: F401
    CLOSED_ENDPOINT,
    OTHER_REGION,
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
    ConfigurationError,
    DecryptionError,
    EncryptedType,
    Encryptor,
    Keyring,
    KeyringError,
    KmsKeyring,
    unpack_envelope,
)
from sqla_envelope.context import EncryptionContext
from sqla_envelope.envelope import WrappedKey
from sqla_envelope.keyrings import kms as kms_module

pytestmark = pytest.mark.usefixtures("aws_env")

CTX = EncryptionContext({"table": "people", "column": "ssn"})
SECRET = b"123-45-6789"
FORMS = ["key_id", "arn", "alias_name", "alias_arn"]


@pytest.fixture
def key(make_key: Callable[..., Key]) -> Key:
    return make_key()


@pytest.fixture
def new_keyring(recorder: Recorder, kms_endpoint: str) -> Callable[..., KmsKeyring]:
    """Build KmsKeyrings whose clients talk to moto through the recording session."""

    def build(key_id: str, **kwargs: Any) -> KmsKeyring:
        kwargs.setdefault("region_name", REGION)
        kwargs.setdefault("endpoint_url", kms_endpoint)
        kwargs.setdefault("max_attempts", 2)
        return KmsKeyring(key_id, session=recorder.session, **kwargs)

    return build


def _key_refs(envelope: bytes) -> list[str]:
    return [wrapped.key_ref for wrapped in unpack_envelope(envelope).wrapped_keys]


def _code(exc: BaseException | None) -> str:
    assert isinstance(exc, ClientError), f"cause is {exc!r}"
    return str(exc.response["Error"]["Code"])


class TestConstruction:
    def test_building_makes_no_network_call(self, recorder: Recorder) -> None:
        arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        for key_id in ("alias/app", arn, "1234abcd-12ab-34cd-56ef-1234567890ab"):
            keyring = KmsKeyring(
                key_id,
                session=recorder.session,
                endpoint_url=CLOSED_ENDPOINT,
                additional_key_ids=["arn:aws:kms:us-west-2:111122223333:alias/app"],
            )
            assert isinstance(keyring, Keyring)
            assert key_id in repr(keyring)
            assert keyring._clients.built() == 0
        assert recorder.sends == []

    def test_repr_shows_key_ids_never_credentials(self, kms_endpoint: str) -> None:
        client = boto3.client(
            "kms",
            region_name=REGION,
            endpoint_url=kms_endpoint,
            aws_access_key_id="AKIDSHOULDNOTLEAK",
            aws_secret_access_key="secret-should-not-leak",
        )
        keyring = KmsKeyring("alias/app", client=client, additional_key_ids=["alias/dr"])
        text = repr(keyring)
        assert "alias/app" in text and "alias/dr" in text and REGION in text
        assert "SHOULDNOTLEAK" not in text and "should-not-leak" not in text

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"key_id": ""},
            {"key_id": "alias/a", "additional_key_ids": ["alias/a"]},
            {"key_id": "alias/a", "additional_key_ids": "alias/b"},
            {"key_id": "alias/a", "grant_tokens": "token"},
            {"key_id": "alias/a", "retry_mode": "eager"},
            {"key_id": "alias/a", "max_attempts": 0},
            {"key_id": "alias/a", "read_timeout": 0},
            {"key_id": "alias/a", "max_pool_connections": 0},
        ],
    )
    def test_invalid_configuration_is_refused(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(ConfigurationError):
            KmsKeyring(**kwargs)

    def test_client_and_region_name_must_agree(self, kms_endpoint: str) -> None:
        client = boto3.client("kms", region_name=REGION, endpoint_url=kms_endpoint)
        with pytest.raises(ConfigurationError, match="region"):
            KmsKeyring("alias/a", client=client, region_name=OTHER_REGION)

    def test_no_region_anywhere_is_a_configuration_error(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("AWS_DEFAULT_REGION")
        monkeypatch.delenv("AWS_REGION", raising=False)
        keyring = KmsKeyring("alias/app", endpoint_url=CLOSED_ENDPOINT)
        with pytest.raises(ConfigurationError, match="region_name"):
            keyring.generate_data_key(CTX)

    def test_works_without_boto3_until_a_client_is_needed(self) -> None:
        script = textwrap.dedent(
            """
            import sys
            class NoBoto:
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in ("boto3", "botocore"):
                        raise ImportError(f"No module named {name!r}")
            sys.meta_path.insert(0, NoBoto())
            import sqla_envelope
            from sqla_envelope.context import EncryptionContext
            keyring = sqla_envelope.KmsKeyring("alias/app", region_name="eu-west-1")
            print(repr(keyring))
            try:
                keyring.generate_data_key(EncryptionContext({"table": "t"}))
            except sqla_envelope.ConfigurationError as exc:
                print("ConfigurationError:", exc)
            print(sorted(m for m in sys.modules if m.startswith(("boto3", "botocore"))))
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        lines = result.stdout.splitlines()
        assert "alias/app" in lines[0]
        assert "pip install 'sqla-envelope[kms]'" in lines[1]
        assert lines[2] == "[]"


class TestRoundTrip:
    @pytest.mark.parametrize("form", FORMS)
    def test_round_trip_with_every_way_to_name_the_key(
        self, key: Key, new_keyring: Callable[..., KmsKeyring], recorder: Recorder, form: str
    ) -> None:
        writer = Encryptor(new_keyring(getattr(key, form)))
        envelope = writer.encrypt(SECRET, CTX)
        assert _key_refs(envelope) == [key.arn]  # the alias resolved to the key's ARN
        assert writer.decrypt(envelope, CTX) == SECRET

        recorder.clear()
        reader = Encryptor(new_keyring(getattr(key, form)))  # has never talked to KMS
        assert reader.decrypt(envelope, CTX) == SECRET
        resolves = [] if form == "arn" else ["DescribeKey"]
        assert recorder.operations() == [*resolves, "Decrypt"]
        assert recorder.params("Decrypt")[0]["KeyId"] == key.arn

    def test_a_client_passed_in_is_used(self, key: Key, kms_endpoint: str) -> None:
        calls: list[str] = []
        client = boto3.client("kms", region_name=REGION, endpoint_url=kms_endpoint)
        client.meta.events.register(
            "before-parameter-build.kms", lambda model, **_: calls.append(model.name)
        )
        enc = Encryptor(KmsKeyring(key.alias_name, client=client))
        assert enc.decrypt(enc.encrypt(SECRET, CTX), CTX) == SECRET
        assert calls == ["GenerateDataKey", "Decrypt"]  # no DescribeKey: the alias was learned


class TestClients:
    def test_threads_starting_together_share_one_client(
        self, key: Key, new_keyring: Callable[..., KmsKeyring], recorder: Recorder
    ) -> None:
        created: list[str] = []
        recorder.session.events.register(
            "creating-client-class.kms", lambda **_: created.append("kms")
        )
        enc = Encryptor(new_keyring(key.alias_name))
        barrier = threading.Barrier(8)
        results: list[bytes] = []

        def write() -> None:
            barrier.wait()
            results.append(enc.decrypt(enc.encrypt(SECRET, CTX), CTX))

        threads = [threading.Thread(target=write) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [SECRET] * 8
        assert created == ["kms"]


class TestRequests:
    def test_every_request_carries_the_context_and_decrypt_names_the_key(
        self, key: Key, new_keyring: Callable[..., KmsKeyring], recorder: Recorder
    ) -> None:
        enc = Encryptor(new_keyring(key.alias_name, grant_tokens=["grant-token-1"]))
        envelopes = [enc.encrypt(b"value %d" % i, CTX) for i in range(3)]
        generated = recorder.params("GenerateDataKey")
        assert len(generated) == 3
        for params in generated:
            assert params["KeyId"] == key.alias_name
            assert params["KeySpec"] == "AES_256"
            assert params["EncryptionContext"] == {"table": "people", "column": "ssn"}
            assert params["GrantTokens"] == ["grant-token-1"]

        enc.clear_cache()
        recorder.clear()
        for _ in range(2):  # the same values twice: cold, then warm
            assert [enc.decrypt(e, CTX) for e in envelopes] == [b"value 0", b"value 1", b"value 2"]
        decrypts = recorder.params("Decrypt")
        assert recorder.operations() == ["Decrypt"] * 3  # the alias was learned on write
        for params in decrypts:
            assert params["KeyId"] == key.arn
            assert params["EncryptionContext"] == {"table": "people", "column": "ssn"}
            assert params["GrantTokens"] == ["grant-token-1"]
        assert enc.stats()["unwraps"] == 3 and enc.stats()["cache_hits"] == 3

    def test_requests_name_the_library_in_their_user_agent(
        self, key: Key, new_keyring: Callable[..., KmsKeyring], recorder: Recorder
    ) -> None:
        # What CloudTrail records as userAgent: the library, then boto3's usual parts.
        agents: list[str] = []
        recorder.session.events.register(
            "before-send.kms", lambda request, **_: agents.append(request.headers["User-Agent"])
        )
        enc = Encryptor(new_keyring(key.arn))
        assert enc.decrypt(enc.encrypt(SECRET, CTX), CTX) == SECRET
        assert recorder.sends == ["GenerateDataKey", "Decrypt"] and len(set(agents)) == 1
        agent = agents[0].decode() if isinstance(agents[0], bytes) else agents[0]
        assert agent.startswith(f"sqla-envelope/{sqla_envelope.__version__} Boto3/")
        assert f"Botocore/{botocore.__version__}" in agent

    def test_a_user_agent_extra_of_the_session_is_kept(
        self, key: Key, kms_endpoint: str, recorder: Recorder
    ) -> None:
        from botocore.config import Config

        recorder.session._session.set_default_client_config(Config(user_agent_extra="app/7"))
        agents: list[str] = []
        recorder.session.events.register(
            "before-send.kms", lambda request, **_: agents.append(request.headers["User-Agent"])
        )
        keyring = KmsKeyring(
            key.arn, session=recorder.session, region_name=REGION, endpoint_url=kms_endpoint
        )
        Encryptor(keyring).encrypt(SECRET, CTX)
        agent = agents[0].decode() if isinstance(agents[0], bytes) else agents[0]
        assert agent.startswith("sqla-envelope/") and agent.endswith(" app/7")

    def test_data_keys_never_reach_botocores_debug_logs(
        self,
        key: Key,
        make_key: Callable[..., Key],
        new_keyring: Callable[..., KmsKeyring],
        recorder: Recorder,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        import base64
        import logging

        returned: list[bytes] = []
        recorder.session.events.register(
            "after-call.kms",
            lambda parsed, **_: (
                returned.append(parsed["Plaintext"]) if "Plaintext" in parsed else None
            ),
        )
        other = make_key()
        with caplog.at_level(logging.DEBUG, logger="botocore"):
            enc = Encryptor(new_keyring(key.arn, additional_key_ids=[other.arn]))
            assert enc.decrypt(enc.encrypt(SECRET, CTX), CTX) == SECRET  # Encrypt sends one too
        logged = "\n".join(record.getMessage() for record in caplog.records)
        assert len(returned) == 2 and '"Plaintext": "<redacted>"' in logged  # bodies were logged
        for data_key in returned:
            assert base64.b64encode(data_key).decode() not in logged

    def test_direct_mode_never_reuses_a_data_key(
        self, key: Key, new_keyring: Callable[..., KmsKeyring], recorder: Recorder
    ) -> None:
        keyring = new_keyring(key.arn)
        enc = Encryptor(keyring)
        envelopes = [enc.encrypt(SECRET, CTX) for _ in range(100)]
        blobs = {unpack_envelope(e).wrapped_keys[0].blob for e in envelopes}
        assert len(blobs) == 100
        assert recorder.operations() == ["GenerateDataKey"] * 100
        data_keys = {keyring.generate_data_key(CTX).plaintext for _ in range(5)}
        assert len(data_keys) == 5 and all(len(k) == 32 for k in data_keys)

    def test_is_primary_resolves_an_alias_once(
        self,
        make_key: Callable[..., Key],
        new_keyring: Callable[..., KmsKeyring],
        recorder: Recorder,
    ) -> None:
        primary, other = make_key(), make_key()
        keyring = new_keyring(primary.alias_name)
        assert keyring.is_primary(WrappedKey(primary.arn, b"x"))
        assert not keyring.is_primary(WrappedKey(other.arn, b"x"))
        assert recorder.operations() == ["DescribeKey"]
        assert recorder.params("DescribeKey")[0]["KeyId"] == primary.alias_name


class TestAdditionalKeys:
    def test_each_data_key_is_wrapped_under_every_key_and_any_one_unwraps(
        self,
        make_key: Callable[..., Key],
        new_keyring: Callable[..., KmsKeyring],
        recorder: Recorder,
    ) -> None:
        first, second, west = make_key(), make_key(), make_key(OTHER_REGION)
        writer = Encryptor(
            new_keyring(first.alias_name, additional_key_ids=[second.alias_name, west.arn])
        )
        envelope = writer.encrypt(SECRET, CTX)
        assert _key_refs(envelope) == [first.arn, second.arn, west.arn]
        assert recorder.operations() == ["GenerateDataKey", "Encrypt", "Encrypt"]
        assert [p["KeyId"] for p in recorder.params("Encrypt")] == [second.alias_name, west.arn]
        assert all(p["EncryptionContext"] == dict(CTX) for p in recorder.params("Encrypt"))

        for held in (second.arn, west.arn, west.alias_arn):
            recorder.clear()
            # moto answers NotFoundException if the west copy went to the us-east-1 client
            assert Encryptor(new_keyring(held)).decrypt(envelope, CTX) == SECRET
            assert recorder.params("Decrypt")[0]["KeyId"] == (
                second.arn if held == second.arn else west.arn
            )

    def test_the_primary_copy_is_preferred(
        self,
        make_key: Callable[..., Key],
        new_keyring: Callable[..., KmsKeyring],
        recorder: Recorder,
    ) -> None:
        first, west = make_key(), make_key(OTHER_REGION)
        envelope = Encryptor(new_keyring(first.arn, additional_key_ids=[west.arn])).encrypt(
            SECRET, CTX
        )
        recorder.clear()
        reader = Encryptor(new_keyring(west.arn, additional_key_ids=[first.arn]))
        assert reader.decrypt(envelope, CTX) == SECRET
        assert [p["KeyId"] for p in recorder.params("Decrypt")] == [west.arn]

        # Even when the primary is an alias still to resolve and the replica's ARN
        # is known: a reader in us-east-1 must not depend on us-west-2.
        recorder.clear()
        reader = Encryptor(new_keyring(first.alias_name, additional_key_ids=[west.arn]))
        assert reader.decrypt(envelope, CTX) == SECRET
        assert recorder.operations() == ["DescribeKey", "Decrypt"]
        assert recorder.params("Decrypt")[0]["KeyId"] == first.arn

    def test_a_value_under_no_held_key_is_never_trial_decrypted(
        self,
        make_key: Callable[..., Key],
        new_keyring: Callable[..., KmsKeyring],
        recorder: Recorder,
    ) -> None:
        first, second = make_key(), make_key()
        envelope = Encryptor(new_keyring(first.arn)).encrypt(SECRET, CTX)
        recorder.clear()
        with pytest.raises(DecryptionError) as failure:
            Encryptor(new_keyring(second.alias_name)).decrypt(envelope, CTX)
        assert first.arn in str(failure.value) and second.arn in str(failure.value)
        assert recorder.operations() == ["DescribeKey"]  # and no Decrypt at all

    def test_wrap_data_key_wraps_under_every_key(
        self, make_key: Callable[..., Key], new_keyring: Callable[..., KmsKeyring]
    ) -> None:
        first, west = make_key(), make_key(OTHER_REGION)
        keyring = new_keyring(first.alias_arn, additional_key_ids=[west.alias_arn])
        data_key = bytes(range(32))
        wrapped = keyring.wrap_data_key(data_key, CTX)
        assert [w.key_ref for w in wrapped] == [first.arn, west.arn]
        assert keyring.is_primary(wrapped[0]) and not keyring.is_primary(wrapped[1])
        assert new_keyring(west.arn).unwrap_data_key(wrapped[1:], CTX) == data_key
        with pytest.raises(ConfigurationError):
            keyring.wrap_data_key(b"short", CTX)


GENERATE_FAILURES = [
    ("DisabledException", 400),
    ("AccessDeniedException", 400),
    ("KMSInvalidStateException", 400),
    ("NotFoundException", 400),
    ("KeyUnavailableException", 500),
    ("DependencyTimeoutException", 503),
    ("ThrottlingException", 400),
]
RETRIED = {"ThrottlingException", "KeyUnavailableException", "DependencyTimeoutException"}


class TestFailures:
    @pytest.mark.parametrize(("code", "status"), GENERATE_FAILURES)
    def test_kms_errors_on_write_raise_keyring_error_naming_the_key(
        self,
        key: Key,
        new_keyring: Callable[..., KmsKeyring],
        recorder: Recorder,
        code: str,
        status: int,
    ) -> None:
        recorder.fail("GenerateDataKey", code, status)
        enc = Encryptor(new_keyring(key.alias_name))
        with pytest.raises(KeyringError) as failure:
            enc.encrypt(SECRET, CTX)
        error = failure.value
        assert error.key_id == key.alias_name
        assert key.alias_name in str(error) and code in str(error)
        assert _code(error.__cause__) == code
        assert recorder.sends == ["GenerateDataKey"] * (2 if code in RETRIED else 1)

    @pytest.mark.parametrize(
        ("code", "expected"),
        [
            ("InvalidCiphertextException", DecryptionError),
            ("IncorrectKeyException", DecryptionError),
            ("DisabledException", KeyringError),
            ("AccessDeniedException", KeyringError),
            ("ThrottlingException", KeyringError),
        ],
    )
    def test_kms_errors_on_read(
        self,
        key: Key,
        new_keyring: Callable[..., KmsKeyring],
        recorder: Recorder,
        code: str,
        expected: type[Exception],
    ) -> None:
        enc = Encryptor(new_keyring(key.arn))
        envelope = enc.encrypt(SECRET, CTX)
        enc.clear_cache()
        recorder.fail("Decrypt", code)
        with pytest.raises(expected) as failure:
            enc.decrypt(envelope, CTX)
        assert type(failure.value) is expected
        assert key.arn in str(failure.value) and code in str(failure.value)
        assert _code(failure.value.__cause__) == code
        recorder.failures.clear()
        assert enc.decrypt(envelope, CTX) == SECRET  # a failure is not cached

    def test_a_failing_additional_key_fails_the_write(
        self,
        make_key: Callable[..., Key],
        new_keyring: Callable[..., KmsKeyring],
        recorder: Recorder,
    ) -> None:
        first, second = make_key(), make_key()
        recorder.fail("Encrypt", "AccessDeniedException")
        with pytest.raises(KeyringError) as failure:
            Encryptor(new_keyring(first.arn, additional_key_ids=[second.arn])).encrypt(SECRET, CTX)
        assert failure.value.key_id == second.arn

    def test_wrong_context_is_refused_by_kms(
        self, key: Key, new_keyring: Callable[..., KmsKeyring]
    ) -> None:
        keyring = new_keyring(key.arn)
        data_key = keyring.generate_data_key(CTX)
        other = EncryptionContext({"table": "people", "column": "notes"})
        with pytest.raises(DecryptionError) as failure:
            keyring.unwrap_data_key(data_key.wrapped_keys, other)
        # moto checks the context and answers as AWS does
        assert _code(failure.value.__cause__) == "InvalidCiphertextException"
        with pytest.raises(DecryptionError):
            Encryptor(keyring).decrypt(Encryptor(keyring).encrypt(SECRET, CTX), other)

    def test_tampered_wrapped_key_is_refused_by_kms(
        self, key: Key, new_keyring: Callable[..., KmsKeyring]
    ) -> None:
        keyring = new_keyring(key.arn)
        (wrapped,) = keyring.generate_data_key(CTX).wrapped_keys
        # The end of the blob: moto keeps the key id in clear at its start and
        # answers AccessDeniedException when that is changed.
        blob = wrapped.blob[:-1] + bytes([wrapped.blob[-1] ^ 1])
        with pytest.raises(DecryptionError):
            keyring.unwrap_data_key([WrappedKey(wrapped.key_ref, blob)], CTX)

    def test_no_message_holds_plaintext_or_key_bytes(
        self, key: Key, new_keyring: Callable[..., KmsKeyring], recorder: Recorder
    ) -> None:
        keyring = new_keyring(key.arn)
        data_key = keyring.generate_data_key(CTX)
        recorder.fail("Decrypt", "AccessDeniedException")
        with pytest.raises(KeyringError) as failure:
            keyring.unwrap_data_key(data_key.wrapped_keys, CTX)
        texts = [str(failure.value), repr(failure.value), repr(data_key), repr(keyring)]
        for text in texts:
            assert data_key.plaintext.hex() not in text
            assert repr(data_key.plaintext) not in text
            assert data_key.wrapped_keys[0].blob.hex() not in text

    def test_the_cause_survives_sqlalchemy_on_read(
        self, key: Key, new_keyring: Callable[..., KmsKeyring], recorder: Recorder
    ) -> None:
        engine = sa.create_engine("sqlite://")
        enc = Encryptor(new_keyring(key.arn))
        table = sa.Table(
            "people",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("ssn", EncryptedType(sa.String, enc)),
        )
        table.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert().values(id=1, ssn="123-45-6789"))
        enc.clear_cache()
        recorder.fail("Decrypt", "KMSInvalidStateException")
        with engine.connect() as conn, pytest.raises(KeyringError) as failure:
            conn.execute(sa.select(table.c.ssn)).scalar()
        assert _code(failure.value.__cause__) == "KMSInvalidStateException"
        assert key.arn in str(failure.value)
        engine.dispose()

    def test_no_credentials_is_a_keyring_error(
        self, key: Key, kms_endpoint: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name)
        keyring = KmsKeyring(key.arn, endpoint_url=kms_endpoint)
        with pytest.raises(KeyringError, match="NoCredentialsError") as failure:
            keyring.generate_data_key(CTX)
        assert key.arn in str(failure.value)


@pytest.fixture
def silent_port() -> Iterator[str]:
    """An endpoint that accepts TCP connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


class TestUnreachable:
    def test_closed_port_fails_fast(
        self,
        key: Key,
        new_keyring: Callable[..., KmsKeyring],
        recorder: Recorder,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Fast: a refused connection is not waited for, and the keyring's own
        # pauses between attempts are its backoff only. Counted, not timed: a
        # stopwatch fails on a loaded machine.
        slept: list[float] = []
        clock = SimpleNamespace(monotonic=time.monotonic, sleep=slept.append)
        monkeypatch.setattr(kms_module, "time", clock)
        keyring = new_keyring(key.arn, endpoint_url=CLOSED_ENDPOINT, connect_timeout=0.5)
        with pytest.raises(KeyringError) as failure:
            Encryptor(keyring).encrypt(SECRET, CTX)
        assert len(slept) == 1 and 0 <= slept[0] <= 0.05  # backoff(0), then the last attempt
        assert isinstance(failure.value.__cause__, EndpointConnectionError)
        assert "EndpointConnectionError" in str(failure.value) and key.arn in str(failure.value)
        assert recorder.sends == ["GenerateDataKey"] * 2  # max_attempts counts the first

    def test_silent_endpoint_times_out(
        self, key: Key, new_keyring: Callable[..., KmsKeyring], silent_port: str
    ) -> None:
        keyring = new_keyring(key.arn, endpoint_url=silent_port, read_timeout=0.3)
        # The timeout botocore waits for, rather than a stopwatch around the call
        # (which a loaded machine can exceed): botocore's own default is 60 s.
        assert keyring._clients.for_key(key.arn).meta.config.read_timeout == 0.3
        with pytest.raises(KeyringError) as failure:
            keyring.generate_data_key(CTX)
        assert isinstance(failure.value.__cause__, ReadTimeoutError)

    def test_nothing_is_stored_when_kms_is_down(self, key: Key, kms_endpoint: str) -> None:
        engine = sa.create_engine("sqlite://")
        down = Encryptor(
            KmsKeyring(key.arn, endpoint_url=CLOSED_ENDPOINT, max_attempts=2, connect_timeout=0.5)
        )

        class Base(DeclarativeBase):
            pass

        class Person(Base):
            __tablename__ = "people"
            id: Mapped[int] = mapped_column(primary_key=True)
            ssn: Mapped[str] = mapped_column(EncryptedType(sa.String, down))

        Base.metadata.create_all(engine)
        with Session(engine) as session:
            session.add(Person(id=1, ssn="123-45-6789"))
            with pytest.raises(KeyringError) as failure:
                session.commit()
        assert isinstance(failure.value.__cause__, EndpointConnectionError)
        with pytest.raises(KeyringError), engine.begin() as conn:
            conn.execute(sa.insert(Person).values(id=2, ssn="987-65-4321"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM people")).scalar() == 0
        engine.dispose()


def test_orm_round_trip_on_every_database(
    engine: sa.Engine,
    base: type[DeclarativeBase],
    key: Key,
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
) -> None:
    enc = Encryptor(new_keyring(key.alias_name))

    class Patient(base):  # type: ignore[valid-type,misc]
        __tablename__ = "kms_patients"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(EncryptedType(sa.String(100), enc))
        age: Mapped[int | None] = mapped_column(EncryptedType(sa.Integer, enc), nullable=True)

    base.metadata.create_all(engine)
    rows = [(1, "Ada", 36), (2, "Grace", 85), (3, "Édouard ✓", None)]
    with Session(engine) as session:
        session.add_all(Patient(id=i, name=n, age=a) for i, n, a in rows)
        session.commit()
    assert recorder.operations().count("GenerateDataKey") == 5  # NULL needs no key
    contexts = {
        tuple(sorted(p["EncryptionContext"].items())) for p in recorder.params("GenerateDataKey")
    }
    assert contexts == {
        (("column", "name"), ("table", "kms_patients")),
        (("column", "age"), ("table", "kms_patients")),
    }

    enc.clear_cache()
    with Session(engine) as session:
        found = [
            (p.id, p.name, p.age) for p in session.scalars(sa.select(Patient).order_by(Patient.id))
        ]
    assert found == rows

    raw = sa.table("kms_patients", sa.column("id"), sa.column("name", sa.LargeBinary))
    with engine.begin() as conn:
        stored = bytes(conn.execute(sa.select(raw.c.name).where(raw.c.id == 2)).scalar_one())
        assert _key_refs(stored) == [key.arn]
        tampered = stored[:-1] + bytes([stored[-1] ^ 1])
        conn.execute(sa.update(raw).where(raw.c.id == 2).values(name=tampered))
    with Session(engine) as session, pytest.raises(DecryptionError):
        session.get(Patient, 2)


@pytest.mark.parametrize("cache_written_keys", [False, True])
def test_reading_back_what_was_written_asks_kms_only_without_cache_written_keys(
    engine: sa.Engine,
    base: type[DeclarativeBase],
    key: Key,
    new_keyring: Callable[..., KmsKeyring],
    recorder: Recorder,
    cache_written_keys: bool,
) -> None:
    # The ORM's everyday path: commit() expires the objects, and touching an
    # attribute reloads the row and decrypts it.
    enc = Encryptor(new_keyring(key.arn), cache_written_keys=cache_written_keys)

    class Patient(base):  # type: ignore[valid-type,misc]
        __tablename__ = "kms_read_back"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(EncryptedType(sa.String(100), enc))

    base.metadata.create_all(engine)
    with Session(engine) as session:
        patients = [Patient(id=i, name=f"patient {i}") for i in range(1, 5)]
        session.add_all(patients)
        session.commit()
        assert [p.name for p in patients] == [f"patient {i}" for i in range(1, 5)]
    decrypts = recorder.operations().count("Decrypt")
    assert decrypts == (0 if cache_written_keys else 4)
    enc.clear_cache()  # and what was cached is forgotten as any other key
    with Session(engine) as session:
        assert len([p.name for p in session.scalars(sa.select(Patient))]) == 4
    assert recorder.operations().count("Decrypt") == decrypts + 4
