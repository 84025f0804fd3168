"""Generate the known-answer vectors of envelope formats v1 and v2 in tests/vectors/.

envelope_v2.json pins what is written today; envelope_v1.json pins what values
written before format v2 hold, which must keep reading (its bytes never change).
Every input (master keys, data keys, payload nonces) is fixed: derived from a label
with SHA-256, so running this again writes the same files byte for byte. The local
wrap (AES-SIV) is deterministic and takes no nonce. The steps are the ones
docs/format.md specifies, done with hashlib and the cryptography library directly;
only the final serialization goes through ``sqla_envelope.envelope`` and the
context through ``sqla_envelope.context.EncryptionContext``. tests/test_vectors.py
recomputes every envelope by hand and decrypts it with the library.

    python tests/vectors/generate.py          # rewrite both files
    python tests/vectors/generate.py --check  # exit 1 if either file is out of date
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sqla_envelope.context import EncryptionContext
from sqla_envelope.envelope import V1, WrappedKey, pack, pack_header, pack_v1

HERE = Path(__file__).parent
OUTPUT = HERE / "envelope_v1.json"
OUTPUT_V2 = HERE / "envelope_v2.json"
LOCAL_WRAP_INFO = b"sqla-envelope/local-wrap/v1"
# NIST SP 800-56C Rev. 2 one-step KDF: counter 1 (4 bytes) || data key || FixedInfo.
KDF_COUNTER = b"\x00\x00\x00\x01"
KDF_FIXED_INFO = b"sqla-envelope v2 key and commitment"
# A KMS key ARN in AWS's documentation style, for the KMS-style v2 vector.
KMS_KEY_ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def fixed_bytes(label: str, size: int, family: str = "v1") -> bytes:
    """``size`` reproducible bytes: SHA-256 of the label and a counter, concatenated."""
    out = b""
    counter = 0
    while len(out) < size:
        text = f"sqla-envelope {family} vectors/{label}/{counter}"
        out += hashlib.sha256(text.encode()).digest()
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


def local_keys(
    key_ids: list[str], data_key: bytes, canonical: bytes
) -> tuple[list[dict[str, str]], list[WrappedKey]]:
    """Each key id's master key (from its label, the same in both files) and its AES-SIV wrap."""
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
    return keys, wrapped_keys


def _record(
    head: dict[str, Any],
    canonical: bytes,
    keying: dict[str, bytes],
    payload_nonce: bytes,
    plaintext: bytes,
    framing: dict[str, bytes],
    envelope: bytes,
) -> dict[str, Any]:
    """One vector's JSON object, its fields in the order the files have always had.

    ``head`` is the name, description, context and keys; ``keying`` the data key
    and what is derived from it; ``framing`` what the payload authenticates
    besides the plaintext. Ciphertext and tag are the envelope's last bytes.
    """
    sealed = envelope[len(envelope) - len(plaintext) - 16 :]
    return {
        **{field: head[field] for field in ("name", "description", "context")},
        "canonical_context": canonical.hex(),
        "keys": head["keys"],
        **{field: value.hex() for field, value in keying.items()},
        "payload_nonce": payload_nonce.hex(),
        "plaintext": plaintext.hex(),
        **{field: value.hex() for field, value in framing.items()},
        "ciphertext": sealed[:-16].hex(),
        "tag": sealed[-16:].hex(),
        "envelope": envelope.hex(),
        "envelope_size": len(envelope),
    }


def build(
    name: str, description: str, pairs: dict[str, str], plaintext: bytes, key_ids: list[str]
) -> dict[str, Any]:
    """One v1 vector: the data key is the AES-GCM key, aad = 01 || canonical context."""
    context = EncryptionContext(pairs)
    canonical = context.canonical
    data_key = fixed_bytes(f"{name}/data-key", 32)
    payload_nonce = fixed_bytes(f"{name}/payload-nonce", 12)
    keys, wrapped_keys = local_keys(key_ids, data_key, canonical)

    aad = bytes((V1,)) + canonical
    sealed = AESGCM(data_key).encrypt(payload_nonce, plaintext, aad)
    envelope = pack_v1(wrapped_keys, payload_nonce, sealed)
    head = {"name": name, "description": description, "context": pairs, "keys": keys}
    keying = {"data_key": data_key}
    return _record(head, canonical, keying, payload_nonce, plaintext, {"aad": aad}, envelope)


