"""``from sqla_envelope import credstash``: credstash's functions, names and keywords (16.4)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from sqla_envelope import Encryptor, LocalKeyring, SecretStore, configure
from sqla_envelope import credstash as cs
from sqla_envelope.errors import DecryptionError, SecretNotFound

TABLE = "compat_credential_store"


@pytest.fixture
def bind(engine: sa.Engine) -> Iterator[sa.Engine]:
    configure(Encryptor(LocalKeyring.generate()))
    store = SecretStore(engine, table=TABLE)
    store.table.drop(engine, checkfirst=True)
    store.create_table()
    yield engine
    store.table.drop(engine, checkfirst=True)
    configure(None)


def test_credstash_calls_work_unchanged_but_the_import(bind: sa.Engine) -> None:
    kw = {"table": TABLE, "bind": bind, "region": "us-east-1"}  # region: accepted, unused
    assert cs.putSecret("app.db.pass", "hunter2", version=cs.paddedInt(1), **kw) == {
        "name": "app.db.pass",
        "version": "0000000000000000001",
    }
    cs.putSecretAutoversion("app.db.pass", "hunter3", comment="rotated", **kw)
    cs.putSecret("app.api", "tok", context={"env": "prod"}, kms_key="alias/x", **kw)
    assert cs.getSecret("app.db.pass", **kw) == "hunter3"
    assert cs.getSecret("app.db.pass", version="1", **kw) == "hunter2"
    assert cs.getSecret("app.db.pass", version=cs.paddedInt(1), **kw) == "hunter2"
    assert cs.getHighestVersion("app.db.pass", **kw) == "0000000000000000002"
    assert cs.getHighestVersion("nope", **kw) == "0000000000000000000"
    assert cs.getAllSecrets(credential="app.db*", **kw) == {"app.db.pass": "hunter3"}
    assert cs.getAllSecrets(version="1", credential="app.db*", **kw) == {"app.db.pass": "hunter2"}
    assert cs.getAllSecrets(context={"env": "prod"}, credential="app.api", **kw) == {
        "app.api": "tok"
    }
    assert cs.listSecrets(**kw) == [
        {"name": "app.api", "version": "0000000000000000001", "comment": ""},
        {"name": "app.db.pass", "version": "0000000000000000001", "comment": ""},
        {"name": "app.db.pass", "version": "0000000000000000002", "comment": "rotated"},
    ]
    assert cs.expand_wildcard("app.db*", ["app.db.pass", "appXdbY"]) == ["app.db.pass"]
    with pytest.raises(cs.ItemNotFound):
        cs.getSecret("nope", **kw)
    with pytest.raises(cs.KmsError):  # the context it was stored with is missing
        cs.getSecret("app.api", **kw)
    with pytest.raises(cs.IntegrityError):
        cs.putSecret("app.db.pass", "again", version="2", **kw)
    assert cs.deleteSecrets("app.db.pass", **kw) == 2
    with pytest.raises(SecretNotFound):  # our errors catch them too
        cs.getSecret("app.db.pass", **kw)
    assert issubclass(cs.KmsError, DecryptionError) and issubclass(cs.ItemNotFound, KeyError)


def test_the_database_from_the_environment(
    bind: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SQLA_ENVELOPE_SECRETS_URL", bind.url.render_as_string(hide_password=False))
    cs.putSecret("from.env", "value", table=TABLE)
    assert cs.getSecret("from.env", table=TABLE) == "value"
    monkeypatch.delenv("SQLA_ENVELOPE_SECRETS_URL")
    monkeypatch.delenv("SQLA_ENVELOPE_URL", raising=False)
    with pytest.raises(Exception, match="SQLA_ENVELOPE_SECRETS_URL"):
        cs.getSecret("from.env", table=TABLE)
