"""Moving a credstash DynamoDB table into a SecretStore, every version of every name.

Each item is kept as credstash wrote it (``SecretStore.put_credstash_item``):
its KMS-wrapped data key, ciphertext, HMAC and digest, with its version and
comment. No KMS call is made, so the import needs read access to the table and
nothing else; ``get`` then reads the items as credstash's ``get`` does, with
``kms:Decrypt`` and their context, and ``SecretStore.reencrypt`` converts them
to the store's own format, bound to store, name and version, which credstash's
items never were. A rerun skips what is there. Reading DynamoDB is the one place
this package talks to it; boto3 is imported here only when asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError, EnvelopeError, MalformedEnvelopeError, SecretExists
from .aws import error_code
from .credstash_format import CredstashItem, item_of, normalize_version
from .store import SecretStore

__all__ = ["DEFAULT_KMS_KEY", "ImportReport", "import_credstash", "scan_credstash_table"]

DEFAULT_KMS_KEY = "alias/credstash"  # credstash's -k default


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
    pages = client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
    try:
        for page in pages:
            for item in page["Items"]:
                yield {name: next(iter(value.values())) for name, value in item.items()}
    except Exception as exc:  # botocore's errors: a missing table, denied, unreachable
        message = f"DynamoDB Scan of table {table!r} failed: {error_code(exc)}"
        raise EnvelopeError(message).chain(exc) from exc


def _kept(item: Mapping[str, Any], kms_key_id: str) -> tuple[str, int, CredstashItem, str | None]:
    """(name, version, the item to keep, comment) of a DynamoDB item; errors name it."""
    name = item.get("name")
    if not isinstance(name, str):
        raise MalformedEnvelopeError("a credstash item without a name")
    try:
        version = normalize_version(str(item.get("version")))
        return name, version, item_of(item, kms_key_id), item.get("comment") or None
    except (MalformedEnvelopeError, ConfigurationError) as exc:
        raise type(exc)(f"credstash item {name!r}: {exc}") from None


def import_credstash(
    store: SecretStore,
    items: Iterable[Mapping[str, Any]],
    *,
    kms_key_id: str = DEFAULT_KMS_KEY,
) -> ImportReport:
    """Keep every credstash item in ``store`` as credstash wrote it, under ``kms_key_id``.

    ``kms_key_id`` names the KMS key credstash's data keys are under (credstash's
    ``-k``, ``alias/credstash`` by default): reads ask KMS to decrypt under that
    key only. Every item is checked before any is stored, and one that could
    never be read (not base64 or hex, a digest credstash no longer checks, a
    version that is not a number) stops the import, naming it. A version already
    in the store is left as it is, so an import can be run again.
    """
    kept = [_kept(item, kms_key_id) for item in items]
    report = ImportReport()
    for name, version, item, comment in kept:
        try:
            store.put_credstash_item(name, version, item, comment=comment)
        except SecretExists:
            report.already_there += 1
        else:
            report.imported += 1
        report.names.add(name)
    return report
