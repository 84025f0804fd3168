"""The branch key store protocol: what TenantKeyring needs from wherever branch keys live.

The keyring knows no SQL: sql_store.py implements this over a table of the
application's database. Versions are integers from 1; a tenant's active version
is its highest. A version whose ``wrapped`` is None was destroyed by a shred; a
shred also adds a version above the others with nothing in it (the tombstone), so
that the highest version of a shredded tenant is destroyed too and no writer can
slip a live one in above it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import NamedTuple, Protocol

from ..envelope import WrappedKey

__all__ = ["DEFAULT_TABLE", "BranchKeyRecord", "BranchKeyStore", "Exposure"]

DEFAULT_TABLE = "sqla_envelope_branch_keys"


class BranchKeyRecord(NamedTuple):
    """One version of a tenant's branch key as stored: wrapped by the master, or destroyed."""

    tenant: str
    version: int
    wrapped: tuple[WrappedKey, ...] | None
    created_at: dt.datetime | None = None
    destroyed_at: dt.datetime | None = None

    @property
    def destroyed(self) -> bool:
        return self.wrapped is None


class Exposure(NamedTuple):
    """What a tenant's branch keys protect in one table: rows, and the encrypted columns."""

    table: str
    columns: tuple[str, ...]
    rows: int


class BranchKeyStore(Protocol):
    """Where branch keys are kept. Every failure of the store raises KeyringError."""

    def active(self, tenant: str) -> BranchKeyRecord | None:
        """The tenant's highest version, or None when the tenant has none."""
        ...

    def version(self, tenant: str, version: int) -> BranchKeyRecord | None:
        """One version, or None when it does not exist."""
        ...

    def insert(self, record: BranchKeyRecord) -> bool:
        """Store a new version; False, changing nothing, when that version exists already."""
        ...

    def destroy(self, tenant: str) -> tuple[int, ...]:
        """Destroy every version and add the tombstone; the versions that were live."""
        ...

    def replace(
        self, tenant: str, version: int, old: tuple[WrappedKey, ...], new: tuple[WrappedKey, ...]
    ) -> bool:
        """Swap a version's wrapped copies if they are still ``old``; False otherwise."""
        ...

    def records(self, tenant: str | None = None) -> Iterator[BranchKeyRecord]:
        """Every version of ``tenant`` (of all tenants: None), by tenant, then version."""
        ...
