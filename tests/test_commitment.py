"""Issue 12, finding 1: one stored value that two readers open to two different plaintexts.

In format v1 an envelope could carry wrapped copies of two *different* data keys,
and AES-GCM, which does not commit to its key, lets one ciphertext authenticate
under both (tests/attacks.py). A reader holding only key "a" then read one
payment, a reader holding only key "b" another, from the same bytes. Format v2's
key commitment closes it: a value opens under the one data key its commitment
names, or not at all.
"""

from __future__ import annotations

import hashlib

import pytest
from attacks import two_key_ciphertext
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sqla_envelope import DecryptionError, Encryptor, LocalKeyring
from sqla_envelope.context import EncryptionContext
from sqla_envelope.envelope import WrappedKey, pack_header, pack_v1

CONTEXT = EncryptionContext({"table": "payments", "column": "order"})
ALICE, MALLORY = b"PAY ALICE $100..", b"PAY MALLORY $999"
NONCE = bytes(range(12))
KEY_A, KEY_B = b"\x0a" * 32, b"\x0b" * 32  # the two master keys
DATA_A, DATA_B = hashlib.sha256(b"data key a").digest(), hashlib.sha256(b"data key b").digest()
READER_A = LocalKeyring({"a": KEY_A})
READER_B = LocalKeyring({"b": KEY_B})


def _copies() -> list[WrappedKey]:
    """A copy of data key A under master key "a", of data key B under "b"."""
    return [
        *LocalKeyring({"a": KEY_A}).wrap_data_key(DATA_A, CONTEXT),
        *LocalKeyring({"b": KEY_B}).wrap_data_key(DATA_B, CONTEXT),
    ]


def _v1_attack() -> bytes:
    aad = b"\x01" + CONTEXT.canonical
    sealed = two_key_ciphertext(DATA_A, DATA_B, NONCE, aad, ALICE, MALLORY)
    return pack_v1(_copies(), NONCE, sealed)


def _okm(data_key: bytes) -> bytes:
    return hashlib.sha512(
        b"\x00\x00\x00\x01" + data_key + b"sqla-envelope v2 key and commitment"
    ).digest()


def _v2_attack(commitment_of: bytes) -> bytes:
    header = pack_header(_copies(), _okm(commitment_of)[32:])
    aad = header + CONTEXT.canonical
    enc_a, enc_b = _okm(DATA_A)[:32], _okm(DATA_B)[:32]
    return header + NONCE + two_key_ciphertext(enc_a, enc_b, NONCE, aad, ALICE, MALLORY)


def test_the_forged_ciphertext_really_opens_under_both_keys() -> None:
    # The attack itself, checked by cryptography's own AES-GCM: no such ciphertext
    # could exist with a committing cipher.
    aad = b"associated data"
    sealed = two_key_ciphertext(DATA_A, DATA_B, NONCE, aad, ALICE, MALLORY)
    assert AESGCM(DATA_A).decrypt(NONCE, sealed, aad)[:16] == ALICE
    assert AESGCM(DATA_B).decrypt(NONCE, sealed, aad)[16:32] == MALLORY


def test_v1_lets_two_readers_open_one_value_to_two_payments() -> None:
    # The flaw, as 0.1 had it and as the default policy still reads v1 values.
    envelope = _v1_attack()
    assert Encryptor(READER_A).decrypt(envelope, CONTEXT)[:16] == ALICE
    assert Encryptor(READER_B).decrypt(envelope, CONTEXT)[16:32] == MALLORY


def test_the_strict_policy_refuses_the_v1_value_for_both_readers() -> None:
    envelope = _v1_attack()
    for reader in (READER_A, READER_B):
        strict = Encryptor(reader, commitment_policy="require_encrypt_require_decrypt")
        with pytest.raises(DecryptionError, match="v1"):
            strict.decrypt(envelope, CONTEXT)


@pytest.mark.parametrize("committed", ["a", "b"])
def test_v2_opens_under_the_committed_key_only(committed: str) -> None:
    # The same two-key ciphertext in v2: the commitment names one data key, so the
    # reader of the other copy gets DecryptionError, never the other payment.
    envelope = _v2_attack(DATA_A if committed == "a" else DATA_B)
    honest, fooled = (READER_A, READER_B) if committed == "a" else (READER_B, READER_A)
    opened = Encryptor(honest).decrypt(envelope, CONTEXT)
    assert ALICE in opened or MALLORY in opened
    with pytest.raises(DecryptionError, match="commitment"):
        Encryptor(fooled).decrypt(envelope, CONTEXT)
