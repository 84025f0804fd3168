"""KMS cost modes: direct and bounded reuse share one envelope format."""

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

from sqla_envelope import (
    ConfigurationError,
    DecryptionError,
    EncryptedType,
    Encryptor,
    KmsKeyring,
    MalformedEnvelopeError,
    unpack_envelope,
)
from sqla_envelope.context import EncryptionContext
from sqla_envelope.envelope import WrappedKey, pack
from sqla_envelope.keyrings._kms_blob import DIRECT, REUSE, parse_blob

pytestmark = pytest.mark.usefixtures("aws_env")

USERS_SSN = {"table": "users", "column": "ssn"}
USERS_EMAIL = {"table": "users", "column": "email"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key(make_key: Callable[..., Key]) -> Key:
    return make_key()


@pytest.fixture
def new_keyring(recorder: Recorder, kms_endpoint: str) -> Callable[..., KmsKeyring]:
    def build(key_id: str, **kwargs: Any) -> KmsKeyring:
        kwargs.setdefault("region_name", REGION)
        kwargs.setdefault("endpoint_url", kms_endpoint)
        return KmsKeyring(key_id, session=recorder.session, **kwargs)

    return build


def _modes(envelope: bytes) -> list[int]:
    return [parse_blob(w.blob).mode for w in unpack_envelope(envelope).wrapped_keys]


def test_bounded_reuse_makes_one_kms_call_per_max_rows(
    key: Key, new_keyring: Callable[..., KmsKeyring], recorder: Recorder
) -> None:
    writer = Encryptor(new_keyring(key.arn, mode="bounded_reuse", max_rows=100))
    envelopes = [writer.encrypt(f"value {i}".encode(), USERS_SSN) for i in range(250)]
    assert recorder.operations().count("GenerateDataKey") == 3  # ceil(250 / 100)
    assert {m for e in envelopes for m in _modes(e)} == {REUSE}
    for params in recorder.params("GenerateDataKey"):
        assert params["EncryptionContext"] == USERS_SSN and params["KeySpec"] == "AES_256"
    # every value still has its own data key: its own local wrap and ciphertext
    local_wraps = {
        parse_blob(unpack_envelope(e).wrapped_keys[0].blob).local_wrap for e in envelopes
    }
    assert len(local_wraps) == 250
    recorder.clear()
    reader = Encryptor(new_keyring(key.alias_name, mode="bounded_reuse", max_rows=100))
    assert [reader.decrypt(e, USERS_SSN) for e in envelopes] == [
        f"value {i}".encode() for i in range(250)
    ]
    assert recorder.operations().count("Decrypt") == 3  # one per wrapping key, not per row
    assert reader.stats()["unwraps"] == 250  # the keyring unwrapped each data key locally


def test_bounded_reuse_renews_the_wrapping_key_after_max_age(
    key: Key, new_keyring: Callable[..., KmsKeyring], recorder: Recorder
) -> None:
    clock = FakeClock()
    enc = Encryptor(new_keyring(key.arn, mode="bounded_reuse", max_age=60, clock=clock))
    for _ in range(5):
        enc.encrypt(b"x", USERS_SSN)
    clock.now += 59
    enc.encrypt(b"x", USERS_SSN)
    assert recorder.operations().count("GenerateDataKey") == 1
    clock.now += 2
    enc.encrypt(b"x", USERS_SSN)
    assert recorder.operations().count("GenerateDataKey") == 2


def test_a_wrapping_key_at_hand_makes_data_keys_in_memory_and_is_never_waited_for(
    key: Key, new_keyring: Callable[..., KmsKeyring], recorder: Recorder
) -> None:
    # What the Encryptor asks first under asyncio, to wrap on the event loop.
    keyring = new_keyring(key.arn, mode="bounded_reuse", max_rows=3)
    context = EncryptionContext(USERS_SSN)
    assert keyring.generate_data_key_in_memory(context) is None  # none at hand yet
    assert recorder.operations() == []  # and asking made no call
    keyring.generate_data_key(context)  # a GenerateDataKey: the wrapping key's first use
    made = [keyring.generate_data_key_in_memory(context) for _ in range(3)]
    assert made[2] is None  # max_rows used up: the next one needs KMS
    assert recorder.operations() == ["GenerateDataKey"]
    for data_key in made[:2]:
        assert data_key is not None
        assert keyring.unwrap_data_key(data_key.wrapped_keys, context) == data_key.plaintext
    keyring.generate_data_key(context)
    with keyring._reuse._lock:  # as a thread waiting on KMS for a new wrapping key holds it
        assert keyring.generate_data_key_in_memory(context) is None  # at once, not a wait
    assert keyring.generate_data_key_in_memory(context) is not None
    assert new_keyring(key.arn).generate_data_key_in_memory(context) is None  # direct mode


def test_clear_cache_forgets_the_wrapping_keys_too(
    key: Key, new_keyring: Callable[..., KmsKeyring], recorder: Recorder
) -> None:
    enc = Encryptor(new_keyring(key.arn, mode="bounded_reuse"))
    envelopes = [enc.encrypt(b"x", USERS_SSN) for _ in range(3)]
    assert [enc.decrypt(e, USERS_SSN) for e in envelopes] == [b"x"] * 3
    assert recorder.operations() == ["GenerateDataKey", "Decrypt"]
    enc.clear_cache()  # a grant was revoked: KMS must be asked again, both ways
    recorder.clear()
    assert enc.decrypt(envelopes[0], USERS_SSN) == b"x"
    enc.encrypt(b"y", USERS_SSN)
    assert recorder.operations() == ["Decrypt", "GenerateDataKey"]


def test_a_results_prefetch_passes_over_damaged_rows_and_asks_once_per_wrapping_key(
    key: Key, new_keyring: Callable[..., KmsKeyring], recorder: Recorder
) -> None:
    writer = Encryptor(new_keyring(key.arn, mode="bounded_reuse", max_rows=3))
    good = [writer.encrypt(b"v%d" % i, USERS_SSN) for i in range(6)]  # two wrapping keys
    truncated = good[1][:-20]  # starts like its neighbours: skipped by the scan
    tampered = good[2][:-1] + bytes((good[2][-1] ^ 1,))
    mixed = [None, b"junk", good[0], truncated, good[1], tampered, good[2], *good[3:]]
    reader = Encryptor(new_keyring(key.arn, mode="bounded_reuse"))
    recorder.clear()
    assert reader.unwrap_all(mixed, USERS_SSN) == 2  # one row per wrapping key
    assert recorder.operations() == ["Decrypt", "Decrypt"]
    assert [reader.decrypt(e, USERS_SSN) for e in good] == [b"v%d" % i for i in range(6)]
    with pytest.raises(MalformedEnvelopeError):
        reader.decrypt(truncated, USERS_SSN)
    with pytest.raises(DecryptionError):
        reader.decrypt(tampered, USERS_SSN)
    assert recorder.operations() == ["Decrypt", "Decrypt"]  # every row read locally


def test_each_context_gets_its_own_wrapping_key(
    key: Key, new_keyring: Callable[..., KmsKeyring], recorder: Recorder
) -> None:
    enc = Encryptor(new_keyring(key.arn, mode="bounded_reuse"))
    ssn = enc.encrypt(b"1", USERS_SSN)
    email = enc.encrypt(b"2", USERS_EMAIL)
    contexts = [p["EncryptionContext"] for p in recorder.params("GenerateDataKey")]
    assert contexts == [USERS_SSN, USERS_EMAIL]
    with pytest.raises(DecryptionError):  # a value moved to another column fails in KMS
        Encryptor(enc.keyring).decrypt(ssn, USERS_EMAIL)
    assert enc.decrypt(email, USERS_EMAIL) == b"2"


def test_switching_modes_needs_no_migration(
    key: Key, new_keyring: Callable[..., KmsKeyring]
) -> None:
    direct = Encryptor(new_keyring(key.arn))
    reuse = Encryptor(new_keyring(key.arn, mode="bounded_reuse"))
    old = direct.encrypt(b"written in direct mode", USERS_SSN)
    new = reuse.encrypt(b"written with reuse", USERS_SSN)
    assert _modes(old) == [DIRECT] and _modes(new) == [REUSE]
    for enc in (
        Encryptor(new_keyring(key.arn)),
        Encryptor(new_keyring(key.arn, mode="bounded_reuse")),
    ):
        assert enc.decrypt(old, USERS_SSN) == b"written in direct mode"
        assert enc.decrypt(new, USERS_SSN) == b"written with reuse"


def test_switching_modes_through_a_column(
    key: Key, new_keyring: Callable[..., KmsKeyring], tmp_path: Any
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'modes.db'}")
    md = sa.MetaData()
    direct, reuse = (
        Encryptor(new_keyring(key.arn)),
        Encryptor(new_keyring(key.arn, mode="bounded_reuse")),
    )
    table = sa.Table(
        "t",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("v", EncryptedType(sa.String)),
    )
    md.create_all(engine)
    import sqla_envelope

    sqla_envelope.configure(direct)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "v": f"d{i}"} for i in range(3)])
    sqla_envelope.configure(reuse)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "v": f"r{i}"} for i in range(3, 6)])
        values = conn.execute(sa.select(table.c.v).order_by(table.c.id)).scalars().all()
    assert values == ["d0", "d1", "d2", "r3", "r4", "r5"]


