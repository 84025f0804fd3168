"""Known-answer vectors of TenantKeyring's wrapping (tests/vectors/tenant_branch.json).

Each vector is recomputed here from the primitives (HKDF-SHA256 of RFC 5869, AES-SIV
of RFC 5297, the v2 key derivation and AES-256-GCM), byte by byte as docs/format.md
specifies; and the library decrypts each envelope through a TenantKeyring whose
branch key row holds the vector's wrapped branch key, so a change to the stored
bytes fails here instead of in production data.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sqla_envelope import Encryptor, LocalKeyring, WrappedKey
from sqla_envelope.context import EncryptionContext
from sqla_envelope.envelope import unpack
from sqla_envelope.tenants import BranchKeyRecord, SqlBranchKeyStore, TenantKeyring
from sqla_envelope.tenants.branch import BranchKey, aad_prefix, master_context

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"
DOC = json.loads((VECTORS_DIR / "tenant_branch.json").read_text(encoding="utf-8"))
VECTORS: list[dict[str, Any]] = DOC["vectors"]
IDS = [v["name"] for v in VECTORS]


def _siv(key: bytes, info: bytes) -> AESSIV:
    return AESSIV(HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=info).derive(key))


def test_the_file_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("gen", VECTORS_DIR / "generate_tenants.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.document() == (VECTORS_DIR / "tenant_branch.json").read_text(encoding="utf-8")


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_envelope_rebuilt_from_the_primitives(v: dict[str, Any]) -> None:
    tenant, version = v["tenant"], v["version"]
    context = EncryptionContext(v["context"])
    name = tenant.encode()
    aad = b"sqla-envelope-hierarchy" + len(name).to_bytes(2, "big") + name
    aad += version.to_bytes(4, "big") + context.canonical
    assert aad.hex() == v["wrap_aad"]
    branch_key, data_key = bytes.fromhex(v["branch_key"]), bytes.fromhex(v["data_key"])
    wrapped = _siv(branch_key, b"sqla-envelope/branch-wrap/v1").encrypt(data_key, [aad])
    assert wrapped.hex() == v["wrapped_data_key"]
    okm = hashlib.sha512(b"\x00\x00\x00\x01" + data_key + b"sqla-envelope v2 key and commitment")
    ref = v["key_ref"].encode("ascii")
    header = bytes((2, 1, len(ref))) + ref + len(wrapped).to_bytes(2, "big") + wrapped
    header += okm.digest()[32:]
    nonce = bytes.fromhex(v["payload_nonce"])
    sealed = AESGCM(okm.digest()[:32]).encrypt(
        nonce, bytes.fromhex(v["plaintext"]), header + context.canonical
    )
    assert (header + nonce + sealed).hex() == v["envelope"]
    master = bytes.fromhex(v["master_key"])
    canonical = bytes.fromhex(v["master_context_canonical"])
    wrapped_branch = _siv(master, b"sqla-envelope/local-wrap/v1").encrypt(branch_key, [canonical])
    assert wrapped_branch.hex() == v["wrapped_branch_key"]


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_library_computes_the_same_intermediate_values(v: dict[str, Any]) -> None:
    tenant, version = v["tenant"], v["version"]
    assert (
        master_context("tenant_id", tenant, version).canonical.hex()
        == (v["master_context_canonical"])
    )
    assert aad_prefix(tenant, version) + EncryptionContext(v["context"]).canonical == bytes.fromhex(
        v["wrap_aad"]
    )
    key = BranchKey(tenant, version, bytes.fromhex(v["branch_key"]))
    wrapped = key.wrap(bytes.fromhex(v["data_key"]), EncryptionContext(v["context"]))
    assert wrapped == WrappedKey(v["key_ref"], bytes.fromhex(v["wrapped_data_key"]))


def test_library_decrypts_every_vector_from_a_branch_key_table(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    store = SqlBranchKeyStore(engine)
    store.table.create(engine)
    master = LocalKeyring({VECTORS[0]["master_key_id"]: bytes.fromhex(VECTORS[0]["master_key"])})
    for v in VECTORS:
        wrapped = (WrappedKey(v["master_key_id"], bytes.fromhex(v["wrapped_branch_key"])),)
        store.insert(BranchKeyRecord(v["tenant"], v["version"], wrapped))
    encryptor = Encryptor(TenantKeyring(master, store=store))
    for v in VECTORS:
        envelope = bytes.fromhex(v["envelope"])
        assert unpack(envelope).wrapped_keys[0].key_ref == v["key_ref"]
        assert encryptor.decrypt(envelope, v["context"]) == bytes.fromhex(v["plaintext"])
