"""``sqla-envelope secrets``: credstash's command line on SQLite, PostgreSQL and MariaDB.

Cases of ../shared/CREDSTASH.md section 6 are named by their number; "diverge"
marks where credstash's behaviour is a bug we do not copy.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from sqla_envelope import LocalKeyring, SecretStore
from sqla_envelope.cli import main

TABLE = "cli_credential_store"


@pytest.fixture
def cli(engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The environment the commands read: the database, the table and a key file."""
    monkeypatch.chdir(tmp_path)
    LocalKeyring.generate("k1").to_file(tmp_path / "app.keys.json")
    monkeypatch.setenv("SQLA_ENVELOPE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SQLA_ENVELOPE_KEY_FILE", str(tmp_path / "app.keys.json"))
    monkeypatch.setenv("SQLA_ENVELOPE_SECRETS_TABLE", TABLE)
    table = SecretStore(engine, table=TABLE).table
    table.drop(engine, checkfirst=True)
    assert main(["secrets", "setup"]) == 0
    yield tmp_path
    table.drop(engine, checkfirst=True)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["secrets", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.mark.credstash_compat
def test_setup_is_idempotent(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:  # 42
    assert run(capsys, "setup") == (0, f"table {TABLE} already exists\n", "")


@pytest.mark.credstash_compat
def test_put_get_versions_and_a_taken_version(  # 8-13
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "put", "app.db.pass", "hunter2") == (0, "app.db.pass has been stored\n", "")
    assert run(capsys, "put", "app.db.pass", "hunter3", "-a")[0] == 0
    assert run(capsys, "get", "app.db.pass")[1] == "hunter3\n"
    assert run(capsys, "get", "-n", "app.db.pass")[1] == "hunter3"
    assert run(capsys, "get", "-v", "1", "app.db.pass")[1] == "hunter2\n"
    assert run(capsys, "get", "-v", "0000000000000000001", "app.db.pass")[1] == "hunter2\n"
    code, out, err = run(capsys, "put", "app.db.pass", "other", "-v", "2")
    assert code == 1 and "already stored" in err and out == ""
    assert run(capsys, "get", "app.db.pass")[1] == "hunter3\n"
    code, _, err = run(capsys, "get", "-v", "abc", "app.db.pass")
    assert code == 2 and "version number" in err
    run(capsys, "put", "numeric", "nine", "-v", "9")
    run(capsys, "put", "numeric", "ten", "-v", "10")
    assert run(capsys, "get", "numeric")[1] == "ten\n"  # 10 > 9 (credstash compared strings)


@pytest.mark.credstash_compat
def test_a_missing_secret_is_exit_1_naming_it(
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "get", "nope") == (1, "", "sqla-envelope: error: secret 'nope' not found\n")


@pytest.mark.credstash_compat
def test_context_is_needed_again_and_never_leaks(  # 15
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "put", "app.api", "api-key-value-12345", "env=prod", "team=a")
    assert run(capsys, "get", "app.api", "team=a", "env=prod")[1] == "api-key-value-12345\n"
    for wrong in ((), ("env=dev", "team=a")):
        code, out, err = run(capsys, "get", "app.api", *wrong)
        assert code == 1 and out == "" and "app.api" in err and "api-key" not in err
    for bad in ("k=", "=v", "a=b=c", "="):
        assert run(capsys, "get", "app.api", bad)[0] == 2


@pytest.mark.credstash_compat
def test_value_sources(  # 18, 30
    cli: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from stdin\n\n")))
    run(capsys, "put", "stdin", "-")
    assert run(capsys, "get", "-n", "stdin")[1] == "from stdin\n\n"  # exactly, newlines kept
    (cli / "cert.pem").write_text("-----BEGIN-----\n")
    run(capsys, "put", "file", "@cert.pem")
    assert run(capsys, "get", "-n", "file")[1] == "-----BEGIN-----\n"
    assert run(capsys, "put", "missing", "@nope.txt")[0] == 2
    monkeypatch.setattr("getpass.getpass", lambda prompt: "@typed")
    run(capsys, "put", "typed", "-P")
    assert run(capsys, "get", "-n", "typed")[1] == "@typed"
    run(capsys, "put", "empty")
    assert run(capsys, "get", "-n", "empty")[1] == ""


def test_binary_values_round_trip(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:  # 29
    blob = bytes(range(256))
    (cli / "blob.bin").write_bytes(blob)
    run(capsys, "put", "binary", "@blob.bin")
    raw = subprocess.run(
        [sys.executable, "-m", "sqla_envelope", "secrets", "get", "binary", "-f", "raw"],
        capture_output=True,
        check=True,
    )
    assert raw.stdout == blob  # byte for byte (diverge: credstash cannot)
    assert run(capsys, "get", "binary")[0] == 2  # not printable as text: says -f raw


@pytest.mark.credstash_compat
def test_list_keys_delete(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:  # 14, 19
    run(capsys, "put", "b.long.name", "1", "-c", "first")
    run(capsys, "put", "b.long.name", "2")
    run(capsys, "put", "a", "x", "-c", "api key")
    assert run(capsys, "list")[1] == (
        "a           -- version 1 -- comment api key\n"
        "b.long.name -- version 1 -- comment first\n"
        "b.long.name -- version 2 -- comment \n"
    )
    assert run(capsys, "keys")[1] == "a\nb.long.name\n"
    assert (
        run(capsys, "delete", "b.long.name", "-v", "1")[1] == "Deleting b.long.name -- version 1\n"
    )
    assert run(capsys, "delete", "b.long.name")[1] == "Deleting b.long.name -- version 2\n"
    assert run(capsys, "get", "b.long.name")[0] == 1
    assert run(capsys, "delete", "b.long.name")[0] == 1


TRICKY = {
    "app.quote": "it's",
    "app.newline": "a\nb",
    "app.dollar": "$HOME $(id)",
    "app.sp": "a b",
}


@pytest.mark.credstash_compat
def test_output_formats_read_back_exactly(  # 20
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tricky = TRICKY
    for name, value in tricky.items():
        run(capsys, "put", name, value)
    out = run(capsys, "getall", "-f", "json")[1]
    assert json.loads(out) == tricky
    assert out == json.dumps(tricky, sort_keys=True, indent=4, separators=(",", ": ")) + "\n"
    rows = list(csv.reader(io.StringIO(run(capsys, "getall", "-f", "csv")[1])))
    assert dict(rows) == tricky  # type: ignore[arg-type]
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(run(capsys, "getall", "-f", "yaml")[1]) == tricky


def test_dotenv_and_env_give_a_shell_the_exact_values(  # 21 (diverge: credstash's break)
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tricky = TRICKY
    for name, value in tricky.items():
        run(capsys, "put", name, value)
    for fmt in ("dotenv", "env"):
        (cli / "secrets.sh").write_text(run(capsys, "getall", "-f", fmt)[1])
        shown = subprocess.run(
            ["sh", "-c", '. ./secrets.sh; printf "%s\\0%s\\0%s\\0%s" "$APP_QUOTE" "$APP_NEWLINE" '
             '"$APP_DOLLAR" "$APP_SP"'],
            cwd=cli, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert shown.split("\0") == [
            tricky[k] for k in ("app.quote", "app.newline", "app.dollar", "app.sp")
        ]


def test_globs_are_globs_not_regexes(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:  # 22
    for name in ("app.db.pass", "app.db.user", "appXdbY", "other"):
        run(capsys, "put", name, name.upper())
    assert json.loads(run(capsys, "get", "app.db*")[1]) == {
        "app.db.pass": "APP.DB.PASS",
        "app.db.user": "APP.DB.USER",
    }
    assert json.loads(run(capsys, "get", "app.db.?ser")[1]) == {"app.db.user": "APP.DB.USER"}


def test_getall_fails_whole_or_skips_with_exit_3(  # 23, 24 (diverge: credstash hangs)
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "put", "open", "o")
    run(capsys, "put", "closed", "c", "env=prod")
    code, out, err = run(capsys, "getall")
    assert code == 1 and out == "" and "closed" in err
    code, out, err = run(capsys, "getall", "--skip-undecryptable")
    assert code == 3 and json.loads(out) == {"open": "o"} and "skipped 'closed'" in err


def test_putall_then_again_without_new_versions_fails(  # 25 (diverge: credstash exits 0)
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "putall", '{"a": "1", "b": "2"}')[0] == 0
    assert run(capsys, "get", "-n", "b")[1] == "2"
    code, _, err = run(capsys, "putall", '{"a": "1", "b": "2"}', "-v", "1")
    assert code == 1 and "already stored" in err
    assert run(capsys, "putall", '{"a": "3"}', "-a")[0] == 0
    assert run(capsys, "get", "-n", "a")[1] == "3"
    assert run(capsys, "putall", "[1, 2]")[0] == 2


def test_exec_runs_a_command_with_secrets_in_its_environment(
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "put", "app.db.pass", "p@ss 'word'", "env=prod")
    run(capsys, "put", "app.db.user", "admin", "env=prod")
    script = "import os, sys; sys.exit(0 if os.environ['PASS'] == \"p@ss 'word'\" else 9)"
    argv = ["exec", "--prefix", "app.db.", "env=prod", "--", sys.executable, "-c", script]
    assert main(["secrets", *argv]) == 0
    failing = [
        "exec",
        "--prefix",
        "app.db.",
        "env=prod",
        "--",
        sys.executable,
        "-c",
        "raise SystemExit(4)",
    ]
    assert main(["secrets", *failing]) == 4  # the command's own exit code
    assert run(capsys, "exec", "--prefix", "app.")[0] == 2  # no command


def test_no_file_is_written_and_no_url_is_a_usage_error(  # 43, 44
    cli: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = set(os.listdir(cli))
    run(capsys, "put", "x", "y")
    run(capsys, "get", "x")
    assert set(os.listdir(cli)) == before
    monkeypatch.delenv("SQLA_ENVELOPE_URL")
    code, _, err = run(capsys, "get", "x")
    assert code == 2 and "SQLA_ENVELOPE_URL" in err


@pytest.mark.credstash_compat
def test_credstash_options_parse_with_their_meaning(  # 40, and 23 for getall -v
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "put", "-d", "SHA256", "-c", "c", "x", "1")[0] == 0
    code, _, err = run(capsys, "put", "-d", "MD5", "x", "2")
    assert code == 2 and "AES-GCM" in err
    assert run(capsys, "put", "--kms-region", "us-east-1", "x", "2")[0] == 0
    assert run(capsys, "putall", '{"y": "1"}', "-c", "bulk")[0] == 0
    assert "comment bulk" in run(capsys, "list")[1]
    assert json.loads(run(capsys, "getall", "-v", "1")[1]) == {"x": "1", "y": "1"}
    code, out, err = run(capsys, "getall", "-v", "2")  # y has no version 2: fails fast
    assert code == 1 and out == "" and "'y' version 2 not found" in err
    assert run(capsys, "get", "--log-file", "x.log", "x")[0] == 2  # no log file, ever


def test_log_level_shows_each_key_use_on_stderr_and_never_a_value(
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # credstash's --log-level, before or after the command; its --log-file is refused.
    handlers = list(logging.getLogger("sqla_envelope").handlers)
    assert run(capsys, "put", "app.token", "s3cr3t-value", "env=prod")[0] == 0
    code, out, err = run(capsys, "--log-level", "INFO", "get", "app.token", "env=prod")
    assert (code, out) == (0, "s3cr3t-value\n")
    assert "INFO sqla_envelope.audit: unwrap " in err and "env=prod" in err and "key=k1" in err
    code, out, err = run(
        capsys, "put", "--log-level", "debug", "app.token", "other-value", "env=prod"
    )
    assert code == 0 and "INFO sqla_envelope.audit: wrap " in err
    logged = err + run(capsys, "--log-level", "DEBUG", "getall", "env=prod")[2]
    assert "s3cr3t" not in logged and "other-value" not in logged
    assert run(capsys, "get", "app.token", "env=prod")[2] == ""  # the next run logs nothing
    assert logging.getLogger("sqla_envelope").handlers == handlers
    code, _, err = run(capsys, "--log-level", "LOUD", "keys")
    assert code == 2 and "invalid choice" in err
    assert sorted(p.name for p in cli.iterdir()) == ["app.keys.json"]  # no log file, ever
