"""Create a KMS key and its alias if they are missing, and write a least-privilege key policy.

For ``sqla-envelope kms setup``: a team starting with the credential store or an
encrypted column needs a key, an alias the application names, and a key policy
that gives readers Decrypt and writers GenerateDataKey, each only for the
encryption contexts they should use. Like kms.py, it imports boto3 lazily.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import ConfigurationError, KeyringError

__all__ = ["ensure_key", "key_policy"]


def ensure_key(
    alias: str, *, region: str | None = None, endpoint_url: str | None = None, session: Any = None
) -> tuple[str, bool]:
    """(key ARN, whether it was created) of the symmetric key behind ``alias``."""
    if not alias.startswith("alias/") or alias == "alias/" or alias.startswith("alias/aws/"):
        raise ConfigurationError("--alias takes alias/NAME (not an AWS-managed alias/aws/...)")
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise ConfigurationError(
            "kms setup needs boto3: pip install 'sqla-envelope[kms]'"
        ) from None
    client = (session or boto3.session.Session()).client(
        "kms", region_name=region, endpoint_url=endpoint_url
    )
    try:
        try:
            return client.describe_key(KeyId=alias)["KeyMetadata"]["Arn"], False
        except client.exceptions.NotFoundException:
            pass
        meta = client.create_key(
            Description=f"sqla-envelope data keys ({alias})",
            KeyUsage="ENCRYPT_DECRYPT",
            KeySpec="SYMMETRIC_DEFAULT",
        )["KeyMetadata"]
        client.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
        return meta["Arn"], True
    except (BotoCoreError, ClientError) as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
        raise KeyringError(f"kms setup of {alias}: {code}", key_id=alias).chain(exc) from exc


def key_policy(
    *,
    account: str,
    readers: list[str],
    writers: list[str],
    store_table: str | None = "credential_store",
) -> str:
    """A key policy (JSON) in least privilege: readers Decrypt, writers GenerateDataKey.

    With ``store_table``, both only for the credential store in that table (the
    ``sqla_envelope:store`` key of every secret's encryption context); without it,
    for any context (encrypted columns name their own table and column). The
    account root keeps administration, as AWS's default policy does, so the key
    cannot become unmanageable.
    """
    condition: dict[str, Any] = {}
    if store_table is not None:
        condition = {"StringEquals": {"kms:EncryptionContext:sqla_envelope:store": store_table}}

    def statement(sid: str, principals: list[str], actions: list[str]) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "Sid": sid,
            "Effect": "Allow",
            "Principal": {"AWS": principals},
            "Action": actions,
            "Resource": "*",
        }
        if condition:
            entry["Condition"] = condition
        return entry

    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "KeyAdministration",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            statement("Readers", readers, ["kms:Decrypt"]),
            statement("Writers", writers, ["kms:GenerateDataKey"]),
        ],
    }
    return json.dumps(policy, indent=2)
