"""Items written by the real credstash 1.17.1, imported into a SecretStore (CREDSTASH.md 6.C).

credstash writes through boto3 to moto's DynamoDB and KMS over HTTP (the session's
moto server). The import keeps each item as credstash wrote it, with no KMS call;
the store reads it as credstash does (KMS unwraps its data key under its context),
and ``reencrypt`` converts it to the store's format. Cases 32-34 and 37-39, on
SQLite, PostgreSQL and MariaDB.
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
    Recorder,
    aws_env_fixture,
    kms_endpoint_fixture,
    make_key_fixture,
    recorder_fixture,
)

from sqla_envelope import DecryptionError, Encryptor, KmsKeyring, LocalKeyring, SecretStore
from sqla_envelope.secrets.credstash_export import export_credstash
from sqla_envelope.secrets.credstash_import import import_credstash, scan_credstash_table

credstash = pytest.importorskip("credstash")
pytestmark = [pytest.mark.usefixtures("aws_env"), pytest.mark.credstash_compat]
DIGESTS = ("SHA", "SHA224", "SHA256", "SHA384", "SHA512", "MD5")


@pytest.fixture(autouse=True)
def _credstash_logs_redacted_too() -> None:
    """credstash's own KMS calls are logged by botocore like ours: keep its keys out too.

    A KmsKeyring installs the filter when built; credstash may write before any is.
    """
    from sqla_envelope.keyrings._kms_logging import redact_plaintext_in_botocore_logs

    redact_plaintext_in_botocore_logs()


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


def make_store(engine: sa.Engine, encryptor: Encryptor, table: str) -> SecretStore:
    secrets = SecretStore(engine, encryptor, table=table)
    secrets.table.drop(engine, checkfirst=True)
    secrets.create_table()
    return secrets


@pytest.fixture
def store(engine: sa.Engine) -> Iterator[SecretStore]:
    """A store on a key file: it can keep credstash items, not read them."""
    secrets = make_store(engine, Encryptor(LocalKeyring.generate()), "imported_secrets")
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


def _credstash_clients(kms_endpoint: str) -> dict[str, Any]:
    return {
        "kms": boto3.client("kms", region_name=REGION, endpoint_url=kms_endpoint),
        "dynamodb": boto3.resource("dynamodb", region_name=REGION, endpoint_url=kms_endpoint),
    }


def raw_items(kms_endpoint: str, table: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every item of a DynamoDB table, attribute types and all, by (name, version)."""
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=kms_endpoint)
    items = client.scan(TableName=table, ConsistentRead=True)["Items"]
    return {(item["name"]["S"], item["version"]["S"]): item for item in items}


def fill_credstash_table(kms_endpoint: str, table: str, key: Key) -> None:
    """What a credstash table holds after years: versions, comments, digests, a context."""
    for version, value in {"1": "hunter2", "2": "hunter3", "10": "hunter10"}.items():
        put(kms_endpoint, table, key, "app.db.pass", value,
            version=credstash.paddedInt(int(version)), comment=f"v{version}")  # fmt: skip
    for digest in DIGESTS:
        put(kms_endpoint, table, key, f"digest.{digest}", f"pässwörd {digest} ✓",
            version=credstash.paddedInt(1), digest=digest)  # fmt: skip
    put(kms_endpoint, table, key, "app.api", "api-key-value",
        version=credstash.paddedInt(1), context={"env": "prod"})  # fmt: skip
    # An item as credstash before 1.13.1 wrote it (hmac as a string, an unpadded
    # version), and one from before 1.12 (no digest).
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=kms_endpoint)
    first = {"name": {"S": "app.db.pass"}, "version": {"S": credstash.paddedInt(1)}}
    legacy = client.get_item(TableName=table, Key=first)["Item"]
    legacy.update(
        name={"S": "legacy"}, version={"S": "3"}, hmac={"S": legacy["hmac"]["B"].decode()}
    )
    client.put_item(TableName=table, Item=legacy)
    del legacy["digest"]
    legacy["name"] = {"S": "no.digest"}
    client.put_item(TableName=table, Item=legacy)


