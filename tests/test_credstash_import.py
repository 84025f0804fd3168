"""Items written by the real credstash 1.17.1, imported into a SecretStore (CREDSTASH.md 6.C).

credstash writes through boto3 to moto's DynamoDB and KMS over HTTP (the session's
moto server); the import reads the table the same way and unwraps each data key
with a KmsKeyring. Cases 32-34 and 38, on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from kms_server import (  # noqa: F401 - pytest fixtures
    REGION,
    Key,
    aws_env_fixture,
    kms_endpoint_fixture,
    make_key_fixture,
)

from sqla_envelope import DecryptionError, Encryptor, KmsKeyring, LocalKeyring, SecretStore
from sqla_envelope.secrets.credstash_import import import_credstash, scan_credstash_table

credstash = pytest.importorskip("credstash")
pytestmark = pytest.mark.usefixtures("aws_env")


def create_credstash_table(kms_endpoint: str) -> str:
    """A table as credstash's setup makes it (hash key name, range key version)."""
    name = f"credential-store-{uuid.uuid4().hex[:8]}"
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=kms_endpoint)
    client.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "name", "KeyType": "HASH"},
            {"AttributeName": "version", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "name", "AttributeType": "S"},
            {"AttributeName": "version", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


@pytest.fixture
def credstash_table(kms_endpoint: str) -> Iterator[str]:
    name = create_credstash_table(kms_endpoint)
    yield name
    boto3.client("dynamodb", region_name=REGION, endpoint_url=kms_endpoint).delete_table(
        TableName=name
    )


@pytest.fixture
def store(engine: sa.Engine) -> Iterator[SecretStore]:
    secrets = SecretStore(engine, Encryptor(LocalKeyring.generate()), table="imported_secrets")
    secrets.table.drop(engine, checkfirst=True)
    secrets.create_table()
    yield secrets
    secrets.table.drop(engine, checkfirst=True)


def put(kms_endpoint: str, table: str, key: Key, name: str, value: str, **options: Any) -> None:
    """credstash's own putSecret, with clients that reach the moto server."""
    credstash.putSecret(
        name,
        value,
        kms_key=key.arn,
        table=table,
        kms=boto3.client("kms", region_name=REGION, endpoint_url=kms_endpoint),
        dynamodb=boto3.resource("dynamodb", region_name=REGION, endpoint_url=kms_endpoint),
        **options,
    )


def test_every_version_and_digest_credstash_wrote_imports_and_reads_back(
    kms_endpoint: str,
    credstash_table: str,
    make_key: Callable[..., Key],
    store: SecretStore,
) -> None:
    key = make_key()
    versions = {"1": "hunter2", "2": "hunter3", "10": "hunter10"}  # numeric order: 10 is latest
    for version, value in versions.items():
        put(kms_endpoint, credstash_table, key, "app.db.pass", value,
            version=credstash.paddedInt(int(version)), comment=f"v{version}")  # fmt: skip
    for digest in ("SHA", "SHA224", "SHA256", "SHA384", "SHA512", "MD5"):
        put(kms_endpoint, credstash_table, key, f"digest.{digest}", f"pässwörd {digest} ✓",
            version=credstash.paddedInt(1), digest=digest)  # fmt: skip
    put(kms_endpoint, credstash_table, key, "app.api", "api-key-value",
        version=credstash.paddedInt(1), context={"env": "prod"})  # fmt: skip
    # An item as credstash before 1.13.1 wrote it: hmac as a string, an unpadded version.
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=kms_endpoint)
    legacy = client.get_item(
        TableName=credstash_table,
        Key={"name": {"S": "app.db.pass"}, "version": {"S": credstash.paddedInt(1)}},
    )["Item"]
    legacy["name"] = {"S": "legacy"}
    legacy["version"] = {"S": "3"}
    legacy["hmac"] = {"S": legacy["hmac"]["B"].decode()}
    client.put_item(TableName=credstash_table, Item=legacy)

    items = list(scan_credstash_table(credstash_table, region=REGION, endpoint_url=kms_endpoint))
    with KmsKeyring(key.arn, region_name=REGION, endpoint_url=kms_endpoint) as kms:
        plain = [item for item in items if item["name"] != "app.api"]
        report = import_credstash(store, plain, kms)
        assert (report.imported, report.already_there) == (len(plain), 0)
        again = import_credstash(store, plain, kms)  # a rerun changes nothing
        assert (again.imported, again.already_there) == (0, len(plain))
        prod = [item for item in items if item["name"] == "app.api"]
        with pytest.raises(DecryptionError, match=r"app\.api"):  # without its context
            import_credstash(store, prod, kms)
        import_credstash(store, prod, kms, context={"env": "prod"})

    assert store.get("app.db.pass") == "hunter10"
    for version, value in versions.items():
        assert store.get("app.db.pass", version=int(version)) == value
    assert [(i.version, i.comment) for i in store.history("app.db.pass")] == [
        (1, "v1"), (2, "v2"), (10, "v10")
    ]  # fmt: skip
    for digest in ("SHA", "SHA224", "SHA256", "SHA384", "SHA512", "MD5"):
        assert store.get(f"digest.{digest}") == f"pässwörd {digest} ✓"
    assert store.get("legacy", version=3) == "hunter2"
    assert store.get("app.api", context={"env": "prod"}) == "api-key-value"
    # From now on bound to its name (case 38): credstash's own getSecret agrees on values.
    assert credstash.getSecret(
        "app.db.pass",
        table=credstash_table,
        kms=boto3.client("kms", region_name=REGION, endpoint_url=kms_endpoint),
        dynamodb=boto3.resource("dynamodb", region_name=REGION, endpoint_url=kms_endpoint),
    ) == store.get("app.db.pass", version=10)


