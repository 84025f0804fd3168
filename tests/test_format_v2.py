"""Format v2: key commitment, an authenticated header, and v1 values still read.

Every value is written in v2; its header (version, every wrapped copy, the key
commitment) is the start of the AES-GCM associated data, so no byte of it can
change without the value failing to open. v1 values, written before v2, read
under the default commitment policy and are refused under the strict one;
rewrap and reencrypt move them to v2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import sqla_envelope
from sqla_envelope import (
    ConfigurationError,
    DataKey,
    DecryptionError,
    EncryptedType,
    Encryptor,
    LocalKeyring,
    WrappedKey,
    unpack_envelope,
)
from sqla_envelope.envelope import COMMITMENT_SIZE, pack
from sqla_envelope.maintenance import reencrypt, rewrap, verify

VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "envelope_v1.json").read_text(encoding="utf-8")
)["vectors"]
CONTEXT = {"table": "users", "column": "ssn"}
STRICT = "require_encrypt_require_decrypt"


def _v1_vector(name: str) -> tuple[LocalKeyring, bytes, dict[str, str], bytes]:
    vector = next(v for v in VECTORS if v["name"] == name)
    keyring = LocalKeyring(
        {k["key_id"]: bytes.fromhex(k["master_key"]) for k in vector["keys"]},
        primary=vector["keys"][0]["key_id"],
    )
    return (
        keyring,
        bytes.fromhex(vector["envelope"]),
        vector["context"],
        bytes.fromhex(vector["plaintext"]),
    )


# -- what is written ---------------------------------------------------------------------


def test_values_are_written_in_v2_with_a_commitment() -> None:
    enc = Encryptor(LocalKeyring.generate())
    envelope = enc.encrypt(b"123-45-6789", CONTEXT)
    parsed = unpack_envelope(envelope)
    assert envelope[0] == parsed.version == 2
    assert len(parsed.commitment) == COMMITMENT_SIZE
    assert enc.decrypt(envelope, CONTEXT) == b"123-45-6789"


@pytest.mark.parametrize("offset", ["version", "count", "ref", "wrapped", "commitment"])
def test_every_header_field_is_authenticated(offset: str) -> None:
    keyring = LocalKeyring({"k1": b"\x01" * 32, "k2": b"\x02" * 32}, primary="k1")
    envelope = bytearray(Encryptor(keyring).encrypt(b"PAY ALICE $100", CONTEXT))
    end = len(envelope) - 12 - 14 - 16  # header size: nonce, 14-byte ciphertext, tag
    at = {"version": 0, "count": 1, "ref": 4, "wrapped": 10, "commitment": end - 1}[offset]
    for flip in (0x01, 0x80):
        tampered = bytearray(envelope)
        tampered[at] ^= flip
        with pytest.raises(DecryptionError):
            Encryptor(keyring).decrypt(bytes(tampered), CONTEXT)


def test_copies_cannot_be_added_removed_or_reordered() -> None:
    one, two = LocalKeyring({"k1": b"\x01" * 32}), LocalKeyring({"k2": b"\x02" * 32})
    envelope = Encryptor(one).encrypt(b"PAY ALICE $100", CONTEXT)
    parsed = unpack_envelope(envelope)
    foreign = unpack_envelope(Encryptor(two).encrypt(b"other", CONTEXT)).wrapped_keys[0]
    both = LocalKeyring({"k1": b"\x01" * 32, "k2": b"\x02" * 32}, primary="k1")
    (copy,) = parsed.wrapped_keys
    for keys in ([copy, foreign], [foreign, copy], [copy, copy]):
        edited = pack(keys, parsed.commitment, parsed.nonce, parsed.sealed)
        for reader in (one, both):
            with pytest.raises(DecryptionError):
                Encryptor(reader).decrypt(edited, CONTEXT)
    assert Encryptor(both).decrypt(envelope, CONTEXT) == b"PAY ALICE $100"


class _TwoCopies:
    """Writes each data key wrapped under two local keys, as a multi-region KMS keyring does."""

    def __init__(self, first: LocalKeyring, second: LocalKeyring) -> None:
        self.first, self.second = first, second

    def generate_data_key(self, context: Any) -> DataKey:
        key = self.first.generate_data_key(context)
        extra = self.second.wrap_data_key(key.plaintext, context)
        return DataKey(key.plaintext, key.wrapped_keys + extra)

    def wrap_data_key(self, data_key: bytes, context: Any) -> tuple[WrappedKey, ...]:
        return self.first.wrap_data_key(data_key, context)

    def unwrap_data_key(self, wrapped_keys: Any, context: Any) -> bytes:
        return self.first.unwrap_data_key(wrapped_keys, context)

    def is_primary(self, wrapped_key: WrappedKey) -> bool:
        return self.first.is_primary(wrapped_key)


def test_a_copy_the_reader_does_not_use_is_authenticated_too() -> None:
    # Only the associated data can catch this: the reader unwraps the first copy
    # and never looks inside the second. v1 let it through.
    one, two = LocalKeyring({"k1": b"\x01" * 32}), LocalKeyring({"k2": b"\x02" * 32})
    envelope = Encryptor(_TwoCopies(one, two)).encrypt(b"PAY ALICE $100", CONTEXT)
    parsed = unpack_envelope(envelope)
    assert [k.key_ref for k in parsed.wrapped_keys] == ["k1", "k2"]
    assert Encryptor(one).decrypt(envelope, CONTEXT) == b"PAY ALICE $100"
    assert Encryptor(two).decrypt(envelope, CONTEXT) == b"PAY ALICE $100"
    second = len(envelope) - 12 - 14 - 16 - COMMITMENT_SIZE - 1  # last byte of the k2 copy
    for at in (second, second - 47, second - 50):  # its wrap, its wrap's start, its key ref
        tampered = bytearray(envelope)
        tampered[at] ^= 0x01
        with pytest.raises(DecryptionError):
            Encryptor(one).decrypt(bytes(tampered), CONTEXT)


def test_a_copy_of_another_data_key_fails_the_commitment_before_any_decryption() -> None:
    # The copy unwraps (it is a genuine wrap, under the same context) but to a
    # data key the stored commitment does not commit to.
    keyring = LocalKeyring({"k1": b"\x01" * 32})
    enc = Encryptor(keyring)
    target = unpack_envelope(enc.encrypt(b"PAY ALICE $100", CONTEXT))
    other = unpack_envelope(enc.encrypt(b"PAY MALLORY $999", CONTEXT))
    spliced = pack(other.wrapped_keys, target.commitment, target.nonce, target.sealed)
    with pytest.raises(DecryptionError, match="commitment"):
        Encryptor(keyring).decrypt(spliced, CONTEXT)


def test_a_wrong_commitment_is_never_cached() -> None:
    keyring = LocalKeyring({"k1": b"\x01" * 32})
    enc = Encryptor(keyring)
    parsed = unpack_envelope(enc.encrypt(b"x", CONTEXT))
    bad = pack(parsed.wrapped_keys, bytes(32), parsed.nonce, parsed.sealed)
    reader = Encryptor(keyring)
    for _ in range(2):
        with pytest.raises(DecryptionError):
            reader.decrypt(bad, CONTEXT)
    assert reader.stats()["cached_keys"] == 0
    assert reader.stats()["unwraps"] == 2  # asked again: nothing was kept


# -- v1 values -------------------------------------------------------------------------


@pytest.mark.parametrize("name", [v["name"] for v in VECTORS])
def test_v1_values_read_by_default_and_are_refused_by_the_strict_policy(name: str) -> None:
    keyring, envelope, context, plaintext = _v1_vector(name)
    assert envelope[0] == 1
    assert Encryptor(keyring).decrypt(envelope, context) == plaintext
    strict = Encryptor(keyring, commitment_policy=STRICT)
    with pytest.raises(DecryptionError, match="commitment_policy"):
        strict.decrypt(envelope, context)
    assert strict.stats()["unwraps"] == 0  # refused before asking the keyring
    reader = strict.reading_v1()
    assert reader is not strict and reader.keyring is keyring
    assert reader.decrypt(envelope, context) == plaintext


def test_the_strict_policy_still_reads_v2_and_unknown_policies_are_refused() -> None:
    keyring = LocalKeyring.generate()
    strict = Encryptor(keyring, commitment_policy=STRICT)
    assert strict.decrypt(strict.encrypt(b"x", CONTEXT), CONTEXT) == b"x"
    assert strict.reading_v1().commitment_policy == "require_encrypt_allow_decrypt"
    default = Encryptor(keyring)
    assert default.reading_v1() is default
    with pytest.raises(ConfigurationError):
        Encryptor(keyring, commitment_policy="allow_everything")  # type: ignore[arg-type]


def _v1_table(engine: sa.Engine, metadata: sa.MetaData) -> tuple[sa.Table, LocalKeyring, bytes]:
    """A users.ssn column holding the short-ascii v1 vector in row 1, NULL in row 2."""
    keyring, envelope, context, _ = _v1_vector("short-ascii")
    table = sa.Table(
        "users",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ssn", EncryptedType(sa.String)),
    )
    assert dict(table.c.ssn.type.encryption_context()) == context
    metadata.create_all(engine)
    raw = sa.table("users", sa.column("id"), sa.column("ssn", sa.LargeBinary))
    with engine.begin() as conn:
        conn.execute(raw.insert(), [{"id": 1, "ssn": envelope}, {"id": 2, "ssn": None}])
    return table, keyring, envelope


def _stored(engine: sa.Engine) -> bytes:
    with engine.connect() as conn:
        return bytes(conn.execute(sa.text("SELECT ssn FROM users WHERE id = 1")).scalar_one())


@pytest.mark.parametrize("operation", ["rewrap", "reencrypt"])
def test_rewrap_and_reencrypt_move_v1_values_to_v2_under_the_strict_policy(
    engine: sa.Engine, metadata: sa.MetaData, operation: str
) -> None:
    table, keyring, envelope = _v1_table(engine, metadata)
    strict = Encryptor(keyring, commitment_policy=STRICT)
    sqla_envelope.configure(strict)
    report = verify(engine, table.c.ssn)
    assert len(report.failures) == 1 and "commitment_policy" in report.failures[0][1]
    # Under the key that is already primary: only the format changes.
    if operation == "rewrap":
        assert rewrap(engine, table.c.ssn, keyring) == 1
    else:
        assert reencrypt(engine, table.c.ssn).changed == 1
    stored = _stored(engine)
    assert stored[0] == 2 and stored != envelope
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.ssn).where(table.c.id == 1)).scalar_one() == (
            "123-45-6789"
        )
    assert verify(engine, table.c.ssn).failures == []
    if operation == "rewrap":
        assert rewrap(engine, table.c.ssn, keyring) == 0  # v2 under the primary: done


def test_wrapped_key_repr_of_a_v2_envelope_hides_the_commitment() -> None:
    parsed = unpack_envelope(Encryptor(LocalKeyring.generate()).encrypt(b"x", CONTEXT))
    assert parsed.commitment.hex() not in repr(parsed)
    assert isinstance(parsed.wrapped_keys[0], WrappedKey)


# -- a rolling upgrade: forbid_encrypt_allow_decrypt -------------------------------------


def test_forbid_encrypt_writes_v1_that_a_v1_only_reader_opens_and_reads_both() -> None:
    # While processes that cannot read v2 still run, new ones write v1.
    keyring = LocalKeyring({"k1": b"\x01" * 32})
    rolling = Encryptor(keyring, commitment_policy="forbid_encrypt_allow_decrypt")
    assert rolling.format_version == 1 and Encryptor(keyring).format_version == 2
    envelope = rolling.encrypt(b"PAY ALICE $100", CONTEXT)
    parsed = unpack_envelope(envelope)
    assert parsed.version == 1 and parsed.commitment == b""
    # What a v1-only reader does (docs/format.md, v1): unwrap, then AES-GCM with the
    # data key itself and the associated data 0x01 || canonical context.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from sqla_envelope.context import EncryptionContext

    canonical = EncryptionContext(CONTEXT)
    data_key = keyring.unwrap_data_key(parsed.wrapped_keys, canonical)
    aad = b"\x01" + canonical.canonical
    assert AESGCM(data_key).decrypt(parsed.nonce, parsed.sealed, aad) == b"PAY ALICE $100"
    assert rolling.decrypt(envelope, CONTEXT) == b"PAY ALICE $100"
    v2 = Encryptor(keyring).encrypt(b"x", CONTEXT)
    assert rolling.decrypt(v2, CONTEXT) == b"x"


def test_rewrap_under_forbid_encrypt_writes_v1_and_is_idempotent(
    engine: sa.Engine, metadata: sa.MetaData
) -> None:
    table, keyring, _ = _v1_table(engine, metadata)
    sqla_envelope.configure(Encryptor(keyring))
    new_keys = keyring.with_new_primary("k-next")
    rolling = Encryptor(new_keys, commitment_policy="forbid_encrypt_allow_decrypt")
    assert rewrap(engine, table.c.ssn, rolling) == 1
    assert _stored(engine)[0] == 1
    assert rewrap(engine, table.c.ssn, rolling) == 0  # v1 under the primary: what it writes
    sqla_envelope.configure(Encryptor(new_keys))  # every process upgraded: v2 from now on
    assert rewrap(engine, table.c.ssn, new_keys) == 1
    assert _stored(engine)[0] == 2