def build_v2(
    name: str,
    description: str,
    pairs: dict[str, str],
    plaintext: bytes,
    key_ids: list[str],
    kms_blob: bytes = b"",
) -> dict[str, Any]:
    """One v2 vector, with every intermediate value of the key derivation and the AAD.

    With ``kms_blob``, the one copy is a KmsKeyring direct-mode copy under
    ``key_ids[0]`` (an ARN): 01 || the KMS CiphertextBlob, here made up.
    """
    context = EncryptionContext(pairs)
    canonical = context.canonical
    data_key = fixed_bytes(f"{name}/data-key", 32, "v2")
    payload_nonce = fixed_bytes(f"{name}/payload-nonce", 12, "v2")
    kdf_input = KDF_COUNTER + data_key + KDF_FIXED_INFO
    okm = hashlib.sha512(kdf_input).digest()
    enc_key, commitment = okm[:32], okm[32:]
    keys: list[dict[str, str]]
    if kms_blob:
        wrapped = b"\x01" + kms_blob
        keys = [
            {
                "key_id": key_ids[0],
                "kms_ciphertext_blob": kms_blob.hex(),
                "wrapped_key": wrapped.hex(),
            }
        ]
        wrapped_keys = [WrappedKey(key_ids[0], wrapped)]
    else:
        keys, wrapped_keys = local_keys(key_ids, data_key, canonical)

    header = pack_header(wrapped_keys, commitment)
    aad = header + canonical
    sealed = AESGCM(enc_key).encrypt(payload_nonce, plaintext, aad)
    envelope = pack(wrapped_keys, commitment, payload_nonce, sealed)
    head = {"name": name, "description": description, "context": pairs, "keys": keys}
    keying = {
        "data_key": data_key,
        "kdf_input": kdf_input,
        "okm": okm,
        "enc_key": enc_key,
        "commitment": commitment,
    }
    framing = {"header": header, "aad": aad}
    return _record(head, canonical, keying, payload_nonce, plaintext, framing, envelope)


def v2_cases() -> list[dict[str, Any]]:
    """The v1 cases (the empty plaintext's overhead is 119 bytes in v2), then a KMS-style one."""
    vectors = []
    for name, description, pairs, plaintext, key_ids in CASES:
        description = description.replace("87-byte overhead", "119-byte overhead")
        vectors.append(build_v2(name, description, pairs, plaintext, key_ids))
    vectors.append(
        build_v2(
            "kms-direct",
            "A copy as a KmsKeyring in direct mode stores it: the key ARN as key reference, "
            "01 then the KMS CiphertextBlob as wrapped key (the blob is made up here; a real "
            "one only KMS can decrypt). The data key is what KMS Decrypt would return.",
            {"table": "users", "column": "ssn"},
            b"123-45-6789",
            [KMS_KEY_ARN],
            kms_blob=fixed_bytes("kms-direct/ciphertext-blob", 184, "v2"),
        )
    )
    return vectors


NOTES_V1 = (
    "All byte strings are lowercase hex. Each entry of keys is one LocalKeyring "
    "master key: siv_key = HKDF-SHA256(master_key, salt none, "
    "info 'sqla-envelope/local-wrap/v1', 64 bytes); wrapped_key = "
    "AES-SIV(siv_key, plaintext = data_key, associated data = [canonical_context]) "
    "(RFC 5297, no nonce: the 16-byte synthetic IV, then the 32-byte encrypted "
    "data key). ciphertext || tag = AES-256-GCM(data_key, payload_nonce, plaintext, "
    "aad), aad = 01 || canonical_context. The data keys and payload nonces are "
    "fixed here for reproducibility; real envelopes draw them at random."
)

NOTES_V2 = (
    "All byte strings are lowercase hex. Each entry of keys is one LocalKeyring "
    "master key (the same master keys as envelope_v1.json, so one keyring reads both "
    "files), wrapped exactly as in v1: siv_key = HKDF-SHA256(master_key, salt none, "
    "info 'sqla-envelope/local-wrap/v1', 64 bytes); wrapped_key = AES-SIV(siv_key, "
    "plaintext = data_key, associated data = [canonical_context]). The kms-direct "
    "vector's copy is 01 || kms_ciphertext_blob under a key ARN, as a KmsKeyring in "
    "direct mode stores it (the blob is made up). Key derivation (NIST SP 800-56C Rev. 2, "
    "one-step, H = SHA-512): kdf_input = 00000001 || data_key || 'sqla-envelope v2 key "
    "and commitment' (35 ASCII bytes); okm = SHA-512(kdf_input); enc_key = okm[0:32]; "
    "commitment = okm[32:64]. header = 02 || key count || each copy (ref_len, key_ref, "
    "2-byte wrapped_len, wrapped) || commitment: every byte before the nonce. "
    "ciphertext || tag = AES-256-GCM(enc_key, payload_nonce, plaintext, aad), "
    "aad = header || canonical_context. envelope = header || payload_nonce || "
    "ciphertext || tag. The data keys and payload nonces are fixed here for "
    "reproducibility; real envelopes draw them at random."
)


def _document(version: int, notes: str, vectors: list[dict[str, Any]]) -> str:
    document = {
        "format": f"sqla-envelope envelope format v{version} known-answer vectors",
        "specification": "docs/format.md",
        "generator": "tests/vectors/generate.py",
        "notes": notes,
        "vectors": vectors,
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def render() -> str:
    """envelope_v1.json: read only, its bytes never change."""
    return _document(1, NOTES_V1, [build(*case) for case in CASES])


def render_v2() -> str:
    """envelope_v2.json: the format written today."""
    return _document(2, NOTES_V2, v2_cases())


FILES: list[tuple[Path, Callable[[], str]]] = [(OUTPUT, render), (OUTPUT_V2, render_v2)]


def main(argv: list[str]) -> int:
    stale = []
    for output, make in FILES:
        text = make()
        if "--check" in argv:
            if not output.exists() or output.read_text(encoding="utf-8") != text:
                stale.append(output)
            continue
        output.write_text(text, encoding="utf-8")
        print(f"wrote {output}")
    for output in stale:
        print(f"{output} is out of date: run python {Path(__file__).as_posix()}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
