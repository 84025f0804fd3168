"""Known-answer vectors of envelope formats v2 and v1 (tests/vectors/envelope_v*.json).

v2 is what is written; v1 is what values written before it hold, and must keep
reading. Each envelope is rebuilt here from the primitives alone (hashlib, HMAC,
AES-SIV and AES-GCM), byte by byte as docs/format.md specifies, so any change to
the stored format fails these tests instead of slipping into production data.
The library must also decrypt every stored vector and reproduce its intermediate
values, and the numbers, tables and SQL of docs/format.md must agree with them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import math
import re
import shutil
import sqlite3
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sqla_envelope import DataKey, DecryptionError, Encryptor, LocalKeyring, WrappedKey
from sqla_envelope.aead import LOCAL_WRAPPED_SIZE, LocalKeyWrapper
from sqla_envelope.context import EncryptionContext
from sqla_envelope.envelope import envelope_size, unpack

ROOT = Path(__file__).resolve().parent.parent
VECTORS_DIR = ROOT / "tests" / "vectors"
VECTORS_FILE = VECTORS_DIR / "envelope_v1.json"
VECTORS_V2_FILE = VECTORS_DIR / "envelope_v2.json"
FORMAT_DOC = ROOT / "docs" / "format.md"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))["vectors"]
VECTORS_V2: list[dict[str, Any]] = json.loads(VECTORS_V2_FILE.read_text(encoding="utf-8"))[
    "vectors"
]
LOCAL_V2 = [v for v in VECTORS_V2 if "master_key" in v["keys"][0]]
KMS_V2 = [v for v in VECTORS_V2 if "kms_ciphertext_blob" in v["keys"][0]]

INFO = b"sqla-envelope/local-wrap/v1"
KDF_LABEL = b"sqla-envelope v2 key and commitment"
STRICT = "require_encrypt_require_decrypt"
DOCUMENTED_CASES = {
    "short-ascii",
    "empty-plaintext",
    "utf8-multibyte",
    "binary-300",
    "empty-context",
    "context-sort-order",
    "context-utf8-sort",
    "two-wrapped-keys",
}


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def canonical_by_hand(pairs: dict[str, str]) -> bytes:
    """Pair count, then sorted ``len key len value`` with 2-byte big-endian lengths."""
    out = struct.pack(">H", len(pairs))
    for key, value in sorted((k.encode(), v.encode()) for k, v in pairs.items()):
        out += struct.pack(">H", len(key)) + key + struct.pack(">H", len(value)) + value
    return out


def hkdf_by_hand(master_key: bytes) -> bytes:
    """RFC 5869 with the standard library: salt none means 32 zero bytes; two blocks.

    T1 = HMAC(PRK, info || 01), T2 = HMAC(PRK, T1 || info || 02), output T1 || T2.
    """
    prk = hmac.new(b"\x00" * 32, master_key, hashlib.sha256).digest()
    t1 = hmac.new(prk, INFO + b"\x01", hashlib.sha256).digest()
    t2 = hmac.new(prk, t1 + INFO + b"\x02", hashlib.sha256).digest()
    return t1 + t2


def hkdf_cryptography(master_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=INFO).derive(master_key)


def okm_by_hand(data_key: bytes) -> bytes:
    """NIST SP 800-56C Rev. 2 one-step KDF, H = SHA-512, one counter value: 64 bytes."""
    return hashlib.sha512(struct.pack(">I", 1) + data_key + KDF_LABEL).digest()


def copies_by_hand(vector: dict[str, Any], data_key: bytes, canonical: bytes) -> bytes:
    """Key count, then each copy: a LocalKeyring AES-SIV wrap, or 01 || a KMS blob."""
    out = struct.pack(">B", len(vector["keys"]))
    for key in vector["keys"]:
        if "kms_ciphertext_blob" in key:
            wrapped = b"\x01" + h(key["kms_ciphertext_blob"])
        else:
            siv_key = hkdf_cryptography(h(key["master_key"]))
            wrapped = AESSIV(siv_key).encrypt(data_key, [canonical])
        ref = key["key_id"].encode("ascii")
        out += struct.pack(">B", len(ref)) + ref + struct.pack(">H", len(wrapped)) + wrapped
    return out


def envelope_by_hand(vector: dict[str, Any]) -> bytes:
    """v1: the data key is the AES-GCM key; aad = 01 || canonical context."""
    canonical = canonical_by_hand(vector["context"])
    data_key = h(vector["data_key"])
    out = b"\x01" + copies_by_hand(vector, data_key, canonical)
    nonce = h(vector["payload_nonce"])
    aad = b"\x01" + canonical
    return out + nonce + AESGCM(data_key).encrypt(nonce, h(vector["plaintext"]), aad)


def envelope_v2_by_hand(vector: dict[str, Any]) -> bytes:
    """v2: header = 02 || copies || commitment; AES-GCM under okm[:32], aad = header || context."""
    canonical = canonical_by_hand(vector["context"])
    data_key = h(vector["data_key"])
    okm = okm_by_hand(data_key)
    header = b"\x02" + copies_by_hand(vector, data_key, canonical) + okm[32:]
    nonce = h(vector["payload_nonce"])
    sealed = AESGCM(okm[:32]).encrypt(nonce, h(vector["plaintext"]), header + canonical)
    return header + nonce + sealed


def size_by_formula(vector: dict[str, Any], commitment: int = 0) -> int:
    """docs/format.md: 2 + sum(1 + len(key_ref) + 2 + len(wrapped)) (+ 32) + 12 + p + 16."""
    header = 2 + sum(
        1 + len(key["key_id"]) + 2 + len(h(key["wrapped_key"])) for key in vector["keys"]
    )
    return header + commitment + 12 + len(h(vector["plaintext"])) + 16


class StandInKms:
    """Unwraps the one made-up KMS copy of a vector, as KMS Decrypt would: nothing else.

    The kms-direct vector's blob is not one a real KMS (or its test server) can
    decrypt, so this keyring answers for it, to check that the library reads the
    copy's framing and the rest of the envelope.
    """

    def __init__(self, vector: dict[str, Any]) -> None:
        key = vector["keys"][0]
        self.copy = WrappedKey(key["key_id"], h(key["wrapped_key"]))
        self.data_key = h(vector["data_key"])

    def generate_data_key(self, context: EncryptionContext) -> DataKey:
        raise NotImplementedError

    def wrap_data_key(self, data_key: bytes, context: EncryptionContext) -> tuple[WrappedKey, ...]:
        raise NotImplementedError

    def unwrap_data_key(
        self, wrapped_keys: Sequence[WrappedKey], context: EncryptionContext
    ) -> bytes:
        if self.copy not in wrapped_keys:
            raise DecryptionError("not the vector's copy")
        return self.data_key

    def is_primary(self, wrapped_key: WrappedKey) -> bool:
        return wrapped_key == self.copy


def keyring_of(vector: dict[str, Any]) -> Any:
    if "kms_ciphertext_blob" in vector["keys"][0]:
        return StandInKms(vector)
    return LocalKeyring(
        {key["key_id"]: h(key["master_key"]) for key in vector["keys"]},
        primary=vector["keys"][0]["key_id"],
    )


by_name = pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
by_name_v2 = pytest.mark.parametrize("vector", VECTORS_V2, ids=[v["name"] for v in VECTORS_V2])
local_v2 = pytest.mark.parametrize("vector", LOCAL_V2, ids=[v["name"] for v in LOCAL_V2])


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_vectors", VECTORS_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator


# -- the vector files ----------------------------------------------------------------------


def test_vector_set_covers_the_documented_cases() -> None:
    names = {v["name"] for v in VECTORS}
    assert names >= DOCUMENTED_CASES
    assert any(len(v["keys"]) == 2 for v in VECTORS)
    assert any(v["plaintext"] == "" for v in VECTORS)
    assert any(v["canonical_context"] == "0000" for v in VECTORS)


def test_v2_vector_set_covers_the_v1_cases_and_a_kms_copy() -> None:
    assert {v["name"] for v in VECTORS_V2} == {v["name"] for v in VECTORS} | {"kms-direct"}
    assert [v["keys"][0]["key_id"] for v in KMS_V2] == [
        "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    ]
    by_name_v1 = {v["name"]: v for v in VECTORS}
    for vector in LOCAL_V2:
        old = by_name_v1[vector["name"]]
        # The same inputs and master keys, so one keyring reads both files...
        assert (vector["context"], vector["plaintext"]) == (old["context"], old["plaintext"])
        assert [k["master_key"] for k in vector["keys"]] == [k["master_key"] for k in old["keys"]]
        # ...but data keys and nonces of their own.
        assert vector["data_key"] != old["data_key"]
        assert vector["payload_nonce"] != old["payload_nonce"]


def test_vectors_files_are_what_the_generator_writes() -> None:
    generator = _generator()
    assert VECTORS_FILE.read_text(encoding="utf-8") == generator.render()
    assert VECTORS_V2_FILE.read_text(encoding="utf-8") == generator.render_v2()


def test_generator_check_covers_both_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generator = _generator()
    v1, v2 = tmp_path / "envelope_v1.json", tmp_path / "envelope_v2.json"
    shutil.copy(VECTORS_FILE, v1)
    shutil.copy(VECTORS_V2_FILE, v2)
    generator.FILES = [(v1, generator.render), (v2, generator.render_v2)]
    assert generator.main(["--check"]) == 0
    for stale in (v1, v2):
        text = stale.read_text(encoding="utf-8")
        stale.write_text(text.replace('"name": "short-ascii"', '"name": "x"'), encoding="utf-8")
        capsys.readouterr()
        assert generator.main(["--check"]) == 1
        assert f"{stale} is out of date" in capsys.readouterr().out
        stale.write_text(text, encoding="utf-8")  # --check wrote nothing
    assert generator.main(["--check"]) == 0


# -- format v1 (read only): every value written before v2 -----------------------------------


@by_name
def test_envelope_rebuilt_from_primitives(vector: dict[str, Any]) -> None:
    assert envelope_by_hand(vector).hex() == vector["envelope"]


@by_name
def test_intermediate_values(vector: dict[str, Any]) -> None:
    canonical = h(vector["canonical_context"])
    data_key = h(vector["data_key"])
    aad = b"\x01" + canonical
    assert vector["aad"] == aad.hex()
    sealed = AESGCM(data_key).encrypt(h(vector["payload_nonce"]), h(vector["plaintext"]), aad)
    assert sealed.hex() == vector["ciphertext"] + vector["tag"]
    assert len(h(vector["ciphertext"])) == len(h(vector["plaintext"]))
    for key in vector["keys"]:
        master_key = h(key["master_key"])
        assert len(h(key["siv_key"])) == 64
        assert hkdf_by_hand(master_key).hex() == key["siv_key"]
        assert hkdf_cryptography(master_key).hex() == key["siv_key"]
        wrapped = h(key["wrapped_key"])
        # The 16-byte synthetic IV, then the 32-byte encrypted data key; no nonce.
        assert len(wrapped) == LOCAL_WRAPPED_SIZE == 48
        assert "wrap_nonce" not in key
        siv = AESSIV(h(key["siv_key"]))
        assert siv.decrypt(wrapped, [canonical]) == data_key
        assert siv.encrypt(data_key, [canonical]) == wrapped  # deterministic


@by_name
def test_library_decrypts_vector(vector: dict[str, Any]) -> None:
    envelope = h(vector["envelope"])
    plaintext = h(vector["plaintext"])
    for key in vector["keys"]:
        keyring = LocalKeyring({key["key_id"]: h(key["master_key"])})
        assert Encryptor(keyring).decrypt(envelope, vector["context"]) == plaintext
    if len(vector["keys"]) > 1:
        every_key = {key["key_id"]: h(key["master_key"]) for key in vector["keys"]}
        keyring = LocalKeyring(every_key, primary=vector["keys"][-1]["key_id"])
        assert Encryptor(keyring).decrypt(envelope, vector["context"]) == plaintext


@by_name
def test_library_parses_vector(vector: dict[str, Any]) -> None:
    parsed = unpack(h(vector["envelope"]))
    assert parsed.version == 1
    assert parsed.commitment == b""
    assert [k.key_ref for k in parsed.wrapped_keys] == [k["key_id"] for k in vector["keys"]]
    assert [k.blob.hex() for k in parsed.wrapped_keys] == [k["wrapped_key"] for k in vector["keys"]]
    assert parsed.nonce.hex() == vector["payload_nonce"]
    assert parsed.sealed.hex() == vector["ciphertext"] + vector["tag"]


@by_name
def test_canonical_context(vector: dict[str, Any]) -> None:
    assert EncryptionContext(vector["context"]).canonical.hex() == vector["canonical_context"]
    assert canonical_by_hand(vector["context"]).hex() == vector["canonical_context"]


@pytest.mark.parametrize(
    "vector",
    VECTORS + LOCAL_V2,
    ids=[f"v1-{v['name']}" for v in VECTORS] + [f"v2-{v['name']}" for v in LOCAL_V2],
)
def test_local_key_wrapper_reproduces_wrapped_key(vector: dict[str, Any]) -> None:
    canonical = h(vector["canonical_context"])
    for key in vector["keys"]:
        wrapper = LocalKeyWrapper(h(key["master_key"]))
        wrapped = wrapper.wrap(h(vector["data_key"]), canonical)
        assert wrapped.hex() == key["wrapped_key"]
        assert wrapper.unwrap(wrapped, canonical).hex() == vector["data_key"]


@by_name
def test_envelope_size_matches_documented_formula(vector: dict[str, Any]) -> None:
    size = len(h(vector["envelope"]))
    assert size == vector["envelope_size"]
    assert size == size_by_formula(vector)
    plaintext_size = len(h(vector["plaintext"]))
    wrapped = [(len(k["key_id"]), len(h(k["wrapped_key"]))) for k in vector["keys"]]
    assert size == envelope_size(plaintext_size, wrapped, version=1)
    if len(vector["keys"]) == 1:
        assert size == 81 + len(vector["keys"][0]["key_id"]) + plaintext_size


@by_name
def test_strict_commitment_policy_refuses_v1_vector(vector: dict[str, Any]) -> None:
    encryptor = Encryptor(keyring_of(vector), commitment_policy=STRICT)
    with pytest.raises(DecryptionError, match="format v1"):
        encryptor.decrypt(h(vector["envelope"]), vector["context"])
    assert encryptor.stats()["unwraps"] == 0  # refused before any keyring call


# -- format v2: what is written ---------------------------------------------------------------


@by_name_v2
def test_v2_envelope_rebuilt_from_primitives(vector: dict[str, Any]) -> None:
    assert envelope_v2_by_hand(vector).hex() == vector["envelope"]


@by_name_v2
def test_v2_intermediate_values(vector: dict[str, Any]) -> None:
    data_key = h(vector["data_key"])
    kdf_input = b"\x00\x00\x00\x01" + data_key + KDF_LABEL
    assert len(kdf_input) == 71 and len(KDF_LABEL) == 35
    assert vector["kdf_input"] == kdf_input.hex()
    okm = hashlib.sha512(kdf_input).digest()
    assert vector["okm"] == okm.hex() == vector["enc_key"] + vector["commitment"]
    assert (len(h(vector["enc_key"])), len(h(vector["commitment"]))) == (32, 32)

    envelope = h(vector["envelope"])
    header = h(vector["header"])
    canonical = h(vector["canonical_context"])
    assert canonical == canonical_by_hand(vector["context"])
    # The header is every byte before the nonce, and ends with the commitment.
    assert envelope.startswith(header + h(vector["payload_nonce"]))
    assert header[0] == 2 and header[-32:].hex() == vector["commitment"]
    assert header[1:-32] == copies_by_hand(vector, data_key, canonical)
    assert vector["aad"] == (header + canonical).hex()
    sealed = AESGCM(okm[:32]).encrypt(
        h(vector["payload_nonce"]), h(vector["plaintext"]), h(vector["aad"])
    )
    assert sealed.hex() == vector["ciphertext"] + vector["tag"]
    assert envelope == header + h(vector["payload_nonce"]) + sealed
    for key in vector["keys"]:
        if "master_key" in key:
            assert hkdf_by_hand(h(key["master_key"])).hex() == key["siv_key"]
            assert AESSIV(h(key["siv_key"])).decrypt(h(key["wrapped_key"]), [canonical]) == data_key
        else:  # a KmsKeyring direct-mode copy: the mode byte, then KMS's CiphertextBlob
            assert key["wrapped_key"] == "01" + key["kms_ciphertext_blob"]


@by_name_v2
def test_v2_library_decrypts_vector(vector: dict[str, Any]) -> None:
    envelope = h(vector["envelope"])
    plaintext = h(vector["plaintext"])
    assert Encryptor(keyring_of(vector)).decrypt(envelope, vector["context"]) == plaintext
    strict = Encryptor(keyring_of(vector), commitment_policy=STRICT)
    assert strict.decrypt(envelope, vector["context"]) == plaintext
    for key in vector["keys"]:  # each copy alone opens it
        if "master_key" in key:
            keyring = LocalKeyring({key["key_id"]: h(key["master_key"])})
            assert Encryptor(keyring).decrypt(envelope, vector["context"]) == plaintext


@by_name_v2
def test_v2_library_parses_vector(vector: dict[str, Any]) -> None:
    envelope = h(vector["envelope"])
    parsed = unpack(envelope)
    assert parsed.version == 2
    assert [k.key_ref for k in parsed.wrapped_keys] == [k["key_id"] for k in vector["keys"]]
    assert [k.blob.hex() for k in parsed.wrapped_keys] == [k["wrapped_key"] for k in vector["keys"]]
    assert parsed.commitment.hex() == vector["commitment"]
    assert envelope[: parsed.header_size].hex() == vector["header"]
    assert parsed.nonce.hex() == vector["payload_nonce"]
    assert parsed.sealed.hex() == vector["ciphertext"] + vector["tag"]


@by_name_v2
def test_v2_envelope_size_matches_documented_formula(vector: dict[str, Any]) -> None:
    size = len(h(vector["envelope"]))
    assert size == vector["envelope_size"] == size_by_formula(vector, commitment=32)
    plaintext_size = len(h(vector["plaintext"]))
    wrapped = [(len(k["key_id"]), len(h(k["wrapped_key"]))) for k in vector["keys"]]
    assert (
        size
        == envelope_size(plaintext_size, wrapped)
        == envelope_size(plaintext_size, wrapped, version=1) + 32
    )
    if vector in LOCAL_V2 and len(vector["keys"]) == 1:
        assert size == 113 + len(vector["keys"][0]["key_id"]) + plaintext_size


def test_one_keyring_reads_both_versions() -> None:
    """The v2 vectors use the v1 master keys: a keyring upgraded in place reads old and new."""
    master_keys = {k["key_id"]: h(k["master_key"]) for v in VECTORS for k in v["keys"]}
    encryptor = Encryptor(LocalKeyring(master_keys, primary="a1b2c3"))
    for vector in VECTORS + LOCAL_V2:
        assert encryptor.decrypt(h(vector["envelope"]), vector["context"]) == h(vector["plaintext"])


# -- docs/format.md states the same numbers ---------------------------------------------


def _doc() -> str:
    return FORMAT_DOC.read_text(encoding="utf-8")


def test_doc_states_the_size_formulas() -> None:
    text = _doc()
    v2 = "2 + Σ(1 + len(key_ref) + 2 + len(wrapped)) + 32 + 12 + len(encoded plaintext) + 16"
    v1 = "2 + Σ(1 + len(key_ref) + 2 + len(wrapped)) + 12 + len(encoded plaintext) + 16"
    assert v2 in text and v1 in text
    assert "113 + len(key_id) + len(encoded plaintext)" in text
    assert "81 + len(key_id) + len(encoded plaintext)" in text
    assert "smallest well-formed v2 envelope is therefore 67 bytes" in text


def test_doc_sizing_table() -> None:
    """Every row of the column-sizing table: binary = 121 + n, base64 = 4 * ceil(binary / 3).

    121 bytes: the v2 overhead with one local key under an 8-character key id, the
    length ``LocalKeyring.generate()`` uses.
    """
    table = _doc().split("<!-- sizing-table -->", 2)[1]
    rows = re.findall(r"^\|\s*([\d,]+)\s*\|\s*([\d,]+)\s*\|\s*([\d,]+)\s*\|", table, re.M)
    assert len(rows) >= 5
    for plain, binary, text in rows:
        n, stored, encoded = (int(x.replace(",", "")) for x in (plain, binary, text))
        assert stored == envelope_size(n, [(8, LOCAL_WRAPPED_SIZE)]) == 121 + n
        assert encoded == 4 * math.ceil(stored / 3)
    assert rows[-1][1] == "65,535"  # the last row fills a MySQL BLOB exactly


@pytest.mark.parametrize(
    ("marker", "vectors"),
    [("annotated-envelope-v2", VECTORS_V2), ("annotated-envelope-v1", VECTORS)],
    ids=["v2", "v1"],
)
def test_doc_annotated_envelope(marker: str, vectors: list[dict[str, Any]]) -> None:
    """The byte-by-byte tables are the short-ascii vectors, field by field."""
    table = _doc().split(f"<!-- {marker} -->", 2)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*`([0-9a-f ]+)`\s*\|", table, re.M)
    assert len(rows) >= 8
    envelope = h(next(v for v in vectors if v["name"] == "short-ascii")["envelope"])
    offset = 0
    for start, size, hex_text in rows:
        field = h(hex_text.replace(" ", ""))
        assert (int(start), int(size)) == (offset, len(field))
        assert envelope[offset : offset + len(field)] == field
        offset += len(field)
    assert offset == len(envelope)
    assert f"{len(envelope)} bytes" in _doc().split(f"<!-- {marker} -->", 2)[0][-400:]


def test_doc_kdf_example() -> None:
    block = _doc().split("<!-- kdf-example -->", 2)[1].split("```")[1]
    lines = dict(re.findall(r"^(data key|label|enc_key|commitment) +([0-9a-f]+)$", block, re.M))
    vector = next(v for v in VECTORS_V2 if v["name"] == "short-ascii")
    assert lines == {
        "data key": vector["data_key"],
        "label": KDF_LABEL.hex(),
        "enc_key": vector["enc_key"],
        "commitment": vector["commitment"],
    }


def test_doc_worked_context_example() -> None:
    block = _doc().split("<!-- canonical-context-example -->", 2)[1].split("```")[1]
    hex_digits = "".join(re.findall(r"\b[0-9a-f]{2}\b", block.split("\n", 1)[1]))
    expected = EncryptionContext({"table": "users", "column": "ssn"}).canonical
    assert hex_digits == expected.hex()


# -- docs/format.md section 8: the SQL, on every database -------------------------------------


def _stored_rows() -> list[tuple[str, bytes | None]]:
    """Every vector of both versions, a v2 value under a1b2c3d4, and a NULL."""
    rows: list[tuple[str, bytes | None]] = [(f"v1/{v['name']}", h(v["envelope"])) for v in VECTORS]
    rows += [(f"v2/{v['name']}", h(v["envelope"])) for v in VECTORS_V2]
    # A key id that starts with the one searched for: the length byte must rule it out.
    prefix_ring = LocalKeyring({"a1b2c3d4": b"\x07" * 32})
    rows.append(("v2/prefix-key", Encryptor(prefix_ring).encrypt(b"x", {"table": "users"})))
    rows.append(("null", None))
    return rows


def _first_ref(envelope: bytes) -> str:
    return envelope[3 : 3 + envelope[2]].decode("ascii")


def _ids(rows: list[tuple[str, bytes | None]], keep: Callable[[bytes], bool]) -> set[str]:
    return {name for name, env in rows if env is not None and keep(env)}


def _under_a1b2c3(rows: list[tuple[str, bytes | None]]) -> set[str]:
    return _ids(rows, lambda env: _first_ref(env) == "a1b2c3")


# What each query of section 8 must return, by the comment above it.
EXPECTED: dict[str, Callable[[list[tuple[str, bytes | None]]], Any]] = {
    "rows still in format version 1": lambda rows: _ids(rows, lambda env: env[0] == 1),
    "rows in format version 2": lambda rows: _ids(rows, lambda env: env[0] == 2),
    "rows with a single wrapped key": lambda rows: _ids(rows, lambda env: env[1] == 1),
    "rows whose first key is a1b2c3": _under_a1b2c3,
    "the same, with the length and the id as separate parameters": _under_a1b2c3,
    "the same in one comparison": _under_a1b2c3,
    "rows per first key": lambda rows: dict(
        Counter(_first_ref(env) for _, env in rows if env is not None)
    ),
    "rows per format version and first key": lambda rows: dict(
        Counter((env[0], _first_ref(env)) for _, env in rows if env is not None)
    ),
    "rows per key count": lambda rows: dict(
        Counter(env[1] if env is not None else None for _, env in rows)
    ),
}
SECTIONS = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mariadb": "MariaDB and MySQL"}


def _doc_queries(section: str) -> list[tuple[str, str]]:
    """(comment, statement) of each query in one database's block of section 8."""
    part = _doc().split("## 8. Finding rows", 1)[1].split("\n## 9.", 1)[0]
    block = part.split(f"\n### {section}\n", 1)[1].split("```sql\n", 1)[1].split("```", 1)[0]
    queries = []
    for chunk in block.strip().split("\n\n"):
        comment, statement = chunk.split("\n", 1)
        assert comment.startswith("-- ") and statement.endswith(";")
        queries.append((comment[3:], statement.rstrip(";")))
    return queries