def test_credstash_items_are_kept_as_they_are_and_read_as_credstash_reads_them(  # 32-34
    engine: sa.Engine,
    kms_endpoint: str,
    credstash_table: str,
    make_key: Callable[..., Key],
    recorder: Recorder,
) -> None:
    credstash_key, new_key = make_key(), make_key()
    fill_credstash_table(kms_endpoint, credstash_table, credstash_key)
    # The store's own key is a new one; credstash's only unwraps.
    keyring = KmsKeyring(
        new_key.arn,
        decrypt_key_ids=[credstash_key.arn],
        session=recorder.session,
        endpoint_url=kms_endpoint,
        region_name=REGION,
    )
    store = make_store(engine, Encryptor(keyring), "verbatim_secrets")
    try:
        items = list(
            scan_credstash_table(credstash_table, region=REGION, endpoint_url=kms_endpoint)
        )
        report = import_credstash(store, items, kms_key_id=credstash_key.arn)
        assert (report.imported, report.already_there) == (len(items), 0)
        assert recorder.calls == []  # no KMS call: the import needs no kms:Decrypt
        again = import_credstash(store, items, kms_key_id=credstash_key.arn)
        assert (again.imported, again.already_there) == (0, len(items))

        assert store.get("app.db.pass") == "hunter10"  # 10 > 2: numeric (credstash says 2)
        assert [store.get("app.db.pass", version=v) for v in (1, 2, 10)] == [
            "hunter2", "hunter3", "hunter10"
        ]  # fmt: skip
        assert [(i.version, i.comment, i.format) for i in store.history("app.db.pass")] == [
            (1, "v1", "credstash"), (2, "v2", "credstash"), (10, "v10", "credstash")
        ]  # fmt: skip
        for digest in DIGESTS:
            assert store.get(f"digest.{digest}") == f"pässwörd {digest} ✓"
        assert store.get("legacy", version=3) == "hunter2"
        assert store.get("no.digest", version=3) == "hunter2"
        with pytest.raises(DecryptionError, match=r"app\.api") as raised:  # its context, again
            store.get("app.api")
        assert "api-key-value" not in str(raised.value)
        assert store.get("app.api", context={"env": "prod"}) == "api-key-value"
        decrypts = recorder.params("Decrypt")
        assert decrypts and {d["KeyId"] for d in decrypts} == {credstash_key.arn}
        with pytest.raises(DecryptionError, match="api"):  # one fails: get_all fails whole
            store.get_all()
        partial = store.get_all(skip_undecryptable=True)
        assert partial.skipped == ["app.api"] and partial["app.db.pass"] == "hunter10"

        # credstash's own calls, one import changed, read them too.
        from sqla_envelope import configure
        from sqla_envelope import credstash as drop_in

        configure(store.encryptor)
        kw = {"table": "verbatim_secrets", "bind": engine}
        assert drop_in.getSecret("app.db.pass", version="2", **kw) == "hunter3"
        with pytest.raises(drop_in.KmsError):
            drop_in.getSecret("app.api", **kw)
        configure(None)

        # docs/secrets.md: plain SQL finds what is left to convert.
        left = sa.text("SELECT name, version FROM verbatim_secrets WHERE value_type = 'cs/1'")
        with engine.connect() as conn:
            assert len(conn.execute(left).all()) == len(items)

        # Converted: a value under the store's key, bound to its name, read without credstash's.
        converted = store.reencrypt(skip_undecryptable=True)
        assert converted.converted == len(items) - 1 and converted.skipped == [("app.api", 1)]
        assert store.reencrypt(context={"env": "prod"}).converted == 1
        assert store.reencrypt().converted == 0  # a rerun has nothing left to do
        assert {info.format for info in store.list()} == {"native"}
        with engine.connect() as conn:
            assert conn.execute(left).all() == []
        reader = Encryptor(KmsKeyring(new_key.arn, endpoint_url=kms_endpoint, region_name=REGION))
        converted_store = SecretStore(engine, reader, table="verbatim_secrets")
        assert converted_store.get("app.db.pass", version=2) == "hunter3"
        assert converted_store.get("app.api", context={"env": "prod"}) == "api-key-value"
        assert converted_store.list()[0].context == {"env": "prod"}
        assert credstash.getSecret(  # and credstash's own getSecret agrees
            "app.db.pass", table=credstash_table, **_credstash_clients(kms_endpoint)
        ) == converted_store.get("app.db.pass", version=10)
    finally:
        store.table.drop(engine, checkfirst=True)


