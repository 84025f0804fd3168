"""Writing a SecretStore out as a credstash DynamoDB table that stock credstash reads.

So nobody is locked in: every version of every secret becomes a credstash item,
under a fresh 64-byte KMS data key generated with the secret's stored context
(credstash's ``get`` must give that context again), sealed as credstash seals
(credstash_format.py), with a 19-digit version and the comment. ``hmac`` is
written as DynamoDB binary, as credstash since 1.13.1 does, or as a string for
older readers. An item already in the table is left alone.
"""

from __future__ import annotations

import base64
from typing import Any

from ..errors import ConfigurationError
from ..keyrings.kms import KmsKeyring
from .credstash_format import padded_version, seal_contents
from .store import SecretStore

__all__ = ["export_credstash"]

CREDSTASH_DATA_KEY_SIZE = 64


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
    infos = store.list()
    client = (session or boto3.session.Session()).client(
        "dynamodb", region_name=region, endpoint_url=endpoint_url
    )
    written = existing = 0
    for info in infos:
        value = store.get(info.name, version=info.version, context=info.context)
        if isinstance(value, bytes):
            raise ConfigurationError(
                f"secret {info.name!r} version {info.version} is binary: credstash holds text only"
            )
        context = info.context or {}
        data_key, blob = kms.generate_blob(context, CREDSTASH_DATA_KEY_SIZE)
        contents, tag = seal_contents(data_key, value.encode("utf-8"), "SHA256")
        item: dict[str, Any] = {
            "name": {"S": info.name},
            "version": {"S": padded_version(info.version)},
            "key": {"S": base64.b64encode(blob).decode("ascii")},
            "contents": {"S": contents},
            "hmac": {"S": tag} if hmac_as_string else {"B": tag.encode("ascii")},
            "digest": {"S": "SHA256"},
        }
        if info.comment:
            item["comment"] = {"S": info.comment}
        try:
            client.put_item(
                TableName=table, Item=item, ConditionExpression="attribute_not_exists(#n)",
                ExpressionAttributeNames={"#n": "name"},
            )  # fmt: skip
        except client.exceptions.ConditionalCheckFailedException:
            existing += 1
        else:
            written += 1
    return written, existing
