"""Generate tests/vectors/envelope_v1.json, the known-answer vectors of envelope format v1.

Every input (master keys, data keys, payload nonces) is fixed: derived from a label
with SHA-256, so running this again writes the same file byte for byte. The local
wrap (AES-SIV) is deterministic and takes no nonce. The steps are
the ones docs/format.md specifies, done with the cryptography library directly;
only the final serialization goes through ``sqla_envelope.envelope.pack`` and the
context through ``sqla_envelope.context.EncryptionContext``. tests/test_vectors.py
recomputes every envelope by hand and decrypts it with the library.

    python tests/vectors/generate.py          # rewrite the file
    python tests/vectors/generate.py --check  # exit 1 if the file is out of date
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sqla_envelope.context import EncryptionContext
from sqla_envelope.envelope import V1, WrappedKey, pack_v1

OUTPUT = Path(__file__).with_name("envelope_v1.json")
LOCAL_WRAP_INFO = b"sqla-envelope/local-wrap/v1"


def fixed_bytes(label: str, size: int) -> bytes:
    """``size`` reproducible bytes: SHA-256 of the label and a counter, concatenated."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"sqla-envelope v1 vectors/{label}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


def siv_key(master_key: bytes) -> bytes:
    """HKDF-SHA256(master key, salt none, info "sqla-envelope/local-wrap/v1"), 64 bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=LOCAL_WRAP_INFO).derive(
        master_key
    )


# name, description, context, plaintext, key ids (each one LocalKeyring master key)
CASES: list[tuple[str, str, dict[str, str], bytes, list[str]]] = [
    (
        "short-ascii",
        "A short ASCII string under the default column context and a 6-hex-digit key id.",
        {"table": "users", "column": "ssn"},
        b"123-45-6789",
        ["a1b2c3"],
    ),
    (
        "empty-plaintext",
        "An empty plaintext: the ciphertext is empty and the envelope is the 87-byte overhead.",
        {"table": "users", "column": "nickname"},
        b"",
        ["a1b2c3"],
    ),
    (
        "utf8-multibyte",
        "A UTF-8 string with 2-, 3- and 4-byte characters (the String codec's encoding).",
        {"table": "users", "column": "display_name"},
        "Zoë Ünal — 東京 🔑".encode(),
        ["a1b2c3"],
    ),
    (
        "binary-300",
        "A 300-byte binary value (LargeBinary): the 2-byte length never limits the payload.",
        {"table": "documents", "column": "scan"},
        fixed_bytes("binary-300/plaintext", 300),
        ["5f0e7d"],
    ),
    (
        "empty-context",
        "The empty context {}: canonical form is the pair count 0000 alone.",
        {},
        b"no context",
        ["a1b2c3"],
    ),
    (
        "context-sort-order",
        "Four pairs given out of order; canonical form sorts keys by UTF-8 bytes "
        "(uppercase before lowercase).",
        {"tenant": "acme", "table": "orders", "Zone": "eu-west-1", "column": "note"},
        b"leave at the back door",
        ["prod-2025"],
    ),
    (
        "context-utf8-sort",
        "Non-ASCII context keys: UTF-8 byte order puts U+FF71 before U+1F511, where "
        "UTF-16 code-unit order (Java, JavaScript) would put it after.",
        {"\U0001f511": "key", "\uff71": "katakana a", "é": "e acute"},
        b"sorted by UTF-8 bytes",
        ["a1b2c3"],
    ),
    (
        "two-wrapped-keys",
        "One data key wrapped under two local master keys (as during a migration between "
        "keyrings); either key alone decrypts.",
        {"table": "users", "column": "ssn"},
        b"987-65-4321",
        ["k2024", "k2025"],
    ),
]


def build(
    name: str, description: str, pairs: dict[str, str], plaintext: bytes, key_ids: list[str]
) -> dict[str, Any]:
    context = EncryptionContext(pairs)
    canonical = context.canonical
    data_key = fixed_bytes(f"{name}/data-key", 32)
    payload_nonce = fixed_bytes(f"{name}/payload-nonce", 12)

    keys = []
    wrapped_keys = []
    for key_id in key_ids:
        master_key = fixed_bytes(f"master-key/{key_id}", 32)
        derived = siv_key(master_key)
        wrapped = AESSIV(derived).encrypt(data_key, [canonical])
        keys.append(
            {
                "key_id": key_id,
                "master_key": master_key.hex(),
                "siv_key": derived.hex(),
                "wrapped_key": wrapped.hex(),
            }
        )
        wrapped_keys.append(WrappedKey(key_id, wrapped))

    aad = bytes((V1,)) + canonical
    sealed = AESGCM(data_key).encrypt(payload_nonce, plaintext, aad)
    envelope = pack_v1(wrapped_keys, payload_nonce, sealed)
    return {
        "name": name,
        "description": description,
        "context": pairs,
        "canonical_context": canonical.hex(),
        "keys": keys,
        "data_key": data_key.hex(),
        "payload_nonce": payload_nonce.hex(),
        "plaintext": plaintext.hex(),
        "aad": aad.hex(),
        "ciphertext": sealed[:-16].hex(),
        "tag": sealed[-16:].hex(),
        "envelope": envelope.hex(),
        "envelope_size": len(envelope),
    }


def render() -> str:
    document = {
        "format": "sqla-envelope envelope format v1 known-answer vectors",
        "specification": "docs/format.md",
        "generator": "tests/vectors/generate.py",
        "notes": (
            "All byte strings are lowercase hex. Each entry of keys is one LocalKeyring "
            "master key: siv_key = HKDF-SHA256(master_key, salt none, "
            "info 'sqla-envelope/local-wrap/v1', 64 bytes); wrapped_key = "
            "AES-SIV(siv_key, plaintext = data_key, associated data = [canonical_context]) "
            "(RFC 5297, no nonce: the 16-byte synthetic IV, then the 32-byte encrypted "
            "data key). ciphertext || tag = AES-256-GCM(data_key, payload_nonce, plaintext, "
            "aad), aad = 01 || canonical_context. The data keys and payload nonces are "
            "fixed here for reproducibility; real envelopes draw them at random."
        ),
        "vectors": [build(*case) for case in CASES],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is out of date: run python {Path(__file__).as_posix()}")
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {len(CASES)} vectors to {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