def _swap(engine: sa.Engine, store: SecretStore, source: str, target: str) -> None:
    """What a writer to the table can do: copy one row's payload into another."""
    t = store.table
    with engine.begin() as conn:
        payload = conn.execute(sa.select(t.c.payload).where(t.c.name == source)).scalar_one()
        conn.execute(t.update().where(t.c.name == target).values(payload=payload))


def test_a_swap_reads_as_credstash_until_reencrypt_binds_the_names(  # 38, 39
    engine: sa.Engine, kms_endpoint: str, credstash_table: str, make_key: Callable[..., Key]
) -> None:
    key = make_key()
    put(kms_endpoint, credstash_table, key, "db.prod", "prod-password", version="1")
    put(kms_endpoint, credstash_table, key, "db.dev", "dev-password", version="1")
    kms = KmsKeyring(key.arn, endpoint_url=kms_endpoint, region_name=REGION)
    store = make_store(engine, Encryptor(kms), "swapped_secrets")
    try:
        items = scan_credstash_table(credstash_table, region=REGION, endpoint_url=kms_endpoint)
        import_credstash(store, items, kms_key_id=key.arn)
        _swap(engine, store, "db.prod", "db.dev")
        # The weakness of credstash's format, kept with it (its #134): nothing binds
        # the item to its name, so db.dev now reads db.prod's value.
        assert store.get("db.dev") == "prod-password"
        store.delete("db.dev")  # and imported again, as it is in credstash's table
        items = scan_credstash_table(credstash_table, region=REGION, endpoint_url=kms_endpoint)
        import_credstash(store, items, kms_key_id=key.arn)
        assert store.get("db.dev") == "dev-password"
        assert store.reencrypt().converted == 2
        _swap(engine, store, "db.prod", "db.dev")
        with pytest.raises(DecryptionError, match=r"db\.dev"):  # case 27 holds from now on
            store.get("db.dev")
    finally:
        store.table.drop(engine, checkfirst=True)


def test_an_altered_item_fails_closed_and_no_error_holds_its_value(
    engine: sa.Engine, kms_endpoint: str, credstash_table: str, make_key: Callable[..., Key]
) -> None:
    import json

    from sqla_envelope.secrets.credstash_format import PAYLOAD_PREFIX

    key = make_key()
    put(kms_endpoint, credstash_table, key, "tampered", "value-never-shown-4242", version="1")
    kms = KmsKeyring(key.arn, endpoint_url=kms_endpoint, region_name=REGION)
    store = make_store(engine, Encryptor(kms), "tampered_secrets")
    t = store.table
    try:
        items = scan_credstash_table(credstash_table, region=REGION, endpoint_url=kms_endpoint)
        import_credstash(store, items, kms_key_id=key.arn)
        with engine.connect() as conn:
            payload = bytes(conn.execute(sa.select(t.c.payload)).scalar_one())
        fields = json.loads(payload[len(PAYLOAD_PREFIX) :])

        def altered(**changes: Any) -> bytes:
            return PAYLOAD_PREFIX + json.dumps({**fields, **changes}).encode()

        contents = fields["contents"]
        flipped = ("B" if contents[0] == "A" else "A") + contents[1:]
        hmac_flipped = ("1" if fields["hmac"][0] == "0" else "0") + fields["hmac"][1:]
        for bad in (
            altered(contents=flipped),
            altered(hmac=hmac_flipped),
            altered(hmac=fields["hmac"][:-2]),
            altered(digest="SHA512"),
            altered(hmac="not hex"),
            b"credstash/2\n" + payload[len(PAYLOAD_PREFIX) :],
            payload[:-10],
        ):
            with engine.begin() as conn:
                conn.execute(t.update().values(payload=bad))
            with pytest.raises(DecryptionError, match="tampered") as raised:
                store.get("tampered")
            assert "value-never-shown" not in str(raised.value)
        with engine.begin() as conn:
            conn.execute(t.update().values(payload=payload))
        assert store.get("tampered") == "value-never-shown-4242"
    finally:
        store.table.drop(engine, checkfirst=True)