def test_bounded_reuse_with_an_additional_key(
    make_key: Callable[..., Key], new_keyring: Callable[..., KmsKeyring], recorder: Recorder
) -> None:
    primary, replica = make_key(), make_key("us-west-2")
    enc = Encryptor(
        new_keyring(primary.arn, additional_key_ids=[replica.arn], mode="bounded_reuse")
    )
    envelopes = [enc.encrypt(bytes([i]), USERS_SSN) for i in range(10)]
    assert recorder.operations().count("GenerateDataKey") == 1
    assert recorder.operations().count("Encrypt") == 1  # the wrapping key, once, not per value
    only_replica = Encryptor(new_keyring(replica.arn, mode="bounded_reuse"))
    assert [only_replica.decrypt(e, USERS_SSN) for e in envelopes] == [
        bytes([i]) for i in range(10)
    ]


def test_tampered_local_wrap_fails(key: Key, new_keyring: Callable[..., KmsKeyring]) -> None:
    enc = Encryptor(new_keyring(key.arn, mode="bounded_reuse"))
    envelope = bytearray(enc.encrypt(b"secret", USERS_SSN))
    parsed = unpack_envelope(bytes(envelope))
    blob = bytearray(parsed.wrapped_keys[0].blob)
    blob[-1] ^= 1
    tampered = pack(
        [WrappedKey(parsed.wrapped_keys[0].key_ref, bytes(blob))],
        parsed.commitment,
        parsed.nonce,
        parsed.sealed,
    )
    with pytest.raises(DecryptionError):
        Encryptor(enc.keyring).decrypt(tampered, USERS_SSN)
    garbage = pack(
        [WrappedKey(parsed.wrapped_keys[0].key_ref, b"\x09garbage")],
        parsed.commitment,
        parsed.nonce,
        parsed.sealed,
    )
    with pytest.raises(MalformedEnvelopeError):
        enc.decrypt(garbage, USERS_SSN)


