"""The tables bench_core.py times and callgrind_read.py counts, one per way of storing a value.

Every table has the same shape, an integer key and one 40-character string, and
all are filled with the same strings. What differs is the column type:

* ``plain``: ``String(40)``;
* ``simple``: :class:`SimpleEnvelope`, the simplest per-row envelope, written
  here and nowhere in the package;
* ``v1`` and ``v2``: ``EncryptedType(String(40))``, format v1 (under
  ``commitment_policy="forbid_encrypt_allow_decrypt"``) and v2 (the default),
  each through an Encryptor on the defaults (10,000 cached keys);
* ``peer``: sqlalchemy-utils' ``StringEncryptedType(String, key, AesGcmEngine)``;
* ``blob``: copies of the v2 envelopes in a plain ``LargeBinary`` column, to see
  what the larger stored values cost with no decryption (information only).

The v1 and v2 tables are also mapped twice more, read-only: through an
Encryptor whose cache holds every key (the warm read), and through
:class:`CryptoFloor` (the least work the format allows).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import string
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Integer, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

from sqla_envelope import EncryptedType, Encryptor, LocalKeyring
from sqla_envelope.context import EncryptionContext

VALUE_LENGTH = 40
DEFAULT_CACHE_SIZE = 10_000  # Encryptor's default
V1_POLICY = "forbid_encrypt_allow_decrypt"  # the policy under which an Encryptor writes v1

# Format v2's key derivation, spelled out from docs/format.md (section 3) rather
# than imported, so the floor is a second implementation of the spec.
KDF_PREFIX = b"\x00\x00\x00\x01"
KDF_INFO = b"sqla-envelope v2 key and commitment"
_LOCAL_WRAP_INFO = b"sqla-envelope/local-wrap/v1"
_WRAPPED_SIZE = 48  # AES-SIV: 16-byte synthetic IV + 32-byte data key
_COMMITMENT_SIZE = 32
_NONCE_SIZE = 12


def random_values(rows: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    return ["".join(rng.choices(alphabet, k=VALUE_LENGTH)) for _ in range(rows)]


class SimpleEnvelope(TypeDecorator[str]):
    """The simplest per-row envelope: what ten lines of application code would do.

    A fresh 256-bit AES-GCM data key per value, wrapped by AES-GCM under a local
    master key, stored as ``wrapped || nonce || ciphertext`` (wrapped is the
    wrap's nonce, the encrypted key and its tag: 60 bytes). No key cache, no
    context, no header, no version, no checks: the bar a real format is held to.
    """

    impl = LargeBinary
    cache_ok = False  # holds a key; a statement cache key must not

    def __init__(self, master_key: bytes) -> None:
        super().__init__()
        self.master = AESGCM(master_key)

    def process_bind_param(self, value: Any, dialect: Any) -> bytes:
        data_key, wrap_nonce, nonce = os.urandom(32), os.urandom(12), os.urandom(12)
        wrapped = wrap_nonce + self.master.encrypt(wrap_nonce, data_key, None)
        return wrapped + nonce + AESGCM(data_key).encrypt(nonce, value.encode(), None)

    def process_result_value(self, value: Any, dialect: Any) -> str:
        data_key = self.master.decrypt(value[:12], value[12:60], None)
        return AESGCM(data_key).decrypt(value[60:72], value[72:], None).decode()


class CryptoFloor(TypeDecorator[str]):
    """What reading one value of the format costs at the least: its crypto and a few slices.

    A read-only column type that does, per value, only what no implementation of
    the format can skip. v1: unwrap the data key (AES-SIV under the HKDF-derived
    local wrapping key), build its AES-GCM cipher, decrypt with ``0x01 || context``
    as associated data. v2 (docs/format.md, section 3): the same unwrap, one
    SHA-512 derivation giving the AES-GCM key and the commitment, a constant-time
    compare with the stored commitment, then decrypt with the whole header and the
    context as associated data. No key cache, no parsing (offsets fixed for one
    known key id and one copy), no error handling: a floor to compare the real
    column with, not something to ship.
    """

    impl = LargeBinary
    cache_ok = False

    def __init__(self, master_key: bytes, key_id: str, context: dict[str, str], version: int):
        super().__init__()
        if version not in (1, 2):
            raise ValueError("format version 1 or 2")
        siv_key = HKDF(
            algorithm=hashes.SHA256(), length=64, salt=None, info=_LOCAL_WRAP_INFO
        ).derive(master_key)
        self.siv = AESSIV(siv_key)
        self.canonical = EncryptionContext(context).canonical
        self.version = version
        self.wrap_at = 3 + len(key_id) + 2

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        siv, aad, canonical = self.siv, [self.canonical], self.canonical
        start = self.wrap_at
        end = start + _WRAPPED_SIZE
        if self.version == 1:
            value_aad = b"\x01" + canonical
            sealed_at = end + _NONCE_SIZE

            def process_v1(value: bytes) -> str:
                data_key = siv.decrypt(value[start:end], aad)
                return (
                    AESGCM(data_key)
                    .decrypt(value[end:sealed_at], value[sealed_at:], value_aad)
                    .decode()
                )

            return process_v1

        header = end + _COMMITMENT_SIZE
        sealed_at = header + _NONCE_SIZE
        sha512, compare = hashlib.sha512, hmac.compare_digest
        counter, info = KDF_PREFIX, KDF_INFO

        def process_v2(value: bytes) -> str:
            data_key = siv.decrypt(value[start:end], aad)
            okm = sha512(counter + data_key + info).digest()
            if not compare(okm[32:], value[end:header]):
                raise ValueError("commitment mismatch")
            return (
                AESGCM(okm[:32])
                .decrypt(value[header:sealed_at], value[sealed_at:], value[:header] + canonical)
                .decode()
            )

        return process_v2


def peer_type(key: str) -> TypeEngine[str]:
    """sqlalchemy-utils' AES-GCM column, the peer a user would otherwise pick."""
    # Imported here: the other bench scripts import this module and need no peer.
    from sqlalchemy_utils import StringEncryptedType
    from sqlalchemy_utils.types.encrypted.encrypted_type import AesGcmEngine

    return StringEncryptedType(String, key, AesGcmEngine)


@dataclass
class Variants:
    """Every model class and Encryptor of one benchmark, built by :func:`build`.

    ``models`` holds the tables that are written (insert order is this order);
    ``warm`` and ``floor`` map the v1 and v2 tables again, read-only.
    """

    models: dict[str, type[Any]]
    warm: dict[str, type[Any]]
    floor: dict[str, type[Any]]
    blob: type[Any]
    base: type[DeclarativeBase]
    encryptors: dict[str, Encryptor]  # "v1", "v2": the measured ones
    big_cache: dict[str, Encryptor]  # "v1", "v2": caches that hold every key


def _model(base: type[DeclarativeBase], table: str, column: TypeEngine[Any]) -> type[Any]:
    return type(
        f"Table_{table}",
        (base,),
        {
            "__tablename__": table,
            "id": mapped_column(Integer, primary_key=True),
            "value": mapped_column(column),
        },
    )


def build(rows: int) -> Variants:
    """Fresh keys, Encryptors and model classes for a run of ``rows`` rows."""
    master_key, key_id = os.urandom(32), os.urandom(4).hex()
    keyring = LocalKeyring({key_id: master_key})
    encryptors = {
        "v1": Encryptor(keyring, commitment_policy=V1_POLICY),
        "v2": Encryptor(keyring),
    }
    big = max(rows, DEFAULT_CACHE_SIZE)
    big_cache = {
        "v1": Encryptor(keyring, cache_size=big, commitment_policy=V1_POLICY),
        "v2": Encryptor(keyring, cache_size=big),
    }

    class Base(DeclarativeBase):
        pass

    models = {
        "plain": _model(Base, "plain", String(VALUE_LENGTH)),
        "simple": _model(Base, "simple", SimpleEnvelope(os.urandom(32))),
        "v1": _model(Base, "secret_v1", EncryptedType(String(VALUE_LENGTH), encryptors["v1"])),
        "v2": _model(Base, "secret_v2", EncryptedType(String(VALUE_LENGTH), encryptors["v2"])),
        "peer": _model(Base, "peer", peer_type(os.urandom(16).hex())),
    }
    blob = _model(Base, "blob", LargeBinary())

    # The same tables again, each mapping on a base of its own (a table name
    # appears once per MetaData), read-only. The default context is spelled out
    # so they read exactly what the measured columns wrote.
    warm: dict[str, type[Any]] = {}
    floor: dict[str, type[Any]] = {}
    for version in ("v1", "v2"):
        table = f"secret_{version}"
        context = {"table": table, "column": "value"}

        class WarmBase(DeclarativeBase):
            pass

        class FloorBase(DeclarativeBase):
            pass

        warm[version] = _model(
            WarmBase,
            table,
            EncryptedType(String(VALUE_LENGTH), big_cache[version], context=context),
        )
        floor[version] = _model(
            FloorBase, table, CryptoFloor(master_key, key_id, context, int(version[1]))
        )
    return Variants(models, warm, floor, blob, Base, encryptors, big_cache)
