"""Key references of tenant keys: which tenant, and which branch key version or own key.

An envelope names the key of each wrapped copy in an ASCII key reference of at
most 255 bytes (envelope.py). A TenantKeyring's references name the tenant, so
that a reader knows whose key to ask without the row's context (``is_primary``
has none) and plain SQL can find a tenant's values::

    bk:<tenant>:<version>         a data key wrapped under the tenant's branch key
    tenant:<tenant>:<key ref>     a data key of the tenant's own keyring (factory=)

``<tenant>`` is percent-encoded UTF-8 (RFC 3986), so it holds no ``:`` and stays
ASCII; tenants written only with letters, digits, ``.``, ``_``, ``~`` and ``-``
appear as they are (``bk:acme:3``, ``bk:42:1``).
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import quote, unquote

from ..errors import ConfigurationError

__all__ = [
    "BRANCH_PREFIX",
    "OWN_KEY_PREFIX",
    "BranchRef",
    "OwnKeyRef",
    "branch_ref",
    "own_key_ref",
    "parse_branch_ref",
    "parse_own_key_ref",
]

BRANCH_PREFIX = "bk:"
OWN_KEY_PREFIX = "tenant:"
_MAX_REF = 255


class BranchRef(NamedTuple):
    tenant: str
    version: int


class OwnKeyRef(NamedTuple):
    tenant: str
    key_ref: str


def _quoted(tenant: str) -> str:
    return quote(tenant, safe="", encoding="utf-8", errors="strict")


def _checked(ref: str, tenant: str) -> str:
    if len(ref) > _MAX_REF:
        raise ConfigurationError(
            f"tenant {tenant[:40]!r}... is too long for a key reference: {len(ref)} bytes "
            f"once percent-encoded, at most {_MAX_REF}"
        )
    return ref


def branch_ref(tenant: str, version: int) -> str:
    """``bk:<tenant>:<version>``; ConfigurationError when it exceeds 255 bytes."""
    return _checked(f"{BRANCH_PREFIX}{_quoted(tenant)}:{version}", tenant)


def own_key_ref(tenant: str, key_ref: str) -> str:
    """``tenant:<tenant>:<key ref>``; ConfigurationError when it exceeds 255 bytes."""
    return _checked(f"{OWN_KEY_PREFIX}{_quoted(tenant)}:{key_ref}", tenant)


def parse_branch_ref(key_ref: str) -> BranchRef | None:
    """The tenant and version a ``bk:`` reference names; None for any other reference."""
    if not key_ref.startswith(BRANCH_PREFIX):
        return None
    quoted, _, version = key_ref[len(BRANCH_PREFIX) :].rpartition(":")
    if not quoted or not version.isdigit() or not version.isascii():
        return None
    tenant = _unquoted(quoted)
    return BranchRef(tenant, int(version)) if tenant is not None else None


def parse_own_key_ref(key_ref: str) -> OwnKeyRef | None:
    """The tenant and inner key reference of a ``tenant:`` reference; None for others."""
    if not key_ref.startswith(OWN_KEY_PREFIX):
        return None
    quoted, _, inner = key_ref[len(OWN_KEY_PREFIX) :].partition(":")
    if not quoted or not inner:
        return None
    tenant = _unquoted(quoted)
    return OwnKeyRef(tenant, inner) if tenant is not None else None


def _unquoted(quoted: str) -> str | None:
    try:
        return unquote(quoted, errors="strict")
    except UnicodeDecodeError:  # not percent-encoded UTF-8: not a reference of ours
        return None
