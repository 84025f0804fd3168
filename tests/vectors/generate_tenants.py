"""Generate the known-answer vectors of TenantKeyring's branch key wrapping (tenant_branch.json).

Every input is fixed (SHA-256 of a label), so running this again writes the same
file byte for byte. The steps are those of docs/format.md ("Tenant keys"), done
with hashlib and the cryptography library directly; only the envelope's
serialization goes through ``sqla_envelope.envelope`` and the context through
``EncryptionContext``. tests/test_tenant_vectors.py recomputes each vector by hand
and decrypts it with the library, its branch key read from a real branch key table.

    python tests/vectors/generate_tenants.py          # rewrite the file
    python tests/vectors/generate_tenants.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sqla_envelope.context import EncryptionContext
from sqla_envelope.envelope import WrappedKey, pack_header

OUTPUT = Path(__file__).parent / "tenant_branch.json"
BRANCH_WRAP_INFO = b"sqla-envelope/branch-wrap/v1"
LOCAL_WRAP_INFO = b"sqla-envelope/local-wrap/v1"
AAD_LABEL = b"sqla-envelope-hierarchy"
KDF_FIXED_INFO = b"sqla-envelope v2 key and commitment"
MASTER_KEY_ID = "master-2026"
CASES = [
    ("plain-tenant", "acme", 1, {"table": "patients", "column": "ssn"}, b"123-45-6789"),
    ("second-version", "acme", 2, {"table": "patients", "column": "ssn"}, b"987-65-4321"),
    ("encoded-tenant", "Z\u00fcrich AG:7", 1, {"table": "notes", "column": "body"}, b""),
    ("numeric-tenant", "42", 3, {"table": "t", "column": "c", "region": "eu"}, b"\x00\xff" * 20),
]


def fixed(label: str, size: int) -> bytes:
    out, counter = b"", 0
    while len(out) < size:
        out += hashlib.sha256(f"sqla-envelope tenant vectors/{label}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


def siv(key: bytes, info: bytes) -> AESSIV:
    return AESSIV(HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=info).derive(key))


def vector(name: str, tenant: str, version: int, base: dict[str, str], plaintext: bytes) -> Any:
    master_key = fixed("master", 32)
    branch_key = fixed(f"{tenant}/{version}/branch", 32)
    data_key = fixed(f"{name}/data", 32)
    nonce = fixed(f"{name}/nonce", 12)
    context = EncryptionContext({**base, "tenant_id": tenant})
    master_context = EncryptionContext(
        {
            "purpose": "sqla-envelope branch key",
            "tenant_id": tenant,
            "branch_key_version": str(version),
        }
    )
    wrapped_branch = siv(master_key, LOCAL_WRAP_INFO).encrypt(
        branch_key, [master_context.canonical]
    )
    name_bytes = tenant.encode()
    aad = AAD_LABEL + len(name_bytes).to_bytes(2, "big") + name_bytes + version.to_bytes(4, "big")
    aad += context.canonical
    wrapped = siv(branch_key, BRANCH_WRAP_INFO).encrypt(data_key, [aad])
    key_ref = f"bk:{quote(tenant, safe='')}:{version}"
    okm = hashlib.sha512(b"\x00\x00\x00\x01" + data_key + KDF_FIXED_INFO).digest()
    header = pack_header([WrappedKey(key_ref, wrapped)], okm[32:])
    sealed = AESGCM(okm[:32]).encrypt(nonce, plaintext, header + context.canonical)
    return {
        "name": name,
        "tenant": tenant,
        "version": version,
        "context": dict(context),
        "plaintext": plaintext.hex(),
        "master_key_id": MASTER_KEY_ID,
        "master_key": master_key.hex(),
        "master_context_canonical": master_context.canonical.hex(),
        "branch_key": branch_key.hex(),
        "wrapped_branch_key": wrapped_branch.hex(),
        "data_key": data_key.hex(),
        "key_ref": key_ref,
        "wrap_aad": aad.hex(),
        "wrapped_data_key": wrapped.hex(),
        "payload_nonce": nonce.hex(),
        "envelope": (header + nonce + sealed).hex(),
    }


def document() -> str:
    doc = {
        "format": "sqla-envelope TenantKeyring branch key known-answer vectors",
        "specification": "docs/format.md, section Tenant keys",
        "generator": "tests/vectors/generate_tenants.py",
        "notes": (
            "Lowercase hex. The branch key is stored wrapped by a LocalKeyring master "
            "(AES-SIV under HKDF-SHA256(master_key, info 'sqla-envelope/local-wrap/v1'), "
            "associated data: the canonical master context). A value's data key is wrapped "
            "with AES-SIV under HKDF-SHA256(branch_key, salt none, info "
            "'sqla-envelope/branch-wrap/v1', 64 bytes), associated data wrap_aad = "
            "'sqla-envelope-hierarchy' || u16 len(tenant) || tenant UTF-8 || u32 version || "
            "canonical context. The envelope is format v2 with one copy under key_ref."
        ),
        "vectors": [vector(*case) for case in CASES],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    text = document()
    if "--check" in sys.argv:
        sys.exit(0 if OUTPUT.read_text(encoding="utf-8") == text else 1)
    OUTPUT.write_text(text, encoding="utf-8")