def _result(rows: list[Any]) -> Any:
    if rows and len(rows[0]) == 1:
        return {row[0] for row in rows}
    if rows and len(rows[0]) == 3:
        return {(row[0], row[1]): row[2] for row in rows}
    return dict(rows)  # type: ignore[arg-type]


def test_doc_sql_queries_find_rows_of_both_versions(
    engine: sa.Engine, metadata: sa.MetaData
) -> None:
    """Each query of docs/format.md section 8, as written, on this database."""
    backend = engine.url.get_backend_name()
    queries = _doc_queries(SECTIONS["mariadb" if backend == "mysql" else backend])
    assert len(queries) >= 6
    users = sa.Table(
        "users",
        metadata,
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("ssn", sa.LargeBinary),
    )
    metadata.create_all(engine)
    rows = _stored_rows()
    with engine.begin() as conn:
        conn.execute(users.insert(), [{"id": name, "ssn": env} for name, env in rows])
    with engine.connect() as conn:
        for comment, statement in queries:
            result = _result(conn.exec_driver_sql(statement).all())
            assert result == EXPECTED[comment](rows), comment
    # The upgrade needs both versions in the table, and the prefix key must be ruled out.
    assert EXPECTED["rows still in format version 1"](rows)
    assert "v2/prefix-key" not in _under_a1b2c3(rows)


def test_doc_sqlite_pitfall_and_base64_prefix() -> None:
    """Without the length byte a1b2c3d4 matches too; the base64 prefixes find both versions."""
    rows = _stored_rows()
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE users (id TEXT, ssn BLOB)")
    db.executemany(
        "INSERT INTO users VALUES (?, ?)",
        [(name, base64.b64encode(env).decode() if env else None) for name, env in rows],
    )
    base64_query = re.search(r"SELECT id FROM users WHERE substr\(ssn, 1, 12\) IN [^;]*", _doc())
    assert base64_query is not None
    found = {row[0] for row in db.execute(base64_query.group(0))}
    assert found == _under_a1b2c3(rows)
    assert {name[:2] for name in found} == {"v1", "v2"}

    db.execute("CREATE TABLE raw (id TEXT, ssn BLOB)")
    db.executemany("INSERT INTO raw VALUES (?, ?)", rows)
    loose = "SELECT id FROM raw WHERE substr(ssn, 4, length('a1b2c3')) = CAST('a1b2c3' AS BLOB)"
    assert {row[0] for row in db.execute(loose)} == _under_a1b2c3(rows) | {"v2/prefix-key"}