def test_import_credstash_from_the_shell(
    engine: sa.Engine,
    kms_endpoint: str,
    credstash_table: str,
    make_key: Callable[..., Key],
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sqla_envelope.cli import main

    key = make_key()
    put(kms_endpoint, credstash_table, key, "svc.token", "tok-1", version=credstash.paddedInt(1))
    put(kms_endpoint, credstash_table, key, "svc.token", "tok-2", version=credstash.paddedInt(2))
    keys = tmp_path / "app.keys.json"
    LocalKeyring.generate().to_file(keys)
    common = ["--url", engine.url.render_as_string(hide_password=False), "-t", "cli_imported"]
    common += ["--key-file", str(keys), "--region", REGION, "--endpoint-url", kms_endpoint]
    SecretStore(engine, table="cli_imported").table.drop(engine, checkfirst=True)
    try:
        assert main(["secrets", "setup", *common]) == 0
        argv = ["secrets", "import-credstash", *common, "--dynamodb-table", credstash_table]
        argv += ["--dynamodb-endpoint-url", kms_endpoint, "--from-kms-key-id", key.arn]
        assert main(argv) == 0
        assert "imported 2 version(s) of 1 secret(s)" in capsys.readouterr().out
        assert main(["secrets", "get", "-n", "svc.token", *common]) == 0
        assert capsys.readouterr().out == "tok-2"
        # and back out, to a table stock credstash reads
        out_table = create_credstash_table(kms_endpoint)
        argv = ["secrets", "export-credstash", *common, "--dynamodb-table", out_table]
        argv += ["--dynamodb-endpoint-url", kms_endpoint, "--to-kms-key-id", key.arn]
        assert main(argv) == 0
        assert "wrote 2 credstash item(s)" in capsys.readouterr().out
        clients = _credstash_clients(kms_endpoint)
        assert credstash.getSecret("svc.token", table=out_table, **clients) == "tok-2"
    finally:
        SecretStore(engine, table="cli_imported").table.drop(engine, checkfirst=True)


def _credstash_clients(kms_endpoint: str) -> dict[str, Any]:
    return {
        "kms": boto3.client("kms", region_name=REGION, endpoint_url=kms_endpoint),
        "dynamodb": boto3.resource("dynamodb", region_name=REGION, endpoint_url=kms_endpoint),
    }


@pytest.mark.parametrize("hmac_as_string", [False, True], ids=["hmac-binary", "hmac-string"])
def test_an_export_is_read_by_stock_credstash(  # cases 35, 36
    kms_endpoint: str,
    credstash_table: str,
    make_key: Callable[..., Key],
    store: SecretStore,
    hmac_as_string: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqla_envelope.secrets.credstash_export import export_credstash

    key = make_key()
    store.put("app.db.pass", "first")
    store.put("app.db.pass", "pässwörd ✓", comment="rotated")
    store.put("app.api", "api-key-value", context={"env": "prod"})
    with KmsKeyring(key.arn, region_name=REGION, endpoint_url=kms_endpoint) as kms:
        options = {"region": REGION, "endpoint_url": kms_endpoint, "hmac_as_string": hmac_as_string}
        assert export_credstash(store, credstash_table, kms, **options) == (3, 0)
        assert export_credstash(store, credstash_table, kms, **options) == (0, 3)  # rerun
    clients = _credstash_clients(kms_endpoint)
    read = credstash.getSecret("app.db.pass", table=credstash_table, **clients)
    assert read == "pässwörd ✓"
    first = credstash.getSecret("app.db.pass", version="1", table=credstash_table, **clients)
    assert first == "first"
    api = credstash.getSecret("app.api", table=credstash_table, context={"env": "prod"}, **clients)
    assert api == "api-key-value"
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", kms_endpoint)  # listSecrets takes no client
    listed = credstash.listSecrets(region=REGION, table=credstash_table, session=boto3.Session())
    assert sorted((s["name"], s["version"]) for s in listed) == [
        ("app.api", "0000000000000000001"),
        ("app.db.pass", "0000000000000000001"),
        ("app.db.pass", "0000000000000000002"),
    ]


def test_a_binary_secret_is_refused_by_name_before_anything_is_written(
    kms_endpoint: str, credstash_table: str, make_key: Callable[..., Key], store: SecretStore
) -> None:
    from sqla_envelope import ConfigurationError
    from sqla_envelope.secrets.credstash_export import export_credstash

    store.put("cert.der", b"\x30\x82\x01")
    kms = KmsKeyring(make_key().arn, region_name=REGION, endpoint_url=kms_endpoint)
    with kms, pytest.raises(ConfigurationError, match=r"cert\.der"):
        export_credstash(store, credstash_table, kms, region=REGION, endpoint_url=kms_endpoint)
    items = scan_credstash_table(credstash_table, region=REGION, endpoint_url=kms_endpoint)
    assert list(items) == []


def test_an_item_that_is_not_text_fails_and_its_error_holds_no_decrypted_byte(
    kms_endpoint: str, make_key: Callable[..., Key], store: SecretStore
) -> None:
    import base64

    from sqla_envelope.secrets.credstash_format import seal_contents

    secret = b"\xff\xfe not utf-8: secret-bytes-4242"
    with KmsKeyring(make_key().arn, region_name=REGION, endpoint_url=kms_endpoint) as kms:
        data_key, blob = kms.generate_blob({}, 64)
        contents, tag = seal_contents(data_key, secret)
        item = {"name": "bin", "version": "1", "key": base64.b64encode(blob).decode(),
                "contents": contents, "hmac": tag}  # fmt: skip
        with pytest.raises(DecryptionError, match="UnicodeDecodeError") as raised:
            import_credstash(store, [item], kms)
    chained = [raised.value, raised.value.__context__, raised.value.__cause__]
    assert all(b"secret-bytes" not in repr(getattr(e, "object", b"")).encode() for e in chained)
    assert raised.value.__context__ is None  # the UnicodeDecodeError held the plaintext
