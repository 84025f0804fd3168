"""The column commands through the CLI, on every database: rewrap, reencrypt, migrations, verify."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from kms_server import Key, aws_env_fixture, kms_endpoint_fixture, make_key_fixture  # noqa: F401

import sqla_envelope
from sqla_envelope import (
    DecryptionError,
    EncryptedType,
    Encryptor,
    LocalKeyring,
    MalformedEnvelopeError,
    unpack_envelope,
)
from sqla_envelope.cli import main
from sqla_envelope.maintenance import ColumnReport
from sqla_envelope.progress import RunDisplay, format_key

REPO = Path(__file__).resolve().parents[1]
ROWS = 23  # not a multiple of the batch sizes used
SUMMARY = re.compile(
    r"(?P<examined>\d+) examined, (?P<changed>\d+) (?:changed|would change), "
    r"(?P<skipped>\d+) already done, (?P<conflicts>\d+) changed by others meanwhile, "
    r"(?P<failed>\d+) failed"
    r"|(?P<verified>\d+) examined, (?P<fine>\d+) fine, (?P<bad>\d+) failed"
)
PROGRESS = re.compile(r"^\S+ \S+: ([\d,]+) of ([\d,]+) rows \(\d+%\), [\d,]+ rows/s, .* left")


@pytest.fixture(autouse=True)
def _no_default_encryptor() -> Iterator[None]:
    sqla_envelope.configure(None)
    yield
    sqla_envelope.configure(None)


@dataclass
class Keys:
    old: LocalKeyring
    new: LocalKeyring
    old_file: str
    new_file: str


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    old, new = LocalKeyring.generate("old"), LocalKeyring.generate("new")
    old.to_file(tmp_path / "old.keys.json")
    new.to_file(tmp_path / "new.keys.json")
    return Keys(old, new, str(tmp_path / "old.keys.json"), str(tmp_path / "new.keys.json"))


@pytest.fixture
def url(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture
def make_table(engine: sa.Engine) -> Iterator[Callable[..., sa.Table]]:
    """Create a table with a unique name and the given columns after ``id``; dropped after."""
    metadata = sa.MetaData()

    def make(*columns: sa.Column[Any], rows: list[dict[str, Any]] | None = None) -> sa.Table:
        name = f"cli_{uuid.uuid4().hex[:10]}"
        table = sa.Table(
            name, metadata, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            *columns,
        )  # fmt: skip
        table.create(engine)
        if rows:
            with engine.begin() as conn:
                conn.execute(table.insert(), rows)
        return table

    yield make
    metadata.drop_all(engine)


def view(table: sa.Table | str, column: str, type_: Any) -> sa.Table:
    """The table as another declaration sees it: ``id`` and ``column`` as ``type_``."""
    name = table if isinstance(table, str) else table.name
    return sa.Table(
        name, sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(column, type_),
    )  # fmt: skip


def read(engine: sa.Engine, table: sa.Table | str, column: str, type_: Any) -> dict[int, Any]:
    t = view(table, column, type_)
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(t.c.id, t.c[column]).order_by(t.c.id)).all())


def raw(engine: sa.Engine, table: sa.Table | str, column: str = "ssn") -> dict[int, Any]:
    """The stored values as they are: bytes, or text."""
    values = read(engine, table, column, sa.types.NullType())
    return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in values.items()}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert captured.out == ""
    return code, captured.err


def summary(err: str) -> dict[str, int]:
    """The counts of the run's summary line (verify has its own: examined, fine, failed)."""
    match = SUMMARY.search(err)
    assert match is not None, err
    if match["verified"] is not None:
        return {"examined": int(match["verified"]), "fine": int(match["fine"]),
                "failed": int(match["bad"])}  # fmt: skip
    return {name: int(v) for name, v in match.groupdict().items() if v is not None}