def test_mode_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        KmsKeyring("alias/x", region_name=REGION, mode="cheap")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        KmsKeyring("alias/x", region_name=REGION, mode="bounded_reuse", max_rows=0)
    assert "bounded_reuse" in repr(KmsKeyring("alias/x", region_name=REGION, mode="bounded_reuse"))


def test_context_object_is_reused(key: Key, new_keyring: Callable[..., KmsKeyring]) -> None:
    keyring = new_keyring(key.arn, mode="bounded_reuse")
    first = keyring.generate_data_key(EncryptionContext(USERS_SSN))
    second = keyring.generate_data_key(EncryptionContext(dict(reversed(list(USERS_SSN.items())))))
    assert (
        parse_blob(first.wrapped_keys[0].blob).kms_ciphertext
        == parse_blob(second.wrapped_keys[0].blob).kms_ciphertext
    )
    assert first.plaintext != second.plaintext


def test_decrypt_only_keys_read_values_after_the_alias_moved(
    make_key: Callable[..., Key], new_keyring: Callable[..., KmsKeyring]
) -> None:
    old, new = make_key(), make_key()
    before = Encryptor(new_keyring(old.arn)).encrypt(b"under the old key", USERS_SSN)
    reader = Encryptor(new_keyring(new.arn, decrypt_key_ids=[old.arn]))
    after = reader.encrypt(b"under the new key", USERS_SSN)
    assert unpack_envelope(after).wrapped_keys[0].key_ref == new.arn  # writes use the primary only
    assert reader.decrypt(before, USERS_SSN) == b"under the old key"
    assert reader.decrypt(after, USERS_SSN) == b"under the new key"
    # its repr names the key it writes under and the one it only reads with
    assert f"key_id={new.arn!r}" in repr(reader.keyring)
    assert f"decrypt_key_ids=[{old.arn!r}]" in repr(reader.keyring)


