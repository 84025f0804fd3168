"""A key rollout while the application runs: no process ever fails a read.

Issue 13: ``keys add`` then ``rewrap`` broke running applications, which never
reloaded their key file. A keyring read with ``LocalKeyring.from_file`` now
follows its file. Here a second process reads the table in a loop from start
to end of a rotation (add, set-primary, writes under the new key, rewrap,
remove) done by this one, on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import sqla_envelope
from sqla_envelope import ConfigurationError, EncryptedType, Encryptor, LocalKeyring
from sqla_envelope.cli import main
from sqla_envelope.context import EncryptionContext

CONTEXT = EncryptionContext({"table": "t", "column": "c"})

READER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import sqlalchemy as sa
    import sqla_envelope
    from sqla_envelope import EncryptedType, Encryptor, LocalKeyring

    url, key_file, stop, ready = sys.argv[1:5]
    keyring = LocalKeyring.from_file(key_file, check_interval=0.1)
    sqla_envelope.configure(Encryptor(keyring, cache_ttl=0))
    table = sa.Table(
        "rollout", sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("secret", EncryptedType(sa.String(40))),
    )
    engine = sa.create_engine(url)
    reads, failures, seen = 0, [], {}
    while True:
        last = Path(stop).exists()  # one more full read after the stop file appears
        try:
            with engine.connect() as conn:
                seen = dict(conn.execute(sa.select(table.c.id, table.c.secret)).all())
            reads += 1
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        Path(ready).touch()
        if last:
            break
        time.sleep(0.02)
    print(json.dumps({"reads": reads, "failures": failures[:5], "count": len(failures),
                      "seen": seen, "held": list(keyring.key_ids)}))
    """
)


@pytest.fixture
def rollout_table(engine: sa.Engine) -> Iterator[sa.Table]:
    metadata = sa.MetaData()
    table = sa.Table(
        "rollout",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("secret", EncryptedType(sa.String(40))),
    )
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield table
    metadata.drop_all(engine)


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _write(engine: sa.Engine, table: sa.Table, rows: range) -> None:
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "secret": f"secret-{i}"} for i in rows])


def test_a_reader_process_reads_through_a_whole_rotation(
    engine: sa.Engine,
    rollout_table: sa.Table,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["keys", "generate", "app.keys.json", "--key-id", "old"]) == 0
    app = LocalKeyring.from_file("app.keys.json", check_interval=0.1)
    sqla_envelope.configure(Encryptor(app))
    _write(engine, rollout_table, range(0, 10))

    url = engine.url.render_as_string(hide_password=False)
    stop, ready = tmp_path / "stop", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, url, str(tmp_path / "app.keys.json"), str(stop), str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_for(ready)
        # 1. The new key goes everywhere first ... 2. ... then becomes the primary.
        assert main(["keys", "add", "app.keys.json", "--key-id", "new", "--no-primary"]) == 0
        time.sleep(0.3)
        assert main(["keys", "set-primary", "app.keys.json", "new"]) == 0
        time.sleep(0.2)  # this process's writes take up the new primary
        _write(engine, rollout_table, range(10, 20))
        # 3. Every old value moves to the new key; 4. the old key goes.
        argv = ["--url", url, "--table", "rollout", "--column", "secret"]
        keys = ["--key-file", "app.keys.json", "--to-key-file", "app.keys.json"]
        assert main(["rewrap", *argv, *keys, "--batch-size", "4"]) == 0
        assert main(["keys", "remove", "app.keys.json", "old"]) == 0
        time.sleep(0.3)
        _write(engine, rollout_table, range(20, 25))
        ready.unlink()
        _wait_for(ready)  # at least one full read after the last step
        stop.touch()
        out, err = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
    capsys.readouterr()
    assert reader.returncode == 0, err
    result = json.loads(out)
    assert result["count"] == 0, result["failures"]
    assert result["reads"] >= 3
    assert result["seen"] == {str(i): f"secret-{i}" for i in range(25)}
    assert "new" in result["held"]
    assert app.primary == "new" and app.key_ids == ("new",)


def test_a_value_under_a_key_added_to_the_file_is_read_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    LocalKeyring({"old": b"\x01" * 32}).to_file(path)
    reader = LocalKeyring.from_file(path, check_interval=3600)
    rotated = LocalKeyring.from_file(path, follow=False).with_new_primary("new")
    rotated.to_file(path)
    envelope = Encryptor(rotated).encrypt(b"secret", CONTEXT)
    assert Encryptor(reader).decrypt(envelope, CONTEXT) == b"secret"
    assert reader.key_ids == ("old", "new")


def test_writes_take_up_a_new_primary_within_the_check_interval(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    LocalKeyring({"old": b"\x01" * 32}).to_file(path)
    now = [0.0]
    writer = LocalKeyring.from_file(path, check_interval=5.0, clock=lambda: now[0])
    LocalKeyring.from_file(path, follow=False).with_new_primary("new").to_file(path)
    enc = Encryptor(writer)
    assert sqla_envelope.unpack_envelope(enc.encrypt(b"x", CONTEXT)).wrapped_keys[0].key_ref == (
        "old"
    )
    now[0] = 5.0
    assert sqla_envelope.unpack_envelope(enc.encrypt(b"x", CONTEXT)).wrapped_keys[0].key_ref == (
        "new"
    )


def test_a_broken_key_file_is_not_loaded_and_the_keys_held_stay_in_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "k.json"
    LocalKeyring({"old": b"\x01" * 32}).to_file(path)
    keyring = LocalKeyring.from_file(path)
    envelope = Encryptor(keyring).encrypt(b"secret", CONTEXT)
    path.chmod(0o644)  # readable by others: never loaded
    path.write_text(path.read_text() + " ")
    with pytest.raises(ConfigurationError, match="chmod 600"):
        keyring.reload()
    stranger = LocalKeyring({"other": b"\x02" * 32})
    foreign = Encryptor(stranger).encrypt(b"x", CONTEXT)
    with pytest.raises(sqla_envelope.DecryptionError):
        Encryptor(keyring).decrypt(foreign, CONTEXT)  # looks at the file, refuses it
    assert "chmod 600" in caplog.text and "\\x01" not in caplog.text
    assert Encryptor(keyring).decrypt(envelope, CONTEXT) == b"secret"


def test_reload_needs_a_key_file_and_reports_no_change(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        LocalKeyring.generate().reload()
    path = tmp_path / "k.json"
    LocalKeyring.generate("a").to_file(path)
    keyring = LocalKeyring.from_file(path)
    assert keyring.reload() is False
    keyring.with_new_primary("b").to_file(path)
    assert keyring.reload() is True and keyring.primary == "b"
    assert LocalKeyring.from_file(path, follow=False).with_primary("a")._watch is None
    assert EncryptedType  # the column type is unchanged by following