def assert_one_error_line(err: str) -> None:
    assert err.startswith("sqla-envelope: error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def ssns(count: int = ROWS) -> dict[int, str | None]:
    values: dict[int, str | None] = {i: f"ssn-{i}-Zoë" for i in range(1, count + 1)}
    values[count + 1] = None
    return values


@pytest.fixture
def patients(make_table: Callable[..., sa.Table], keys: Keys) -> sa.Table:
    """ssn encrypted under the old key file, with the default context."""
    rows = [{"id": i, "ssn": v} for i, v in ssns().items()]
    return make_table(
        sa.Column("ssn", EncryptedType(sa.String(40), Encryptor(keys.old))), rows=rows
    )


def common(url: str, table: sa.Table, column: str = "ssn") -> list[str]:
    return ["--url", url, "--table", table.name, "--column", column]


# -- rewrap -------------------------------------------------------------------------------


def test_rewrap_moves_every_value_to_the_new_key_file(
    engine: sa.Engine, url: str, patients: sa.Table, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    before = raw(engine, patients)
    argv = [*common(url, patients), "--key-file", keys.old_file, "--to-key-file", keys.new_file]
    code, err = run(capsys, "rewrap", *argv, "--batch-size", "7")
    assert code == 0, err
    assert summary(err) == {
        "examined": ROWS + 1, "changed": ROWS, "skipped": 1, "conflicts": 0, "failed": 0
    }  # fmt: skip
    assert f"last primary key: {ROWS + 1}" in err

    assert read(engine, patients, "ssn", EncryptedType(sa.String, Encryptor(keys.new))) == ssns()
    with pytest.raises(DecryptionError):
        read(engine, patients, "ssn", EncryptedType(sa.String, Encryptor(keys.old)))
    for row_id, stored in raw(engine, patients).items():
        if stored is None:
            continue
        old, new = unpack_envelope(before[row_id]), unpack_envelope(stored)
        assert [k.key_ref for k in new.wrapped_keys] == ["new"]
        assert new.commitment != old.commitment  # sealed anew under a fresh data key

    code, err = run(capsys, "rewrap", *argv)
    assert code == 0
    assert summary(err)["changed"] == 0
    assert summary(err)["skipped"] == ROWS + 1


def test_rewrap_to_the_new_primary_of_the_same_key_file(
    engine: sa.Engine, url: str, patients: sa.Table, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "add", keys.old_file, "--key-id", "next"]) == 0
    assert "sqla-envelope rewrap --url" in capsys.readouterr().out
    argv = [*common(url, patients), "--key-file", keys.old_file, "--to-key-file", keys.old_file]
    code, err = run(capsys, "rewrap", *argv)
    assert code == 0, err
    assert summary(err)["changed"] == ROWS
    refs = {unpack_envelope(v).wrapped_keys[0].key_ref for v in raw(engine, patients).values() if v}
    assert refs == {"next"}


def test_dry_run_changes_nothing(
    engine: sa.Engine, url: str, patients: sa.Table, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    before = raw(engine, patients)
    argv = [*common(url, patients), "--key-file", keys.old_file, "--to-key-file", keys.new_file]
    code, err = run(capsys, "rewrap", *argv, "--dry-run")
    assert code == 0
    assert f"{ROWS} would change" in err
    assert raw(engine, patients) == before


def test_two_shards_together_cover_every_row_exactly_once(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = [3, 4, 10, 11, 12, 40, 41, 90, 91, 99, 100, 250]  # uneven on purpose
    encrypted = EncryptedType(sa.String(40), Encryptor(keys.old))
    table = make_table(sa.Column("ssn", encrypted), rows=[{"id": i, "ssn": f"v{i}"} for i in ids])
    argv = [*common(url, table), "--key-file", keys.old_file, "--to-key-file", keys.new_file]
    counts = []
    for shard in ("0/2", "1/2"):
        code, err = run(capsys, "rewrap", *argv, "--shard", shard, "--batch-size", "2")
        assert code == 0, err
        counts.append(summary(err))
    assert sum(c["examined"] for c in counts) == len(ids)
    assert sum(c["changed"] for c in counts) == len(ids)
    assert all(c["examined"] > 0 for c in counts)
    expected = {i: f"v{i}" for i in ids}
    assert read(engine, table, "ssn", EncryptedType(sa.String, Encryptor(keys.new))) == expected


def test_start_after_resumes_after_that_key(
    engine: sa.Engine, url: str, patients: sa.Table, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*common(url, patients), "--key-file", keys.old_file, "--to-key-file", keys.new_file]
    code, err = run(capsys, "rewrap", *argv, "--start-after", "10", "--progress-interval", "0")
    assert code == 0
    assert summary(err)["examined"] == ROWS + 1 - 10
    assert f"of {ROWS + 1 - 10} rows" in err  # the progress total counts from the resume point
    refs = {
        row_id: unpack_envelope(v).wrapped_keys[0].key_ref
        for row_id, v in raw(engine, patients).items()
        if v is not None
    }
    assert {r for i, r in refs.items() if i <= 10} == {"old"}
    assert {r for i, r in refs.items() if i > 10} == {"new"}


def test_start_after_with_a_composite_key(
    engine: sa.Engine, url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    metadata = sa.MetaData()
    table = sa.Table(
        f"cli_{uuid.uuid4().hex[:10]}", metadata,
        sa.Column("region", sa.String(10), primary_key=True),
        sa.Column("n", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ssn", EncryptedType(sa.String(40), Encryptor(keys.old))),
    )  # fmt: skip
    metadata.create_all(engine)
    try:
        rows = [{"region": r, "n": n, "ssn": f"{r}{n}"} for r in ("eu", "us") for n in range(3)]
        with engine.begin() as conn:
            conn.execute(table.insert(), rows)
        argv = [*common(url, table), "--key-file", keys.old_file, "--to-key-file", keys.new_file]
        code, err = run(capsys, "rewrap", *argv, "--start-after", "eu,1")
        assert code == 0, err
        assert summary(err)["changed"] == 4  # (eu, 2) and the three us rows
        assert "last primary key: us,2" in err
        code, err = run(capsys, "rewrap", *argv, "--start-after", "eu")
        assert code == 2
        assert "2 value(s) for the primary key (region, n)" in err
    finally:
        metadata.drop_all(engine)


# -- reencrypt ----------------------------------------------------------------------------


def test_reencrypt_from_context_after_a_rename(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before_rename = {"table": "people", "column": "ssn"}
    encrypted = EncryptedType(sa.String(40), Encryptor(keys.old), context=before_rename)
    table = make_table(
        sa.Column("ssn", encrypted), rows=[{"id": i, "ssn": v} for i, v in ssns().items()]
    )
    old_bytes = raw(engine, table)
    argv = [*common(url, table), "--key-file", keys.old_file]
    code, err = run(capsys, "reencrypt", *argv, "--from-context", json.dumps(before_rename))
    assert code == 0, err
    assert summary(err)["changed"] == ROWS

    current = read(engine, table, "ssn", EncryptedType(sa.String, Encryptor(keys.old)))
    assert current == ssns()
    assert all(raw(engine, table)[i] != old_bytes[i] for i in range(1, ROWS + 1))

    code, err = run(capsys, "reencrypt", *argv, "--from-context", json.dumps(before_rename))
    assert code == 0
    assert summary(err)["changed"] == 0


def test_reencrypt_under_another_key_file_with_a_custom_context(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    label = {"label": "patient.ssn"}
    encrypted = EncryptedType(sa.String(40), Encryptor(keys.old), context=label)
    table = make_table(
        sa.Column("ssn", encrypted), rows=[{"id": i, "ssn": v} for i, v in ssns().items()]
    )
    argv = [*common(url, table), "--key-file", keys.old_file, "--to-key-file", keys.new_file]
    code, err = run(capsys, "reencrypt", *argv, "--context", json.dumps(label))
    assert code == 0, err
    values = read(
        engine, table, "ssn", EncryptedType(sa.String, Encryptor(keys.new), context=label)
    )
    assert values == ssns()


# -- encrypt-column -----------------------------------------------------------------------


def test_encrypt_column_in_place_base64_text(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = make_table(
        sa.Column("ssn", sa.Text), rows=[{"id": i, "ssn": v} for i, v in ssns().items()]
    )
    argv = [*common(url, table), "--key-file", keys.old_file, "--storage", "base64"]
    code, err = run(capsys, "encrypt-column", *argv, "--batch-size", "5")
    assert code == 0, err
    assert summary(err)["changed"] == ROWS
    stored = raw(engine, table)
    assert all(unpack_envelope(base64.b64decode(v)) for v in stored.values() if v is not None)
    encrypted = EncryptedType(sa.String, Encryptor(keys.old), storage="base64")
    assert read(engine, table, "ssn", encrypted) == ssns()

    code, err = run(capsys, "encrypt-column", *argv)
    assert code == 0
    assert summary(err)["changed"] == 0


def test_encrypt_column_in_place_binary_utf8_bytes(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bytea/BLOB column holding UTF-8 plaintext, as after ALTER ... TYPE bytea."""
    rows = [{"id": i, "ssn": v.encode() if v else None} for i, v in ssns().items()]
    table = make_table(sa.Column("ssn", sa.LargeBinary), rows=rows)
    code, err = run(capsys, "encrypt-column", *common(url, table), "--key-file", keys.old_file)
    assert code == 0, err
    assert summary(err)["changed"] == ROWS
    assert read(engine, table, "ssn", EncryptedType(sa.String, Encryptor(keys.old))) == ssns()


def test_encrypt_column_in_place_into_a_text_column_needs_base64(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite stores bytes in a TEXT column")
    table = make_table(sa.Column("ssn", sa.Text), rows=[{"id": 1, "ssn": "x"}])
    code, err = run(capsys, "encrypt-column", *common(url, table), "--key-file", keys.old_file)
    assert code == 2
    assert_one_error_line(err)
    assert "--storage base64" in err
    assert raw(engine, table) == {1: "x"}


COMMANDS = {
    "verify": [],
    "rewrap": ["--to-key-file"],
    "reencrypt": [],
    "encrypt-column": [],
    "decrypt-column": [],
}
WRONG_COLUMNS = {
    "date": (sa.Date, dt.date(1985, 4, 12), [], "cannot hold envelopes"),
    "integer": (sa.Integer, 7, [], "cannot hold envelopes"),
    "base64-on-binary": (sa.LargeBinary, b"x", ["--storage", "base64"], "--storage base64"),
}


@pytest.mark.parametrize("case", list(WRONG_COLUMNS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_column_that_cannot_hold_envelopes_is_a_usage_error_before_any_row(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
    command: str,
    case: str,
) -> None:
    # Issue 13: a DATE column printed "TypeError: cannot convert 'datetime.date'
    # object to bytes" with a traceback, from every column command.
    type_, value, options, message = WRONG_COLUMNS[case]
    table = make_table(sa.Column("ssn", type_), rows=[{"id": 1, "ssn": value}])
    extra = [keys.new_file] if COMMANDS[command] else []
    argv = [*common(url, table), "--key-file", keys.old_file, *COMMANDS[command], *extra]
    code, err = run(capsys, command, *argv, *options)
    assert code == 2, err
    assert "Traceback" not in err
    assert_one_error_line(err)
    assert message in err
    assert raw(engine, table)[1] in (value, str(value))  # SQLite keeps a date as text


@pytest.mark.parametrize(
    ("plain_type", "values"),
    [
        (sa.String(30), {1: "alice", 2: "Zoë", 3: None}),
        (sa.Integer, {1: 1985, 2: -7, 3: None}),
    ],
    ids=["string", "integer"],
)
def test_encrypt_column_from_a_source_column_uses_its_type(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
    plain_type: Any,
    values: dict[int, Any],
) -> None:
    table = make_table(
        sa.Column("plain", plain_type),
        sa.Column("secret", sa.LargeBinary),
        rows=[{"id": i, "plain": v, "secret": None} for i, v in values.items()],
    )
    argv = [*common(url, table, "secret"), "--from-column", "plain", "--key-file", keys.old_file]
    code, err = run(capsys, "encrypt-column", *argv)
    assert code == 0, err
    assert summary(err)["changed"] == 2
    # Exactly what the application's EncryptedType(<the plaintext type>) reads.
    assert read(engine, table, "secret", EncryptedType(plain_type, Encryptor(keys.old))) == values

    code, err = run(capsys, "encrypt-column", *argv)
    assert code == 0, err
    assert summary(err)["changed"] == 0


# -- decrypt-column -----------------------------------------------------------------------


def test_decrypt_column_in_place(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    encrypted = EncryptedType(sa.String, Encryptor(keys.old), storage="base64")
    table = make_table(
        sa.Column("ssn", encrypted), rows=[{"id": i, "ssn": v} for i, v in ssns().items()]
    )
    argv = [*common(url, table), "--key-file", keys.old_file, "--storage", "base64"]
    code, err = run(capsys, "decrypt-column", *argv)
    assert code == 0, err
    assert summary(err)["changed"] == ROWS
    assert raw(engine, table) == ssns()
    for value in ssns().values():
        assert value is None or value not in err


@pytest.mark.parametrize(
    ("plain_type", "values"),
    [
        (sa.String(30), {1: "alice", 2: "Zoë", 3: None}),
        (sa.Integer, {1: 1985, 2: -7, 3: None}),
    ],
    ids=["string", "integer"],
)
def test_decrypt_column_into_a_target_column_uses_its_type(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
    plain_type: Any,
    values: dict[int, Any],
) -> None:
    table = make_table(
        sa.Column("secret", EncryptedType(plain_type, Encryptor(keys.old))),
        sa.Column("plain", plain_type),
        rows=[{"id": i, "secret": v, "plain": None} for i, v in values.items()],
    )
    argv = [*common(url, table, "secret"), "--to-column", "plain", "--key-file", keys.old_file]
    code, err = run(capsys, "decrypt-column", *argv)
    assert code == 0, err
    assert summary(err)["changed"] == 2
    assert read(engine, table, "plain", plain_type) == values


# -- verify -------------------------------------------------------------------------------


def test_verify_passes_a_clean_column(
    url: str, patients: sa.Table, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(capsys, "verify", *common(url, patients), "--key-file", keys.old_file)
    assert code == 0, err
    assert summary(err) == {"examined": ROWS + 1, "fine": ROWS + 1, "failed": 0}


def test_verify_reports_a_tampered_row_by_primary_key(
    engine: sa.Engine, url: str, patients: sa.Table, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = raw(engine, patients)[7]
    tampered = stored[:-1] + bytes([stored[-1] ^ 1])
    t = view(patients, "ssn", sa.LargeBinary)
    with engine.begin() as conn:
        conn.execute(t.update().where(t.c.id == 7).values(ssn=tampered))
    code, err = run(capsys, "verify", *common(url, patients), "--key-file", keys.old_file)
    assert code == 1
    assert summary(err)["failed"] == 1
    assert re.search(r"failed: row id=7: ", err)
    assert "ssn-" not in err


def test_verify_of_a_plaintext_column_fails_every_row(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [{"id": i, "ssn": f"secret-{i}".encode()} for i in range(1, 4)]
    table = make_table(sa.Column("ssn", sa.LargeBinary), rows=rows)
    code, err = run(capsys, "verify", *common(url, table), "--key-file", keys.old_file)
    assert code == 1
    assert summary(err)["failed"] == 3
    assert [f"row id={i}" in err for i in range(1, 4)] == [True] * 3
    assert "secret-" not in err


def test_verify_with_a_logical_type_checks_the_values(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = make_table(
        sa.Column("ssn", EncryptedType(sa.String(10), Encryptor(keys.old))),
        rows=[{"id": 1, "ssn": "abc"}],
    )
    argv = [*common(url, table), "--key-file", keys.old_file]
    assert run(capsys, "verify", *argv, "--logical", "string")[0] == 0
    code, err = run(capsys, "verify", *argv, "--logical", "integer")
    assert code == 1
    assert "not a valid integer encoding" in err


def test_strict_stops_at_the_first_bad_row_and_says_where_to_resume(
    engine: sa.Engine, url: str, patients: sa.Table, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    t = view(patients, "ssn", sa.LargeBinary)
    with engine.begin() as conn:
        conn.execute(t.update().where(t.c.id == 12).values(ssn=b"\x01not an envelope at all"))
    argv = [*common(url, patients), "--key-file", keys.old_file, "--to-key-file", keys.new_file]
    code, err = run(capsys, "rewrap", *argv, "--strict", "--batch-size", "5")
    assert code == 1
    first, second = err.splitlines()
    assert first.startswith("sqla-envelope: error: --strict: a row cannot be decrypted")
    assert second.endswith("run the same command with --start-after 10")
    refs = [
        unpack_envelope(v).wrapped_keys[0].key_ref
        for i, v in sorted(raw(engine, patients).items())
        if v is not None and i != 12
    ]
    assert refs[:10] == ["new"] * 10  # the batches before the bad row are committed
    assert set(refs[10:]) == {"old"}


# -- progress and summary -----------------------------------------------------------------


def test_progress_lines_and_summary_on_stderr_when_not_a_terminal(
    url: str, patients: sa.Table, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*common(url, patients), "--key-file", keys.old_file, "--to-key-file", keys.new_file]
    code, err = run(capsys, "rewrap", *argv, "--batch-size", "5", "--progress-interval", "0")
    assert code == 0
    lines = err.splitlines()
    progress = [line for line in lines if PROGRESS.match(line)]
    assert len(progress) == 5  # one a batch with --progress-interval 0
    assert progress[0].startswith(f"rewrap {patients.name}.ssn: 5 of {ROWS + 1} rows (21%)")
    assert progress[-1].endswith(f"last key id={ROWS + 1}")
    assert "\r" not in err
    assert SUMMARY.search(lines[-3])
    assert re.fullmatch(r"rewrap \S+: \d:\d\d:\d\d elapsed, [\d,]+ rows/s", lines[-2])
    assert lines[-1] == f"last primary key: {ROWS + 1}"


def test_a_terminal_gets_one_bar_redrawn_in_place(
    url: str,
    patients: sa.Table,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = [*common(url, patients), "--key-file", keys.old_file, "--to-key-file", keys.new_file]
    assert main(["rewrap", *argv, "--batch-size", "5"]) == 0
    bar, *rest = terminal.getvalue().split("\n")
    assert bar.startswith(f"\rrewrap {patients.name}.ssn [")
    assert re.search(
        rf"\[#{{24}}\] {ROWS + 1}/{ROWS + 1} 100% [\d,]+ rows/s 0:00:00 left\x1b\[K$", bar
    )
    assert SUMMARY.search(rest[0])


class TestRunDisplay:
    def display(self, interactive: bool) -> tuple[RunDisplay, io.StringIO, list[float]]:
        now = [100.0]
        stream = io.StringIO()
        shown = RunDisplay(
            "rewrap t.c", 1000, ["id"], stream=stream, interactive=interactive,
            interval=5.0, clock=lambda: now[0],
        )  # fmt: skip
        return shown, stream, now

    def test_plain_lines_come_every_interval_with_rate_and_time_left(self) -> None:
        shown, stream, now = self.display(False)
        report = ColumnReport("t", "c")
        for step in range(1, 9):
            now[0] += 1.0
            report.examined, report.last_key = 100 * step, (100 * step,)
            shown(report)
        assert stream.getvalue().splitlines() == [
            "rewrap t.c: 500 of 1,000 rows (50%), 100 rows/s, 0:00:05 left, last key id=500",
        ]

    def test_the_bar_is_redrawn_at_most_ten_times_a_second(self) -> None:
        shown, stream, now = self.display(True)
        report = ColumnReport("t", "c")
        for step in range(1, 10):
            now[0] += 0.0625  # exact in binary: every second batch is 0.125 s after a redraw
            report.examined = 100 * step
            shown(report)
        assert stream.getvalue().count("\r") == 4
        assert stream.getvalue().endswith(
            "\rrewrap t.c [###################-----] 800/1,000  80% 1,600 rows/s 0:00:00 left\x1b[K"
        )

    def test_summary_lists_failures_by_key_and_conflicts(self) -> None:
        shown, stream, _ = self.display(False)
        report = ColumnReport("t", "c", examined=3, changed=1, conflicts=1, last_key=(3,))
        report.failures.append(((2,), "tampered"))
        shown.finish(report)
        out = stream.getvalue()
        assert "  failed: row id=2: tampered\n" in out
        assert "1 rows were changed by others while being processed; run again" in out
        assert out.endswith("last primary key: 3\n")

    @pytest.mark.parametrize(
        ("key", "text"),
        [((17,), "17"), (("eu", 2), "eu,2"), (("a,b", 1), '["a,b", 1]'), (("",), '[""]')],
    )
    def test_format_key_writes_what_start_after_reads(
        self, key: tuple[Any, ...], text: str
    ) -> None:
        assert format_key(key) == text


# -- errors -------------------------------------------------------------------------------


def test_unknown_column_is_one_error_line(
    url: str, patients: sa.Table, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*common(url, patients, "nope"), "--key-file", keys.old_file]
    code, err = run(capsys, "verify", *argv)
    assert code == 1
    assert_one_error_line(err)
    assert "has no column 'nope' (it has id, ssn)" in err


def test_unknown_table_is_one_error_line(
    url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--url", url, "--table", "cli_missing", "--column", "c", "--key-file", keys.old_file]
    code, err = run(capsys, "verify", *argv)
    assert code == 1
    assert_one_error_line(err)
    assert "no table 'cli_missing'" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "rewrap needs the keys that read the values: pass --key-file"),
        (["--key-file", "K"], "rewrap needs the key to write under: pass --to-key-file"),
        (["--key-file", "K", "--to-key-file", "K", "--shard", "2/2"], "--shard 2/2:"),
        (["--key-file", "K", "--to-key-file", "K", "--context", "[1]"], "--context takes a JSON"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    keys: Keys, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["--url", "sqlite://", "--table", "t", "--column", "c"]
    argv += [keys.old_file if arg == "K" else arg for arg in extra]
    code, err = run(capsys, "rewrap", *argv)
    assert code == 2
    assert_one_error_line(err)
    assert message in err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--batch-size", "0", "'0' is not a whole number of at least 1"),
        ("--batch-size", "ten", "'ten' is not a whole number of at least 1"),
        ("--progress-interval", "-1", "'-1' is not a number of seconds, 0 or more"),
        ("--progress-interval", "nan", "'nan' is not a number of seconds, 0 or more"),
    ],
)
def test_bad_run_options_exit_2_and_say_why(
    keys: Keys, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    argv = ["--url", "sqlite://", "--table", "t", "--column", "c", "--key-file", keys.old_file]
    assert main(["verify", *argv, option, value]) == 2
    assert f"argument {option}: {message}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["encrypt-column", "--logical", "integer"], "--logical integer values cannot be changed"),
        (["reencrypt", "--kms-key-id", "alias/x"], "reencrypt writes under one key"),
        (["reencrypt", "--from-context", "{bad"], "--from-context takes a JSON object"),
        (["encrypt-column", "--kms-key-id", "alias/x"], "encrypt-column encrypts under one key"),
    ],
)
def test_commands_that_write_need_one_writer_and_in_place_types(
    url: str,
    patients: sa.Table,
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    command, *extra = argv
    code, err = run(capsys, command, *common(url, patients), "--key-file", keys.old_file, *extra)
    assert code == 2
    assert_one_error_line(err)
    assert message in err


def test_a_database_error_mid_run_hides_quoted_values(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = make_table(
        sa.Column("secret", EncryptedType(sa.String(30), Encryptor(keys.old))),
        sa.Column("plain", sa.String(30), unique=True),
        rows=[{"id": i, "secret": "secret-dup-7", "plain": None} for i in (1, 2)],
    )
    argv = [*common(url, table, "secret"), "--to-column", "plain", "--key-file", keys.old_file]
    code, err = run(capsys, "decrypt-column", *argv)
    assert code == 1
    first, second = err.splitlines()
    assert first.startswith("sqla-envelope: error: database: ")
    # A rerun meets the same duplicate: the advice is to fix it first.
    assert second == "nothing was changed: fix it, then run the same command again"
    assert "secret-dup" not in err
    assert read(engine, table, "plain", sa.String) == {1: None, 2: None}


def test_bad_url_is_a_usage_error_and_a_missing_sqlite_file_is_not_created(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--table", "t", "--column", "c", "--key-file", keys.old_file]
    code, err = run(capsys, "verify", "--url", "not a url", *argv)
    assert code == 2
    assert_one_error_line(err)
    missing = tmp_path / "missing.db"
    code, err = run(capsys, "verify", "--url", f"sqlite:///{missing}", *argv)
    assert code == 1
    assert_one_error_line(err)
    assert not missing.exists()


def test_missing_key_file_is_one_error_line(
    url: str, patients: sa.Table, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*common(url, patients), "--key-file", str(tmp_path / "none.json")]
    code, err = run(capsys, "verify", *argv)
    assert code == 1
    assert_one_error_line(err)


def test_output_never_holds_plaintext_or_key_bytes(
    url: str, patients: sa.Table, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*common(url, patients), "--key-file", keys.old_file]
    _, err = run(capsys, "decrypt-column", *argv, "--dry-run", "--progress-interval", "0")
    _, err2 = run(capsys, "verify", *argv, "--progress-interval", "0")
    secrets = [
        form
        for path in (keys.old_file, keys.new_file)
        for key in json.loads(Path(path).read_text())["keys"].values()
        for form in (key, base64.b64decode(key).hex())
    ]
    for text in (err, err2):
        assert "ssn-" not in text
        assert not any(secret in text for secret in secrets)


@pytest.mark.parametrize(
    "command", ["rewrap", "reencrypt", "encrypt-column", "decrypt-column", "verify"]
)
def test_every_column_command_has_help_with_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sqla-envelope {command}")
    assert "example" in out
    assert f"sqla-envelope {command} --url" in out


# -- KMS ----------------------------------------------------------------------------------


def test_rewrap_from_a_key_file_to_kms_then_verify_with_either(
    tmp_path: Path,
    keys: Keys,
    make_key: Callable[..., Key],
    kms_endpoint: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'kms.db'}")
    metadata = sa.MetaData()
    table = sa.Table(
        "patients", metadata, sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ssn", EncryptedType(sa.String(40), Encryptor(keys.old))),
    )  # fmt: skip
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "ssn": f"ssn-{i}"} for i in range(1, 9)])
    key = make_key()
    argv = ["--url", str(engine.url), "--table", "patients", "--column", "ssn"]
    kms = ["--region", key.region, "--endpoint-url", kms_endpoint]

    # Half the rows to KMS: the column then needs both keyrings to read.
    code, err = run(capsys, "rewrap", *argv, "--key-file", keys.old_file,
                    "--to-kms-key-id", key.alias_name, *kms, "--shard", "0/2")  # fmt: skip
    assert code == 0, err
    assert summary(err)["changed"] == 4
    code, err = run(capsys, "verify", *argv, "--kms-key-id", key.arn, *kms)
    assert code == 1
    assert summary(err)["failed"] == 4
    code, err = run(capsys, "verify", *argv, "--kms-key-id", key.arn, "--key-file",
                    keys.old_file, *kms)  # fmt: skip
    assert code == 0, err
    engine.dispose()


# -- crash safety -------------------------------------------------------------------------

CRASH_ROWS = 20_000


def _killed_after_first_progress_line(argv: list[str]) -> None:
    """Run the command in a child process and SIGKILL it once it reports progress."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqla_envelope", *argv, "--batch-size", "200",
         "--progress-interval", "0.2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        match = PROGRESS.match(line)
        if match and int(match.group(1).replace(",", "")) > 0:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "".join(lines)


def _crash_db(tmp_path: Path, column: sa.Column[Any], values: dict[int, Any]) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'crash.db'}")
    metadata = sa.MetaData()
    table = sa.Table("patients", metadata, sa.Column("id", sa.Integer, primary_key=True), column)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "ssn": v} for i, v in values.items()])
    return engine


def test_rewrap_killed_midway_finishes_on_the_next_run(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    values = {i: f"ssn-{i}" for i in range(1, CRASH_ROWS + 1)}
    column = sa.Column("ssn", EncryptedType(sa.String(20), Encryptor(keys.old)))
    engine = _crash_db(tmp_path, column, values)
    argv = ["rewrap", "--url", str(engine.url), "--table", "patients", "--column", "ssn",
            "--key-file", keys.old_file, "--to-key-file", keys.new_file]  # fmt: skip
    table = "patients"

    _killed_after_first_progress_line(argv)
    refs = [unpack_envelope(v).wrapped_keys[0].key_ref for v in raw(engine, table).values()]
    done = refs.count("new")
    assert 0 < done < CRASH_ROWS
    assert refs.count("old") == CRASH_ROWS - done

    code, err = run(capsys, *argv, "--batch-size", "1000")
    assert code == 0, err
    counts = summary(err)
    assert counts["changed"] + done == CRASH_ROWS
    assert counts["skipped"] == done
    assert read(engine, table, "ssn", EncryptedType(sa.String, Encryptor(keys.new))) == values
    engine.dispose()


def test_encrypt_column_killed_midway_finishes_on_the_next_run(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    values = {i: f"ssn-{i}" for i in range(1, CRASH_ROWS + 1)}
    engine = _crash_db(tmp_path, sa.Column("ssn", sa.Text), values)
    argv = ["encrypt-column", "--url", str(engine.url), "--table", "patients", "--column", "ssn",
            "--key-file", keys.old_file, "--storage", "base64"]  # fmt: skip
    table = "patients"

    _killed_after_first_progress_line(argv)
    done = 0
    for stored in raw(engine, table).values():
        try:
            unpack_envelope(base64.b64decode(stored, validate=True))
            done += 1
        except (MalformedEnvelopeError, ValueError):
            pass
    assert 0 < done < CRASH_ROWS

    code, err = run(capsys, *argv, "--batch-size", "1000")
    assert code == 0, err
    assert summary(err)["changed"] + done == CRASH_ROWS
    encrypted = EncryptedType(sa.String, Encryptor(keys.old), storage="base64")
    assert read(engine, table, "ssn", encrypted) == values
    engine.dispose()


# -- options from the environment ----------------------------------------------------------


def test_url_and_key_file_come_from_the_environment(
    url: str,
    patients: sa.Table,
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A database password on the command line shows in ps and the shell history.
    monkeypatch.setenv("SQLA_ENVELOPE_URL", url)
    monkeypatch.setenv("SQLA_ENVELOPE_KEY_FILE", keys.old_file)
    code, err = run(capsys, "verify", "--table", patients.name, "--column", "ssn")
    assert code == 0, err
    assert summary(err) == {"examined": ROWS + 1, "fine": ROWS + 1, "failed": 0}
    # A flag still wins over the variable.
    monkeypatch.setenv("SQLA_ENVELOPE_URL", "postgresql://nobody@127.0.0.1:1/none")
    code, err = run(capsys, "verify", *common(url, patients), "--key-file", keys.old_file)
    assert code == 0, err


def test_without_url_or_variable_the_usage_error_names_both(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SQLA_ENVELOPE_URL", raising=False)
    code = main(["verify", "--table", "t", "--column", "c", "--key-file", "k.json"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--url" in err
    main(["verify", "--help"])
    assert "SQLA_ENVELOPE_URL" in capsys.readouterr().out


# -- a run whose rows all fail the same way -----------------------------------------------


@pytest.mark.parametrize("command", ["verify", "rewrap", "reencrypt", "decrypt-column"])
def test_a_wrong_key_file_stops_early_with_one_summary_naming_the_cause(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    # Issue 13: a wrong key file on 50,000 rows wrote a line per row and never
    # said why. 150 rows under the old key, read with an unrelated key file.
    rows = [{"id": i, "ssn": f"ssn-{i}"} for i in range(1, 151)]
    table = make_table(
        sa.Column("ssn", EncryptedType(sa.String(40), Encryptor(keys.old))), rows=rows
    )
    before = raw(engine, table)
    stranger = Path(keys.new_file).with_name("stranger.keys.json")
    LocalKeyring.generate("stranger").to_file(stranger)
    extra = ["--to-key-file", keys.new_file] if command == "rewrap" else []
    argv = [*common(url, table), "--key-file", str(stranger), "--batch-size", "40", *extra]
    code, err = run(capsys, command, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) <= 4, err
    assert "the first 120 rows all failed" in lines[0]
    assert "likely cause: the keys given (--key-file, --kms-key-id)" in err
    assert "Traceback" not in err
    assert raw(engine, table) == before


def test_a_column_of_plain_bytes_stops_early_naming_the_column(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [{"id": i, "ssn": f"plain-{i}".encode()} for i in range(1, 121)]
    table = make_table(sa.Column("ssn", sa.LargeBinary), rows=rows)
    argv = [*common(url, table), "--key-file", keys.old_file, "--batch-size", "50"]
    code, err = run(capsys, "verify", *argv)
    assert code == 2, err
    assert "likely cause: the column does not hold envelopes" in err


def test_rows_that_fail_among_rows_that_do_not_are_all_reported(
    engine: sa.Engine,
    url: str,
    make_table: Callable[..., sa.Table],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # One good row among 130 bad ones: verify's job is to list them, not to give up.
    rows = [{"id": i, "ssn": f"plain-{i}".encode()} for i in range(1, 131)]
    good = Encryptor(keys.old).encrypt(b"ssn", {"table": "t", "column": "ssn"})
    table = make_table(sa.Column("ssn", sa.LargeBinary), rows=[{"id": 0, "ssn": good}, *rows])
    argv = [*common(url, table), "--key-file", keys.old_file, "--context", '{"table": "t", '
            '"column": "ssn"}', "--batch-size", "50"]  # fmt: skip
    code, err = run(capsys, "verify", *argv)
    assert code == 1, err
    assert summary(err) == {"examined": 131, "fine": 1, "failed": 130}
    assert "cannot be processed" not in err  # the summary lists rows, the log does not


def test_a_kms_key_without_a_region_names_the_flag_not_the_keyword(
    url: str,
    patients: sa.Table,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "SQLA_ENVELOPE_KMS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    code, err = run(capsys, "verify", *common(url, patients), "--kms-key-id", "alias/app")
    assert code == 1, err
    assert "pass --region" in err and "region_name=" not in err
