"""credstash's AWS options on ``sqla-envelope secrets``: -r, --kms-region, -p, -n ARN (case 41).

Against moto's KMS and STS over HTTP; profiles from AWS config files written
here, and ``~/.credstash`` under a HOME of the test's own. Never real AWS.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from kms_server import (  # noqa: F401 - pytest fixtures
    CLOSED_ENDPOINT,
    OTHER_REGION,
    REGION,
    Key,
    aws_env_fixture,
    kms_endpoint_fixture,
    make_key_fixture,
)
from test_secrets_cli import run

from sqla_envelope import ConfigurationError, KeyringError, SecretStore
from sqla_envelope.secrets.aws import aws_session, kms_region_of, region_of, save_kms_region

pytestmark = pytest.mark.usefixtures("aws_env")
ROLE = "arn:aws:iam::123456789012:role/secrets-reader"
TABLE = "aws_credential_store"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own, for ~/.credstash."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS config files with a profile ``ops`` in eu-west-3, with its own credentials."""
    (tmp_path / "config").write_text("[profile ops]\nregion = eu-west-3\n")
    (tmp_path / "credentials").write_text(
        "[ops]\naws_access_key_id = AKIDOPS\naws_secret_access_key = ops-secret\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))


def test_the_region_is_r_then_aws_default_region_then_the_profile_then_us_east_1(
    profiles: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = aws_session(profile="ops")
    assert ops.get_credentials().access_key == "AKIDOPS"
    assert region_of(ops, "ap-south-1") == "ap-south-1"
    assert region_of(ops, None) == REGION  # AWS_DEFAULT_REGION, set by aws_env
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert region_of(aws_session(profile="ops"), None) == "eu-west-3"
    assert region_of(aws_session(), None) == "us-east-1"  # no region anywhere: credstash's
    with pytest.raises(ConfigurationError, match="'nope'"):
        aws_session(profile="nope")
    with pytest.raises(ConfigurationError, match="not both"):
        aws_session(profile="ops", role_arn=ROLE)


def test_the_kms_region_is_kms_region_then_credstash_file_then_the_region(home: Path) -> None:
    assert kms_region_of(None, "eu-west-1") == "eu-west-1"
    (home / ".credstash").write_text(json.dumps({"kms-region": "eu-central-1", "other": 1}))
    assert kms_region_of(None, "eu-west-1") == "eu-central-1"
    assert kms_region_of("us-west-2", "eu-west-1") == "us-west-2"
    save_kms_region("ap-northeast-1")
    saved = json.loads((home / ".credstash").read_text())
    assert saved == {"kms-region": "ap-northeast-1", "other": 1}  # the rest is kept
    (home / ".credstash").write_text("not json")
    with pytest.raises(ConfigurationError, match="credstash"):
        kms_region_of(None, "eu-west-1")


def test_n_assumes_a_role_with_sts(kms_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", kms_endpoint)
    assumed = aws_session(role_arn=ROLE).get_credentials()
    assert assumed.access_key not in ("testing", "") and assumed.token not in ("testing", None)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", CLOSED_ENDPOINT)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(KeyringError, match="secrets-reader") as raised:
        aws_session(role_arn=ROLE)
    assert "testing" not in str(raised.value)


@pytest.fixture
def kms_cli(
    engine: sa.Engine, kms_endpoint: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The secrets commands on a KMS store: the database and endpoint from the environment."""
    monkeypatch.chdir(home)
    monkeypatch.setenv("SQLA_ENVELOPE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SQLA_ENVELOPE_KMS_ENDPOINT_URL", kms_endpoint)
    monkeypatch.setenv("SQLA_ENVELOPE_SECRETS_TABLE", TABLE)
    table = SecretStore(engine, table=TABLE).table
    table.drop(engine, checkfirst=True)
    table.create(engine)
    yield
    table.drop(engine, checkfirst=True)


@pytest.mark.credstash_compat
def test_kms_region_options_choose_where_the_key_is(  # 41
    kms_cli: None, home: Path, make_key: Callable[..., Key], capsys: pytest.CaptureFixture[str]
) -> None:
    key = make_key(OTHER_REGION)  # named by its alias, which only its region knows
    alias = ["-k", key.alias_name, "-r", REGION]
    code, _, err = run(capsys, "put", "app.token", "tok-1", *alias)
    assert code == 1 and key.alias_name in err  # looked for in us-east-1
    assert run(capsys, "put", "app.token", "tok-1", *alias, "--kms-region", OTHER_REGION)[0] == 0
    assert run(capsys, "setup", *alias, "--save-kms-region", OTHER_REGION)[0] == 0
    assert json.loads((home / ".credstash").read_text()) == {"kms-region": OTHER_REGION}
    assert run(capsys, "get", "app.token", *alias) == (0, "tok-1\n", "")  # from ~/.credstash


@pytest.mark.credstash_compat
def test_profile_and_role_are_credstash_s_p_and_n(  # 41
    kms_cli: None,
    kms_endpoint: str,
    profiles: None,
    make_key: Callable[..., Key],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", kms_endpoint)
    kms = ["-k", make_key().arn]
    assert run(capsys, "-n", ROLE, "put", "app.token", "tok-1", *kms)[0] == 0
    assert run(capsys, "get", "-n", "app.token", "--arn", ROLE, *kms) == (0, "tok-1", "")
    assert run(capsys, "-p", "ops", "get", "-n", "app.token", *kms) == (0, "tok-1", "")
    assert run(capsys, "get", "app.token", "-p", "ops", *kms)[0] == 0
    for argv in (
        ("-p", "ops", "-n", ROLE, "get", "app.token", *kms),  # argparse: not allowed together
        ("-p", "ops", "get", "app.token", "--arn", ROLE, *kms),  # nor in two places
        ("get", "app.token", "-p", "nope", *kms),  # a profile that is not there
    ):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and err
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", CLOSED_ENDPOINT)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code, _, err = run(capsys, "-n", ROLE, "get", "app.token", *kms)
    assert code == 1 and "STS AssumeRole" in err


@pytest.mark.credstash_compat
def test_a_secret_under_another_kms_key_needs_a_keyring_that_holds_it(  # 16
    kms_cli: None, make_key: Callable[..., Key], capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = make_key(), make_key()
    assert run(capsys, "put", "app.token", "tok-1", "-k", second.arn)[0] == 0
    code, out, err = run(capsys, "get", "app.token", "-k", first.arn)
    assert code == 1 and out == "" and second.arn in err  # names the key it is under
    also = ["--decrypt-kms-key-id", second.arn]
    assert run(capsys, "get", "-n", "app.token", "-k", first.arn, *also) == (0, "tok-1", "")
    code, _, err = run(capsys, "get", "app.token", "--key-file", "x.keys.json", *also)
    assert code == 2 and "--decrypt-kms-key-id" in err


def test_setup_tags_become_the_table_comment(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from sqla_envelope import LocalKeyring

    LocalKeyring.generate().to_file(tmp_path / "app.keys.json")
    monkeypatch.setenv("SQLA_ENVELOPE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SQLA_ENVELOPE_KEY_FILE", str(tmp_path / "app.keys.json"))
    monkeypatch.setenv("CREDSTASH_DEFAULT_TABLE", "tagged_store")  # credstash's -t default
    SecretStore(engine, table="tagged_store").table.drop(engine, checkfirst=True)
    try:
        code, out, err = run(capsys, "setup", "--tags", "team=payments", "env=prod")
        if engine.dialect.name == "sqlite":
            assert code == 2 and "sqlite keeps no table comments" in err
            return
        assert (code, out) == (0, "created table tagged_store\n")
        comment = sa.inspect(engine).get_table_comment("tagged_store")["text"]
        assert json.loads(comment) == {"env": "prod", "team": "payments"}
        again = run(capsys, "setup", "--tags", "team=other")
        assert again[1] == "table tagged_store already exists; its tags are left as they are\n"
        assert run(capsys, "setup", "--tags", "k=")[0] == 2
    finally:
        SecretStore(engine, table="tagged_store").table.drop(engine, checkfirst=True)
