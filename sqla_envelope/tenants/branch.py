"""A tenant's branch key in memory: wraps data keys bound to tenant, version and context.

Each value keeps its own random data key (so rotation and key commitment work
as for every keyring); the data key is wrapped with AES-SIV (RFC 5297) under a
wrapping key derived once per branch key version with HKDF-SHA256 (RFC 5869,
info ``sqla-envelope/branch-wrap/v1``). The associated data follows the AWS
hierarchical keyring's: a label, the branch key id (here the tenant), its
version, then the value's canonical encryption context. docs/format.md has the
byte layout, the measurements behind the choice and known-answer vectors.
"""

from __future__ import annotations

from ..aead import DATA_KEY_SIZE, LocalKeyWrapper
from ..context import EncryptionContext
from ..envelope import WrappedKey
from ..errors import DecryptionError, TenantShreddedError
from .refs import branch_ref

__all__ = [
    "AAD_LABEL",
    "BRANCH_KEY_PURPOSE",
    "WRAP_INFO",
    "BranchKey",
    "ShreddedKey",
    "aad_prefix",
    "master_context",
]

AAD_LABEL = b"sqla-envelope-hierarchy"
WRAP_INFO = b"sqla-envelope/branch-wrap/v1"
BRANCH_KEY_PURPOSE = "sqla-envelope branch key"
MAX_VERSION = 0xFFFFFFFF


def aad_prefix(tenant: str, version: int) -> bytes:
    """``label || u16 len(tenant) || tenant (UTF-8) || u32 version``, before the context."""
    name = tenant.encode("utf-8")
    return AAD_LABEL + len(name).to_bytes(2, "big") + name + version.to_bytes(4, "big")


def master_context(field: str, tenant: str, version: int) -> EncryptionContext:
    """The context a branch key is wrapped under by the master keyring.

    It names the tenant under the same key as the values' contexts (``field``),
    so a KMS key policy or CloudTrail sees whose branch key a request is for.
    """
    return EncryptionContext(
        {"purpose": BRANCH_KEY_PURPOSE, field: tenant, "branch_key_version": str(version)}
    )


class BranchKey:
    """One version of a tenant's branch key, ready to wrap and unwrap data keys."""

    __slots__ = ("_prefix", "_wrapper", "key_ref", "tenant", "version")

    def __init__(self, tenant: str, version: int, key: bytes) -> None:
        if not 1 <= version <= MAX_VERSION:
            raise ValueError("a branch key version is 1 to 2**32 - 1")
        self.tenant = tenant
        self.version = version
        self.key_ref = branch_ref(tenant, version)
        self._prefix = aad_prefix(tenant, version)
        self._wrapper = LocalKeyWrapper(key, WRAP_INFO)

    def __repr__(self) -> str:
        # protect key: the tenant and version only
        return f"BranchKey(tenant={self.tenant!r}, version={self.version})"

    def wrap(self, data_key: bytes, context: EncryptionContext) -> WrappedKey:
        if len(data_key) != DATA_KEY_SIZE:
            raise ValueError(f"a data key is {DATA_KEY_SIZE} bytes")
        return WrappedKey(
            self.key_ref, self._wrapper.wrap(data_key, self._prefix + context.canonical)
        )

    def unwrap(self, blob: bytes, context: EncryptionContext) -> bytes:
        try:
            return self._wrapper.unwrap(blob, self._prefix + context.canonical)
        except DecryptionError:
            raise DecryptionError(
                f"data key did not unwrap under tenant {self.tenant!r}'s branch key version "
                f"{self.version}: the value was altered or is read under another context"
            ) from None


class ShreddedKey:
    """What a shredded branch key version is cached as: every use raises."""

    __slots__ = ("tenant", "version")

    def __init__(self, tenant: str, version: int) -> None:
        self.tenant = tenant
        self.version = version

    def __repr__(self) -> str:
        return f"ShreddedKey(tenant={self.tenant!r}, version={self.version})"

    def error(self) -> TenantShreddedError:
        return TenantShreddedError(
            f"tenant {self.tenant!r} was crypto-shredded: its branch keys are destroyed, "
            "so its values can never be decrypted and nothing new is written for it",
            tenant=self.tenant,
        )

    def wrap(self, data_key: bytes, context: EncryptionContext) -> WrappedKey:
        raise self.error()

    def unwrap(self, blob: bytes, context: EncryptionContext) -> bytes:
        raise self.error()