def test_reads_fail_over_to_a_replica_when_a_region_is_down(
    make_key: Callable[..., Key], new_keyring: Callable[..., KmsKeyring], recorder: Recorder
) -> None:
    import json
    import uuid

    from botocore.awsrequest import AWSResponse

    primary, replica = make_key(), make_key("us-west-2")
    enc = Encryptor(new_keyring(primary.arn, additional_key_ids=[replica.arn], prefetch=0))
    envelope = enc.encrypt(b"replicated", USERS_SSN)

    class _Body:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def stream(self, **_: Any) -> Any:
            yield self.data

    def east_is_down(request: Any, **_: Any) -> Any:
        if f"/{REGION}/kms/" in request.headers.get("Authorization", b"").decode():
            body = json.dumps({"__type": "KMSInternalException", "message": "down"}).encode()
            headers = {
                "Content-Type": "application/x-amz-json-1.1",
                "x-amzn-RequestId": str(uuid.uuid4()),
            }
            return AWSResponse(request.url, 500, headers, _Body(body))
        return None

    recorder.session.events.register_first("before-send.kms.Decrypt", east_is_down)
    reader = Encryptor(new_keyring(primary.arn, additional_key_ids=[replica.arn], max_attempts=1))
    assert reader.decrypt(envelope, USERS_SSN) == b"replicated"
    regions = [p["KeyId"].split(":")[3] for p in recorder.params("Decrypt")]
    assert regions[-2:] == [REGION, "us-west-2"]  # tried its own region first, then the replica


def test_a_forked_child_gets_its_own_wrapping_key(
    key: Key, new_keyring: Callable[..., KmsKeyring]
) -> None:
    import os

    def wrapping_key_of(envelope: bytes) -> bytes:
        return parse_blob(unpack_envelope(envelope).wrapped_keys[0].blob).kms_ciphertext

    keyring = new_keyring(key.arn, mode="bounded_reuse")
    enc = Encryptor(keyring)
    parents = wrapping_key_of(enc.encrypt(b"parent", USERS_SSN))
    assert wrapping_key_of(enc.encrypt(b"parent again", USERS_SSN)) == parents
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            os.write(write, wrapping_key_of(enc.encrypt(b"child", USERS_SSN)))
        finally:
            os._exit(0)
    os.close(write)
    childs = b"".join(iter(lambda: os.read(read, 4096), b""))
    os.waitpid(pid, 0)
    # Its own GenerateDataKey: the parent's key never serves more than max_rows values.
    assert childs and childs != parents
    assert wrapping_key_of(enc.encrypt(b"parent once more", USERS_SSN)) == parents
