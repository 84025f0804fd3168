"""Writing a SecretStore out as a credstash DynamoDB table that stock credstash reads.

So nobody is locked in: every version of every secret becomes a credstash item
with a 19-digit version and the comment. A secret in the store's format gets a
fresh 64-byte KMS data key generated with the secret's stored context
(credstash's ``get`` must give that context again), sealed as credstash seals
(credstash_format.py); ``hmac`` is written as DynamoDB binary, as credstash since
1.13.1 does, or as a string for older readers. A credstash item kept verbatim
goes back exactly as it came: credstash's own bytes, under its own KMS key, with
no KMS call. An item already in the table is left alone.
"""

from __future__ import annotations

import base64
from typing import Any

import sqlalchemy as sa

from ..errors import ConfigurationError, EnvelopeError
from ..keyrings.kms import KmsKeyring
from .aws import error_code
from .credstash_format import CredstashItem, padded_version, seal_contents, unpack_item
from .store import CREDSTASH, SecretStore

__all__ = ["export_credstash"]

CREDSTASH_DATA_KEY_SIZE = 64


def _attributes(item: CredstashItem, hmac_as_string: bool) -> dict[str, Any]:
    """The DynamoDB attributes of ``item``'s encrypted fields, as credstash writes them."""
    binary = item.hmac_binary and not hmac_as_string
    attributes: dict[str, Any] = {
        "key": {"S": item.key},
        "contents": {"S": item.contents},
        "hmac": {"B": item.hmac.encode("ascii")} if binary else {"S": item.hmac},
    }
    if item.digest is not None:
        attributes["digest"] = {"S": item.digest}
    return attributes


def _sealed(store: SecretStore, row: Any, kms: KmsKeyring) -> CredstashItem:
    """A native secret sealed as credstash seals, under a new data key from ``kms``."""
    value = store.get(row.name, version=row.version, context=row.context)
    context = row.context or {}
    data_key, blob = kms.generate_blob(context, CREDSTASH_DATA_KEY_SIZE)
    contents, tag = seal_contents(data_key, str(value).encode("utf-8"), "SHA256")
    key = base64.b64encode(blob).decode("ascii")
    return CredstashItem(key, contents, tag, True, "SHA256", kms.key_id)


def export_credstash(
    store: SecretStore,
    table: str,
    kms: KmsKeyring,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    hmac_as_string: bool = False,
    session: Any = None,
) -> tuple[int, int]:
    """Write every version of every secret to the credstash table ``table``.

    Returns (items written, items already there). A binary secret cannot be a
    credstash item (credstash reads UTF-8 text only): ConfigurationError names it
    before anything is written.
    """
    try:
        import boto3
    except ImportError:
        raise ConfigurationError(
            "writing credstash's table needs boto3: pip install 'sqla-envelope[kms]'"
        ) from None
    t = store.table
    query = sa.select(t.c.name, t.c.version, t.c.value_type, t.c.payload, t.c.comment, t.c.context)
    with store.engine.connect() as conn:
        rows = sorted(conn.execute(query), key=lambda row: (row.name, row.version))
    for row in rows:
        if row.value_type == "bytes":
            raise ConfigurationError(
                f"secret {row.name!r} version {row.version} is binary: credstash holds text only"
            )
    client = (session or boto3.session.Session()).client(
        "dynamodb", region_name=region, endpoint_url=endpoint_url
    )
    written = existing = 0
    for row in rows:
        if row.value_type == CREDSTASH:
            item = unpack_item(bytes(row.payload))
        else:
            item = _sealed(store, row, kms)
        attributes = {
            "name": {"S": row.name},
            "version": {"S": padded_version(row.version)},
            **_attributes(item, hmac_as_string),
        }
        if row.comment:
            attributes["comment"] = {"S": row.comment}
        try:
            client.put_item(
                TableName=table, Item=attributes, ConditionExpression="attribute_not_exists(#n)",
                ExpressionAttributeNames={"#n": "name"},
            )  # fmt: skip
        except client.exceptions.ConditionalCheckFailedException:
            existing += 1
        except Exception as exc:  # botocore's errors: a missing table, denied, unreachable
            message = f"DynamoDB PutItem to table {table!r} failed: {error_code(exc)}"
            raise EnvelopeError(message).chain(exc) from exc
        else:
            written += 1
    return written, existing
