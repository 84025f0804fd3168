"""``sqla-envelope kms setup``: a key and alias made once, and a policy KMS accepts (issue 16.5)."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest
from kms_server import REGION, aws_env_fixture, kms_endpoint_fixture  # noqa: F401 - fixtures

from sqla_envelope.cli import main

pytestmark = pytest.mark.usefixtures("aws_env")


def test_setup_creates_once_and_prints_a_least_privilege_policy(
    kms_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    alias = f"alias/secrets-{uuid.uuid4().hex[:8]}"
    argv = ["kms", "setup", "--alias", alias, "--region", REGION, "--endpoint-url", kms_endpoint]
    argv += ["--reader", "arn:aws:iam::123456789012:role/app"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert f"created {alias}" in err
    policy = json.loads(out)
    readers = next(s for s in policy["Statement"] if s["Sid"] == "Readers")
    assert readers["Action"] == ["kms:Decrypt"]
    assert readers["Principal"] == {"AWS": ["arn:aws:iam::123456789012:role/app"]}
    assert readers["Condition"] == {
        "StringEquals": {"kms:EncryptionContext:sqla_envelope:store": "credential_store"}
    }
    writers = next(s for s in policy["Statement"] if s["Sid"] == "Writers")
    assert writers["Action"] == ["kms:GenerateDataKey"]  # writers cannot read
    client = boto3.client("kms", region_name=REGION, endpoint_url=kms_endpoint)
    arn = client.describe_key(KeyId=alias)["KeyMetadata"]["Arn"]
    client.put_key_policy(KeyId=arn, PolicyName="default", Policy=out)  # KMS takes it

    assert main(argv) == 0  # a second run finds the key
    assert f"found {alias}: {arn}" in capsys.readouterr().err
    assert main(["kms", "setup", "--alias", "alias/aws/s3", "--endpoint-url", kms_endpoint]) == 2
