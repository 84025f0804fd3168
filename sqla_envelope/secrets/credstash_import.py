"""Moving a credstash DynamoDB table into a SecretStore, every version of every name.

Each item's 64-byte data key is unwrapped by KMS (under the caller's context,
as credstash's ``get`` would), its HMAC checked and its value decrypted
(credstash_format.py), then stored again in our format under the store's own
keyring, with its version and comment: bound to store, name and version from
then on, which credstash's items never were. A rerun skips what is there.
Reading DynamoDB is the one place this package talks to it; boto3 is imported
here only when asked.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError, DecryptionError, SecretExists
from ..keyrings.kms import KmsKeyring
from .credstash_format import normalize_version, open_contents
from .store import SecretStore

__all__ = ["ImportReport", "import_credstash", "scan_credstash_table"]


@dataclass
class ImportReport:
    """What an import did: versions imported, versions already there; names, never values."""

    imported: int = 0
    already_there: int = 0
    names: set[str] = field(default_factory=set)


def scan_credstash_table(
    table: str, *, region: str | None = None, endpoint_url: str | None = None, session: Any = None
) -> Iterator[dict[str, Any]]:
    """Every item of a credstash table, as plain values (S as str, B as bytes)."""
    try:
        import boto3
    except ImportError:
        raise ConfigurationError(
            "reading credstash's table needs boto3: pip install 'sqla-envelope[kms]'"
        ) from None
    client = (session or boto3.session.Session()).client(
        "dynamodb", region_name=region, endpoint_url=endpoint_url
    )
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for item in page["Items"]:
            yield {name: next(iter(value.values())) for name, value in item.items()}


def _read_item(
    item: Mapping[str, Any], kms: KmsKeyring, context: Mapping[str, str] | None
) -> str | type[Exception]:
    """The value of a credstash item, or the type of the error that stopped it."""
    try:
        data_key = kms.decrypt_blob(base64.b64decode(item["key"]), context or {})
        plaintext = open_contents(data_key, item["contents"], item["hmac"], item.get("digest"))
        return plaintext.decode("utf-8")  # credstash stores UTF-8 text only
    except (DecryptionError, UnicodeDecodeError, ValueError) as exc:
        return type(exc)


def import_credstash(
    store: SecretStore,
    items: Iterable[Mapping[str, Any]],
    credstash_kms: KmsKeyring,
    *,
    context: Mapping[str, str] | None = None,
) -> ImportReport:
    """Store every credstash item in ``store``, decrypted with ``credstash_kms`` and ``context``.

    A version already in the store is left as it is (so an import is run again
    after a failure). The first item that cannot be read stops the import,
    naming it: a wrong context or key must not import half a table silently.
    """
    report = ImportReport()
    for item in items:
        name, version = item["name"], normalize_version(item["version"])
        value = _read_item(item, credstash_kms, context)
        if not isinstance(value, str):
            # Raised here, outside the except that caught it: a UnicodeDecodeError
            # holds the decrypted bytes, and would ride along as __context__.
            raise DecryptionError(
                f"credstash item {name!r} version {version} cannot be read: give the context "
                f"it was stored with ({value.__name__})"
            )
        try:
            store.put(name, value, version=version, context=context, comment=item.get("comment"))
        except SecretExists:
            report.already_there += 1
        else:
            report.imported += 1
        report.names.add(name)
    return report