def test_reading_an_item_needs_a_kms_keyring_that_holds_its_key(  # 16
    engine: sa.Engine,
    kms_endpoint: str,
    credstash_table: str,
    make_key: Callable[..., Key],
    store: SecretStore,
) -> None:
    key, other = make_key(), make_key()
    put(kms_endpoint, credstash_table, key, "svc.token", "tok-1", version="1")
    items = scan_credstash_table(credstash_table, region=REGION, endpoint_url=kms_endpoint)
    import_credstash(store, items, kms_key_id=key.arn)
    with pytest.raises(DecryptionError, match="only AWS KMS unwraps"):  # a key-file store
        store.get("svc.token")
    elsewhere = Encryptor(KmsKeyring(other.arn, endpoint_url=kms_endpoint, region_name=REGION))
    with pytest.raises(DecryptionError, match=key.arn):  # named; no Decrypt under another key
        SecretStore(store.engine, elsewhere, table=store.table_name).get("svc.token")
    credstash_kms = KmsKeyring(key.arn, endpoint_url=kms_endpoint, region_name=REGION)
    assert store.reencrypt(keyring=credstash_kms).converted == 1  # read with KMS, sealed locally
    assert store.get("svc.token") == "tok-1"


def test_export_then_import_round_trips_credstash_bytes(  # 35-37
    engine: sa.Engine,
    kms_endpoint: str,
    credstash_table: str,
    make_key: Callable[..., Key],
    store: SecretStore,
) -> None:
    key = make_key()
    fill_credstash_table(kms_endpoint, credstash_table, key)
    original = raw_items(kms_endpoint, credstash_table)
    items = scan_credstash_table(credstash_table, region=REGION, endpoint_url=kms_endpoint)
    import_credstash(store, items, kms_key_id=key.arn)
    store.put("native.secret", "pässwörd ✓", comment="ours")  # sealed anew on export
    out = create_credstash_table(kms_endpoint)
    with KmsKeyring(key.arn, region_name=REGION, endpoint_url=kms_endpoint) as kms:
        options = {"region": REGION, "endpoint_url": kms_endpoint}
        assert export_credstash(store, out, kms, **options) == (len(original) + 1, 0)
    exported = raw_items(kms_endpoint, out)
    for (name, version), item in original.items():
        padded = credstash.paddedInt(int(version))  # legacy "3" goes back padded
        assert exported[(name, padded)] == {**item, "version": {"S": padded}}  # byte for byte
    clients = _credstash_clients(kms_endpoint)
    assert credstash.getSecret("app.db.pass", table=out, **clients) == "hunter10"
    assert credstash.getSecret("native.secret", table=out, **clients) == "pässwörd ✓"
    read_back = credstash.getSecret("app.api", table=out, context={"env": "prod"}, **clients)
    assert read_back == "api-key-value"

    # And back in: the exported items are kept byte for byte again.
    again = make_store(engine, Encryptor(LocalKeyring.generate()), "reimported_secrets")
    try:
        items = scan_credstash_table(out, region=REGION, endpoint_url=kms_endpoint)
        import_credstash(again, items, kms_key_id=key.arn)
        back = create_credstash_table(kms_endpoint)
        with KmsKeyring(key.arn, region_name=REGION, endpoint_url=kms_endpoint) as kms:
            assert export_credstash(again, back, kms, **options)[0] == len(exported)
        assert raw_items(kms_endpoint, back) == exported
    finally:
        again.table.drop(engine, checkfirst=True)


