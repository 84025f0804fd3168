"""credstash's library functions over a SecretStore: switch by changing one import.

``import credstash`` becomes ``from sqla_envelope import credstash``: the same
function names and keyword arguments (getSecret, putSecret,
putSecretAutoversion, getAllSecrets, listSecrets, deleteSecrets,
getHighestVersion, paddedInt, expand_wildcard) and exceptions (ItemNotFound,
KmsError, IntegrityError, subclasses of ours), with versions as credstash's
19-digit strings. The store is a table of the database in ``bind=`` (an Engine
or a URL) or ``SQLA_ENVELOPE_SECRETS_URL`` (else ``SQLA_ENVELOPE_URL``); ``table=``
names the SQL table; the keys are the configured Encryptor's
(``sqla_envelope.configure``). The AWS arguments (``region``, ``kms_key``,
``kms_region``, sessions, clients) are accepted and ignored: the keyring decides.
Where credstash's behaviour is a bug, this module does not copy it:

- ``putSecret`` with the default ``version=""`` stores the next version (credstash
  stored "version 0", which its own ``get`` then had to be asked for by name);
- wildcards are globs (credstash compiled them as regular expressions, so ``.``
  matched any character);
- nothing is printed.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from .errors import ConfigurationError, DecryptionError, SecretExists, SecretNotFound
from .secrets import SecretStore
from .secrets.credstash_format import PAD_LENGTH

__all__ = [
    "DEFAULT_TABLE",
    "IntegrityError",
    "ItemNotFound",
    "KmsError",
    "deleteSecrets",
    "expand_wildcard",
    "getAllSecrets",
    "getHighestVersion",
    "getSecret",
    "listSecrets",
    "paddedInt",
    "putSecret",
    "putSecretAutoversion",
]

DEFAULT_TABLE = "credential-store"
_ENGINES: dict[str, sa.Engine] = {}


class ItemNotFound(SecretNotFound):
    """credstash's ItemNotFound: no secret of that name (and version)."""


class KmsError(DecryptionError):
    """credstash's KmsError: the value cannot be decrypted (a wrong context, say)."""


class IntegrityError(SecretExists):
    """credstash's IntegrityError; here, for a version that is already stored."""


def paddedInt(i: int | str) -> str:  # noqa: N802 - credstash's name
    """``i`` zero-padded to 19 characters, as credstash stores versions."""
    return str(i).zfill(PAD_LENGTH)


def expand_wildcard(string: str, secrets: Iterable[str]) -> list[str]:
    """The names among ``secrets`` that match the glob ``string`` (credstash: a regex)."""
    return [name for name in secrets if fnmatch.fnmatchcase(name, string)]


def _store(table: str, bind: Any) -> SecretStore:
    target = (
        bind or os.environ.get("SQLA_ENVELOPE_SECRETS_URL") or os.environ.get("SQLA_ENVELOPE_URL")
    )
    if target is None:
        raise ConfigurationError(
            "name the database: bind= an Engine or URL, or set SQLA_ENVELOPE_SECRETS_URL"
        )
    if isinstance(target, str):
        engine = _ENGINES.get(target)
        if engine is None:
            engine = _ENGINES[target] = sa.create_engine(target)
        target = engine
    return SecretStore(target, table=table)


def _version(version: Any) -> int | None:
    if version in ("", None):
        return None
    text = str(version)
    if not text.isdigit() or int(text) < 1:
        raise ConfigurationError(f"a version is a number (1, 2, ...), not {text!r}")
    return int(text)


def _get(store: SecretStore, name: str, version: int | None, context: Any) -> str | bytes:
    try:
        return store.get(name, version=version, context=context)
    except SecretNotFound as exc:
        raise ItemNotFound(str(exc)) from None
    except DecryptionError as exc:
        raise KmsError(str(exc)).chain(exc) from exc


def putSecret(  # noqa: N802 - credstash's name and keyword arguments
    name: str,
    secret: str | bytes,
    version: Any = "",
    kms_key: str = "alias/credstash",
    region: str | None = None,
    table: str = DEFAULT_TABLE,
    context: Mapping[str, str] | None = None,
    digest: str = "SHA256",
    comment: str = "",
    bind: Any = None,
    **kwargs: Any,
) -> dict[str, str]:
    """Store ``secret`` as ``version`` (default: the next); IntegrityError if it is taken."""
    store = _store(table, bind)
    try:
        stored = store.put(
            name, secret, version=_version(version), context=context, comment=comment or None
        )
    except SecretExists as exc:
        raise IntegrityError(str(exc)) from None
    return {"name": name, "version": paddedInt(stored)}


def putSecretAutoversion(  # noqa: N802 - credstash's name and keyword arguments
    name: str,
    secret: str | bytes,
    kms_key: str = "alias/credstash",
    region: str | None = None,
    table: str = DEFAULT_TABLE,
    context: Mapping[str, str] | None = None,
    digest: str = "SHA256",
    comment: str = "",
    bind: Any = None,
    **kwargs: Any,
) -> dict[str, str]:
    """Store ``secret`` as the next version of ``name``."""
    return putSecret(name, secret, "", table=table, context=context, comment=comment, bind=bind)


def getSecret(  # noqa: N802 - credstash's name and keyword arguments
    name: str,
    version: Any = "",
    region: str | None = None,
    table: str = DEFAULT_TABLE,
    context: Mapping[str, str] | None = None,
    bind: Any = None,
    **kwargs: Any,
) -> str | bytes:
    """The latest version of ``name``, or ``version`` (padded or not)."""
    return _get(_store(table, bind), name, _version(version), context)


def getAllSecrets(  # noqa: N802 - credstash's name and keyword arguments
    version: Any = "",
    region: str | None = None,
    table: str = DEFAULT_TABLE,
    context: Mapping[str, str] | None = None,
    credential: str | None = None,
    bind: Any = None,
    **kwargs: Any,
) -> dict[str, str | bytes]:
    """Every name's latest value (or ``version`` of each), matching the glob ``credential``."""
    store = _store(table, bind)
    wanted = _version(version)
    if wanted is None:
        try:
            return dict(store.get_all(pattern=credential, context=context))
        except DecryptionError as exc:
            raise KmsError(str(exc)).chain(exc) from exc
    names = expand_wildcard(credential or "*", store.keys())
    return {name: _get(store, name, wanted, context) for name in names}


def listSecrets(  # noqa: N802 - credstash's name and keyword arguments
    region: str | None = None, table: str = DEFAULT_TABLE, bind: Any = None, **kwargs: Any
) -> list[dict[str, str]]:
    """Every (name, version) with its comment, as credstash lists them."""
    return [
        {"name": info.name, "version": paddedInt(info.version), "comment": info.comment or ""}
        for info in _store(table, bind).list()
    ]


def deleteSecrets(  # noqa: N802 - credstash's name and keyword arguments
    name: str,
    region: str | None = None,
    table: str = DEFAULT_TABLE,
    bind: Any = None,
    **kwargs: Any,
) -> int:
    """Delete every version of ``name``; how many (credstash printed them instead)."""
    return _store(table, bind).delete(name)


def getHighestVersion(  # noqa: N802 - credstash's name and keyword arguments
    name: str,
    region: str | None = None,
    table: str = DEFAULT_TABLE,
    bind: Any = None,
    **kwargs: Any,
) -> str:
    """The highest version of ``name``, padded; ``"0"`` padded when there is none."""
    return paddedInt(_store(table, bind).highest_version(name))
