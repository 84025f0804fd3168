"""The credential store on SQLite, PostgreSQL and MariaDB (issue 16, item 1).

Cases of ../shared/CREDSTASH.md section 6 are named by their number.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from sqla_envelope import (
    ConfigurationError,
    DecryptionError,
    Encryptor,
    LocalKeyring,
    SecretExists,
    SecretNotFound,
    SecretStore,
)


@pytest.fixture
def keyring() -> LocalKeyring:
    return LocalKeyring.generate("k1")


@pytest.fixture
def store(engine: sa.Engine, keyring: LocalKeyring) -> Iterator[SecretStore]:
    secrets = SecretStore(engine, Encryptor(keyring), table="test_credential_store")
    secrets.table.drop(engine, checkfirst=True)
    assert secrets.create_table() is True
    assert secrets.create_table() is False  # idempotent
    yield secrets
    secrets.table.drop(engine, checkfirst=True)


def test_put_then_get_and_versions(store: SecretStore) -> None:  # cases 8, 10-12
    assert store.put("app.db.pass", "hunter2") == 1
    assert store.put("app.db.pass", "hunter3") == 2
    assert store.get("app.db.pass") == "hunter3"
    assert store.get("app.db.pass", version=1) == "hunter2"
    assert store.put("app.db.pass", "v9", version=9) == 9
    assert store.put("app.db.pass", "v10") == 10  # numeric, not string order
    assert store.get("app.db.pass") == "v10"


def test_a_taken_version_raises_and_changes_nothing(store: SecretStore) -> None:  # case 9
    store.put("name", "first", version=1)
    with pytest.raises(SecretExists, match="version 1"):
        store.put("name", "second", version=1)
    assert store.get("name") == "first"
    assert [info.version for info in store.history("name")] == [1]


def test_missing_names_and_versions(store: SecretStore) -> None:  # case 17
    with pytest.raises(SecretNotFound, match="'nope' not found"):
        store.get("nope")
    store.put("there", "x")
    with pytest.raises(SecretNotFound, match="version 7"):
        store.get("there", version=7)
    with pytest.raises(KeyError):  # SecretNotFound is a KeyError too
        store.get("nope")


def test_the_context_must_be_given_again(store: SecretStore) -> None:  # case 15
    store.put("app.api", "s3cret-api-key-value", context={"env": "prod", "team": "a"})
    assert store.get("app.api", context={"team": "a", "env": "prod"}) == "s3cret-api-key-value"
    for wrong in (None, {"env": "dev", "team": "a"}, {"env": "prod"}):
        with pytest.raises(DecryptionError) as raised:
            store.get("app.api", context=wrong)
        assert "app.api" in str(raised.value) and "s3cret" not in str(raised.value)
    assert store.list()[0].context == {"env": "prod", "team": "a"}
    with pytest.raises(ConfigurationError, match="reserved"):
        store.put("x", "y", context={"sqla_envelope:name": "other"})


def test_a_value_moved_to_another_name_or_version_fails(  # case 27
    engine: sa.Engine, store: SecretStore
) -> None:
    store.put("a", "value of a")
    store.put("b", "value of b")
    store.put("b", "newer b")
    t = store.table
    with engine.begin() as conn:
        payload = conn.execute(sa.select(t.c.payload).where(t.c.name == "a")).scalar_one()
        conn.execute(t.update().where(t.c.name == "b", t.c.version == 2).values(payload=payload))
    with pytest.raises(DecryptionError):
        store.get("b")
    with engine.begin() as conn:
        old = conn.execute(
            sa.select(t.c.payload).where(t.c.name == "b", t.c.version == 1)
        ).scalar_one()
        conn.execute(t.update().where(t.c.name == "b", t.c.version == 2).values(payload=old))
    with pytest.raises(DecryptionError):  # an older version replayed as the latest
        store.get("b")


def test_binary_and_empty_values_keep_their_type(store: SecretStore) -> None:  # cases 29, 30
    blob = bytes(range(256))
    store.put("bin", blob)
    store.put("empty", "")
    store.put("text", "pässwörd ✓")
    assert store.get("bin") == blob and isinstance(store.get("bin"), bytes)
    assert store.get("empty") == ""
    assert store.get("text") == "pässwörd ✓"


def test_get_all_reads_the_latest_of_each_in_one_query(
    engine: sa.Engine, store: SecretStore
) -> None:  # cases 22, 28
    store.put("app.db.user", "u")
    store.put("app.db.pass", "p1")
    store.put("app.db.pass", "p2")
    store.put("appXdbY", "not matched by app.db*")
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        everything = store.get_all()
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert everything == {
        "app.db.pass": "p2",
        "app.db.user": "u",
        "appXdbY": "not matched by app.db*",
    }
    assert len(statements) == 1
    assert store.get_all(pattern="app.db*") == {"app.db.pass": "p2", "app.db.user": "u"}


def test_get_all_fails_whole_or_skips_and_says_so(store: SecretStore) -> None:  # case 24
    store.put("open", "o")
    store.put("needs.context", "c", context={"env": "prod"})
    with pytest.raises(DecryptionError, match=r"needs\.context"):
        store.get_all()
    partial = store.get_all(skip_undecryptable=True)
    assert partial == {"open": "o"} and partial.skipped == ["needs.context"]
    assert "'o'" not in repr(partial)


def test_list_keys_history_delete_prune(store: SecretStore) -> None:  # cases 14, 19
    for value in ("1", "2", "3", "4"):
        store.put("b.name", value, comment=f"v{value}")
    store.put("a.name", "x")
    assert [(i.name, i.version) for i in store.list()] == [
        ("a.name", 1),
        ("b.name", 1),
        ("b.name", 2),
        ("b.name", 3),
        ("b.name", 4),
    ]
    assert store.keys() == ["a.name", "b.name"]
    assert [i.comment for i in store.history("b.name")] == ["v1", "v2", "v3", "v4"]
    assert store.history("b.name")[0].created_at is not None
    assert store.prune("b.name", keep=2) == 2
    assert [i.version for i in store.history("b.name")] == [3, 4]
    assert store.delete("b.name", version=3) == 1
    assert store.get("b.name") == "4"
    assert store.delete("b.name") == 1
    with pytest.raises(SecretNotFound):
        store.get("b.name")
    assert store.delete("b.name") == 0


def test_repeated_reads_go_through_the_key_cache(store: SecretStore) -> None:  # case 28
    store.put("cached", "value")
    encryptor = store.encryptor
    encryptor.clear_cache()
    before = encryptor.stats()["unwraps"]
    store.get("cached")
    store.get("cached")
    assert encryptor.stats()["unwraps"] == before + 1
    encryptor.clear_cache()
    store.get("cached")
    assert encryptor.stats()["unwraps"] == before + 2


def _put_many(url: str, key: bytes, count: int) -> list[int]:
    engine = sa.create_engine(url)
    store = SecretStore(engine, Encryptor(LocalKeyring({"k1": key})), table="test_credential_store")
    versions = [store.put("contended", f"from {os.getpid()}") for _ in range(count)]
    engine.dispose()
    return versions


def test_concurrent_autoversioned_puts_lose_nothing(
    engine: sa.Engine, store: SecretStore, keyring: LocalKeyring
) -> None:  # case 26 and issue 16's 4 x 50
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite serializes writers; the race is on the servers")
    url = engine.url.render_as_string(hide_password=False)
    key = keyring._keys["k1"]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_put_many, [(url, key, 50)] * 4)
    versions = sorted(v for batch in results for v in batch)
    assert versions == list(range(1, 201))
    assert [i.version for i in store.history("contended")] == list(range(1, 201))


def test_names_are_case_sensitive_on_every_database(store: SecretStore) -> None:
    # MariaDB's default collation would make 'App' and 'app' one key, and find one
    # for the other.
    store.put("app.Token", "lower-a")
    store.put("App.token", "upper-a")
    assert store.get("app.Token") == "lower-a"
    assert store.get("App.token") == "upper-a"
    with pytest.raises(SecretNotFound):
        store.get("APP.TOKEN")
    assert store.keys() == sorted(["app.Token", "App.token"])