def test_import_and_reencrypt_from_the_shell(
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
    put(
        kms_endpoint, credstash_table, key, "svc.api", "api-1", version="1", context={"env": "prod"}
    )
    keys = tmp_path / "app.keys.json"
    LocalKeyring.generate().to_file(keys)
    url = engine.url.render_as_string(hide_password=False)
    common = ["--url", url, "-t", "cli_imported", "--key-file", str(keys)]
    common += ["-r", REGION, "--endpoint-url", kms_endpoint]
    table = ["--dynamodb-table", credstash_table]
    SecretStore(engine, table="cli_imported").table.drop(engine, checkfirst=True)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["secrets", *argv, *common])
        out, err = capsys.readouterr()
        assert "Traceback" not in err and "tok-" not in err
        return code, out, err

    try:
        assert run("setup")[0] == 0
        code, out, _ = run("import-credstash", *table, "--from-kms-key-id", key.arn)
        assert code == 0 and "imported 3 version(s) of 2 secret(s)" in out
        assert "a credstash item" in run("history", "svc.token")[1]
        code, _, err = run("get", "svc.token")  # a key-file store cannot unwrap credstash's keys
        assert code == 1 and "only AWS KMS unwraps" in err and key.arn in err
        assert run("import-credstash", *table, "env=prod")[0] == 2  # a context needs --reencrypt
        # Converted: what the context opens, the rest named and left (exit 3), then the rest.
        code, out, err = run("reencrypt", "--from-kms-key-id", key.arn, "--skip-undecryptable")
        assert code == 3 and "converted 2" in out and "'svc.api' version 1" in err
        code, out, _ = run("reencrypt", "--from-kms-key-id", key.arn, "env=prod")
        assert code == 0 and "converted 1" in out
        assert run("get", "-n", "svc.token") == (0, "tok-2", "")
        assert run("get", "-n", "svc.api", "env=prod") == (0, "api-1", "")
        # import --reencrypt does both at once
        run("delete", "svc.token")
        code, out, err = run("import-credstash", *table, "--from-kms-key-id", key.arn,
                             "--reencrypt", "--skip-undecryptable")  # fmt: skip
        assert code == 0 and "imported 2 version(s)" in out and "converted 2" in out
        assert run("get", "-n", "svc.token", "-v", "1") == (0, "tok-1", "")
        # and back out, to a table stock credstash reads
        out_table = create_credstash_table(kms_endpoint)
        argv = ["export-credstash", "--dynamodb-table", out_table, "--to-kms-key-id", key.arn]
        code, out, _ = run(*argv)
        assert code == 0 and "wrote 3 credstash item(s)" in out
        clients = _credstash_clients(kms_endpoint)
        assert credstash.getSecret("svc.token", table=out_table, **clients) == "tok-2"
        code, _, err = run("import-credstash", "--dynamodb-table", "no-such-table")
        assert code == 1 and "ResourceNotFoundException" in err
    finally:
        SecretStore(engine, table="cli_imported").table.drop(engine, checkfirst=True)


@pytest.mark.parametrize("hmac_as_string", [False, True], ids=["hmac-binary", "hmac-string"])
def test_an_export_is_read_by_stock_credstash(  # cases 35, 36
    kms_endpoint: str,
    credstash_table: str,
    make_key: Callable[..., Key],
    store: SecretStore,
    hmac_as_string: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
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
    hmac_types = {next(iter(i["hmac"])) for i in raw_items(kms_endpoint, credstash_table).values()}
    assert hmac_types == ({"S"} if hmac_as_string else {"B"})
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

    store.put("a.first", "text, which would be written first")
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
        import_credstash(store, [item], kms_key_id=kms.key_id)
        with pytest.raises(DecryptionError, match="not UTF-8") as raised:
            store.reencrypt(keyring=kms)
    chained = [raised.value, raised.value.__context__, raised.value.__cause__]
    assert all(b"secret-bytes" not in repr(getattr(e, "object", b"")).encode() for e in chained)
    assert raised.value.__cause__.__context__ is None  # type: ignore[union-attr]


def test_an_item_that_could_never_be_read_stops_the_import_naming_it(store: SecretStore) -> None:
    from sqla_envelope import ConfigurationError, MalformedEnvelopeError

    good = {"name": "good", "version": "1", "key": "AAAA", "contents": "", "hmac": "00"}
    for bad, error in (
        ({**good, "name": "bad.hmac", "hmac": "zz"}, MalformedEnvelopeError),
        ({**good, "name": "bad.version", "version": "v1.0.0-1"}, MalformedEnvelopeError),
        ({**good, "name": "bad.digest", "digest": "WHIRLPOOL"}, ConfigurationError),
        ({**good, "name": "bad.key", "key": "not base64!"}, MalformedEnvelopeError),
    ):
        with pytest.raises(error, match=bad["name"].replace(".", r"\.")):
            import_credstash(store, [good, bad])
        assert store.keys() == []  # every item is checked before any is stored
