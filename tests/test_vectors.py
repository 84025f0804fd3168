"""Known-answer vectors of envelope format v1 (tests/vectors/envelope_v1.json).

Each envelope is rebuilt here from the primitives alone, byte by byte as
docs/format.md specifies, so any change to the stored format fails these tests
instead of slipping into production data. The library must also decrypt every
stored vector and reproduce its intermediate values.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import math
import re
import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sqla_envelope import Encryptor, LocalKeyring
from sqla_envelope.aead import LOCAL_WRAPPED_SIZE, LocalKeyWrapper
from sqla_envelope.context import EncryptionContext
from sqla_envelope.envelope import envelope_size, unpack

ROOT = Path(__file__).resolve().parent.parent
VECTORS_FILE = ROOT / "tests" / "vectors" / "envelope_v1.json"
FORMAT_DOC = ROOT / "docs" / "format.md"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))["vectors"]

INFO = b"sqla-envelope/local-wrap/v1"


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


def envelope_by_hand(vector: dict[str, Any]) -> bytes:
    canonical = canonical_by_hand(vector["context"])
    data_key = h(vector["data_key"])
    out = struct.pack(">BB", 1, len(vector["keys"]))
    for key in vector["keys"]:
        siv_key = hkdf_cryptography(h(key["master_key"]))
        wrapped = AESSIV(siv_key).encrypt(data_key, [canonical])
        ref = key["key_id"].encode("ascii")
        out += struct.pack(">B", len(ref)) + ref + struct.pack(">H", len(wrapped)) + wrapped
    nonce = h(vector["payload_nonce"])
    aad = b"\x01" + canonical
    return out + nonce + AESGCM(data_key).encrypt(nonce, h(vector["plaintext"]), aad)


def size_by_formula(vector: dict[str, Any]) -> int:
    """docs/format.md: 2 + sum(1 + len(key_ref) + 2 + len(wrapped)) + 12 + len(plaintext) + 16."""
    header = 2 + sum(
        1 + len(key["key_id"]) + 2 + len(h(key["wrapped_key"])) for key in vector["keys"]
    )
    return header + 12 + len(h(vector["plaintext"])) + 16


by_name = pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])


def test_vector_set_covers_the_documented_cases() -> None:
    names = {v["name"] for v in VECTORS}
    assert names >= {
        "short-ascii",
        "empty-plaintext",
        "utf8-multibyte",
        "binary-300",
        "empty-context",
        "context-sort-order",
        "context-utf8-sort",
        "two-wrapped-keys",
    }
    assert any(len(v["keys"]) == 2 for v in VECTORS)
    assert any(v["plaintext"] == "" for v in VECTORS)
    assert any(v["canonical_context"] == "0000" for v in VECTORS)


def test_vectors_file_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location(
        "generate_vectors", VECTORS_FILE.parent / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert VECTORS_FILE.read_text(encoding="utf-8") == generator.render()


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
    assert [k.key_ref for k in parsed.wrapped_keys] == [k["key_id"] for k in vector["keys"]]
    assert [k.blob.hex() for k in parsed.wrapped_keys] == [k["wrapped_key"] for k in vector["keys"]]
    assert parsed.nonce.hex() == vector["payload_nonce"]
    assert parsed.sealed.hex() == vector["ciphertext"] + vector["tag"]


@by_name
def test_canonical_context(vector: dict[str, Any]) -> None:
    assert EncryptionContext(vector["context"]).canonical.hex() == vector["canonical_context"]
    assert canonical_by_hand(vector["context"]).hex() == vector["canonical_context"]


@by_name
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


# -- docs/format.md states the same numbers ---------------------------------------------


def _doc() -> str:
    return FORMAT_DOC.read_text(encoding="utf-8")


def test_doc_states_the_size_formulas() -> None:
    text = _doc()
    assert "2 + Σ(1 + len(key_ref) + 2 + len(wrapped)) + 12 + len(encoded plaintext) + 16" in text
    assert "81 + len(key_id) + len(encoded plaintext)" in text


def test_doc_sizing_table() -> None:
    """Every row of the column-sizing table: binary = 89 + n, base64 = 4 * ceil(binary / 3).

    89 bytes: the overhead with one local key under an 8-character key id, the length
    ``LocalKeyring.generate()`` uses.
    """
    table = _doc().split("<!-- sizing-table -->", 2)[1]
    rows = re.findall(r"^\|\s*([\d,]+)\s*\|\s*([\d,]+)\s*\|\s*([\d,]+)\s*\|", table, re.M)
    assert len(rows) >= 5
    for plain, binary, text in rows:
        n, stored, encoded = (int(x.replace(",", "")) for x in (plain, binary, text))
        assert stored == envelope_size(n, [(8, LOCAL_WRAPPED_SIZE)], version=1) == 89 + n
        assert encoded == 4 * math.ceil(stored / 3)


def test_doc_annotated_envelope() -> None:
    """The byte-by-byte table of section 1 is the short-ascii vector, field by field."""
    table = _doc().split("<!-- annotated-envelope -->", 2)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*`([0-9a-f ]+)`\s*\|", table, re.M)
    assert len(rows) >= 8
    envelope = h(next(v for v in VECTORS if v["name"] == "short-ascii")["envelope"])
    offset = 0
    for start, size, hex_text in rows:
        field = h(hex_text.replace(" ", ""))
        assert (int(start), int(size)) == (offset, len(field))
        assert envelope[offset : offset + len(field)] == field
        offset += len(field)
    assert offset == len(envelope)
    assert f"{len(envelope)} bytes in all" in _doc()


def test_doc_worked_context_example() -> None:
    block = _doc().split("<!-- canonical-context-example -->", 2)[1].split("```")[1]
    hex_digits = "".join(re.findall(r"\b[0-9a-f]{2}\b", block.split("\n", 1)[1]))
    expected = EncryptionContext({"table": "users", "column": "ssn"}).canonical
    assert hex_digits == expected.hex()


def test_doc_sqlite_queries_find_rows_by_key() -> None:
    """The SQLite queries of docs/format.md section 8, run on the vectors' envelopes."""
    rows = [(v["name"], h(v["envelope"])) for v in VECTORS]
    # A key id that starts with the one searched for: the length byte must rule it out.
    prefix_ring = LocalKeyring({"a1b2c3d4": b"\x07" * 32})
    rows.append(("prefix-key", Encryptor(prefix_ring).encrypt(b"x", {"table": "users"})))
    rows.append(("null", None))
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE users (id TEXT, ssn BLOB, ssn_text TEXT)")
    db.executemany(
        "INSERT INTO users VALUES (?, ?, ?)",
        [(name, env, base64.b64encode(env).decode() if env else None) for name, env in rows],
    )

    def ids(sql: str) -> set[str]:
        return {row[0] for row in db.execute(sql)}

    under_a1b2c3 = {v["name"] for v in VECTORS if v["keys"][0]["key_id"] == "a1b2c3"}
    assert len(under_a1b2c3) >= 4
    assert ids("SELECT id FROM users WHERE substr(ssn, 1, 1) IN (x'01', x'02')") == {
        name for name, env in rows if env is not None
    }
    assert ids("SELECT id FROM users WHERE substr(ssn, 2, 1) = x'01'") == {
        name for name, env in rows if env is not None and env[1] == 1
    }
    assert (
        ids(
            "SELECT id FROM users WHERE substr(ssn, 3, 1) = x'06' "
            "AND substr(ssn, 4, length('a1b2c3')) = CAST('a1b2c3' AS BLOB)"
        )
        == under_a1b2c3
    )
    # The pitfall the doc warns about: without the length byte, a1b2c3d4 matches too.
    assert "prefix-key" in ids(
        "SELECT id FROM users WHERE substr(ssn, 4, length('a1b2c3')) = CAST('a1b2c3' AS BLOB)"
    )
    counts = dict(
        db.execute(
            "SELECT CAST(substr(ssn, 4, unicode(substr(ssn, 3, 1))) AS TEXT) AS key_id, count(*) "
            "FROM users WHERE substr(ssn, 1, 1) IN (x'01', x'02') GROUP BY key_id"
        ).fetchall()
    )
    assert counts["a1b2c3"] == len(under_a1b2c3)
    assert counts["a1b2c3d4"] == 1
    assert ids("SELECT id FROM users WHERE substr(ssn_text, 1, 12) = 'AQEGYTFiMmMz'") == (
        under_a1b2c3
    )
