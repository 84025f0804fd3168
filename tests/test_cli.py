"""The sqla-envelope command: demo, keys, inspect, and how errors reach the user."""

from __future__ import annotations

import base64
import json
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

import sqla_envelope
from sqla_envelope import ConfigurationError, Encryptor, LocalKeyring
from sqla_envelope.cli import main
from sqla_envelope.envelope import WrappedKey, pack, unpack

REPO = Path(__file__).resolve().parents[1]
DEMO_DB = "sqla-envelope-demo.db"
DEMO_KEYS = "sqla-envelope-demo.keys.json"
CONTEXT = {"table": "t", "column": "c"}


@pytest.fixture(autouse=True)
def _no_default_encryptor() -> Iterator[None]:
    sqla_envelope.configure(None)
    yield
    sqla_envelope.configure(None)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_one_error_line(err: str) -> None:
    assert err.startswith("sqla-envelope: error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def key_file_secrets(path: Path) -> list[str]:
    """Every master key in a key file, as base64 (as stored) and as hex."""
    keys = json.loads(path.read_text())["keys"].values()
    return [form for key in keys for form in (key, base64.b64decode(key).hex())]


class TestDemo:
    def test_demo_prints_decrypted_values_and_stored_sizes(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["demo"]) == 0
        out = capsys.readouterr().out
        for shown in ("'QQ123456C'", "1985-04-12", '{"allergies": ["penicillin"]}'):
            assert shown in out
        keyring = LocalKeyring.from_file(in_tmp / DEMO_KEYS)
        assert f"{keyring.primary} (primary)" in out
        with closing(sqlite3.connect(in_tmp / DEMO_DB)) as db:
            (stored,) = db.execute("SELECT national_id FROM patients WHERE id = 1").fetchone()
        assert f"{stored[:16].hex()}…  {len(stored)} bytes" in out
        assert "UnsupportedComparisonError" in out
        assert "cache_misses" in out

    def test_demo_stores_no_plaintext_in_the_database_file(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["demo"]) == 0
        stored = (in_tmp / DEMO_DB).read_bytes()
        assert b"Alice Martin" in stored  # the plain column, for contrast
        for plaintext in (b"QQ123456C", b"QQ654321A", b"1985-04-12", b"penicillin"):
            assert plaintext not in stored

    def test_demo_never_prints_key_material(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["demo"]) == 0
        out = capsys.readouterr().out
        for secret in key_file_secrets(in_tmp / DEMO_KEYS):
            assert secret not in out

    def test_second_run_reuses_key_file_and_rows(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["demo"]) == 0
        key_file = (in_tmp / DEMO_KEYS).read_bytes()
        capsys.readouterr()

        assert main(["demo"]) == 0
        out = capsys.readouterr().out
        assert (in_tmp / DEMO_KEYS).read_bytes() == key_file
        primary = LocalKeyring.from_file(in_tmp / DEMO_KEYS).primary
        assert f"loaded, key id {primary}" in out
        assert "reused, 3 rows" in out
        assert "'QQ123456C'" in out

    def test_rows_show_old_key_after_keys_add(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["demo"]) == 0
        old = LocalKeyring.from_file(in_tmp / DEMO_KEYS).primary
        assert main(["keys", "add", DEMO_KEYS, "--key-id", "next"]) == 0
        capsys.readouterr()

        assert main(["demo"]) == 0
        out = capsys.readouterr().out
        assert f"{old} (old key)" in out
        assert "'QQ123456C'" in out

    def test_paths_from_options(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        db, keys = tmp_path / "clinic.sqlite", tmp_path / "secret" / "k.json"
        keys.parent.mkdir()
        assert main(["demo", "--db", str(db), "--key-file", str(keys)]) == 0
        assert db.exists()
        assert LocalKeyring.from_file(keys)

    def test_default_key_file_sits_beside_the_database(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["demo", "--db", str(tmp_path / "clinic.db")]) == 0
        assert (tmp_path / "clinic.keys.json").exists()

    def test_rows_whose_key_file_is_gone_are_one_error_line(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["demo"]) == 0
        (in_tmp / DEMO_KEYS).unlink()
        capsys.readouterr()

        assert main(["demo"]) == 1
        captured = capsys.readouterr()
        assert_one_error_line(captured.err)
        assert "is gone" in captured.err
        assert not (in_tmp / DEMO_KEYS).exists()

    def test_demo_looks_a_patient_up_through_the_blind_index(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["demo"]) == 0
        assert "finds Alice Martin (id 1)" in capsys.readouterr().out
        with closing(sqlite3.connect(in_tmp / DEMO_DB)) as db:
            digests = [row[0] for row in db.execute("SELECT national_id_bidx FROM patients")]
        assert len(set(digests)) == 3 and all(len(d) == 32 for d in digests)

    def test_a_demo_database_from_before_blind_indexes_gets_its_index(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["demo"]) == 0
        with closing(sqlite3.connect(in_tmp / DEMO_DB)) as db:
            db.execute("ALTER TABLE patients DROP COLUMN national_id_bidx")
            db.commit()
        capsys.readouterr()
        assert main(["demo"]) == 0
        assert "finds Alice Martin (id 1)" in capsys.readouterr().out

    def test_default_encryptor_is_restored(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["demo"]) == 0
        with pytest.raises(ConfigurationError):
            sqla_envelope.get_default_encryptor()


class TestKeys:
    def test_generate_writes_owner_only_file_that_loads(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["keys", "generate", "app.keys.json", "--key-id", "2025"]) == 0
        out = capsys.readouterr().out
        path = in_tmp / "app.keys.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        keyring = LocalKeyring.from_file(path)
        assert keyring.key_ids == ("2025",)
        assert "2025" in out
        assert "app.keys.json" in out
        for secret in key_file_secrets(path):
            assert secret not in out

    def test_generate_refuses_to_overwrite_without_force(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["keys", "generate", "k.json", "--key-id", "first"]) == 0
        before = (in_tmp / "k.json").read_bytes()
        capsys.readouterr()

        assert main(["keys", "generate", "k.json", "--key-id", "second"]) == 2
        captured = capsys.readouterr()
        assert_one_error_line(captured.err)
        assert "--force" in captured.err
        assert (in_tmp / "k.json").read_bytes() == before

    def test_generate_force_replaces_the_file(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["keys", "generate", "k.json", "--key-id", "first"]) == 0
        assert main(["keys", "generate", "k.json", "--key-id", "second", "--force"]) == 0
        assert LocalKeyring.from_file(in_tmp / "k.json").key_ids == ("second",)

    def test_add_makes_a_new_primary_and_old_values_still_decrypt(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["keys", "generate", "k.json", "--key-id", "old"]) == 0
        envelope = Encryptor(LocalKeyring.from_file("k.json")).encrypt(b"secret", CONTEXT)
        capsys.readouterr()

        assert main(["keys", "add", "k.json", "--key-id", "new"]) == 0
        out = capsys.readouterr().out
        keyring = LocalKeyring.from_file(in_tmp / "k.json")
        assert keyring.key_ids == ("old", "new")
        assert keyring.primary == "new"
        assert stat.S_IMODE((in_tmp / "k.json").stat().st_mode) == 0o600
        assert Encryptor(keyring).decrypt(envelope, CONTEXT) == b"secret"
        assert "new" in out
        for secret in key_file_secrets(in_tmp / "k.json"):
            assert secret not in out

    def test_add_refuses_an_id_already_in_the_file(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["keys", "generate", "k.json", "--key-id", "old"]) == 0
        capsys.readouterr()
        assert main(["keys", "add", "k.json", "--key-id", "old"]) == 1
        assert_one_error_line(capsys.readouterr().err)
        assert LocalKeyring.from_file(in_tmp / "k.json").key_ids == ("old",)

    def test_add_no_primary_then_set_primary_rolls_out_without_outage(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["keys", "generate", "k.json", "--key-id", "old"]) == 0
        assert main(["keys", "add", "k.json", "--key-id", "new", "--no-primary"]) == 0
        out = capsys.readouterr().out
        deployed = LocalKeyring.from_file(in_tmp / "k.json")
        assert deployed.key_ids == ("old", "new") and deployed.primary == "old"
        assert "keys set-primary k.json new" in out
        # A process still running with the deployed file reads what the new key wraps.
        assert main(["keys", "set-primary", "k.json", "new"]) == 0
        writer = Encryptor(LocalKeyring.from_file(in_tmp / "k.json"))
        assert writer.keyring.primary == "new"  # type: ignore[attr-defined]
        envelope = writer.encrypt(b"secret", CONTEXT)
        assert Encryptor(deployed).decrypt(envelope, CONTEXT) == b"secret"
        assert stat.S_IMODE((in_tmp / "k.json").stat().st_mode) == 0o600
        for secret in key_file_secrets(in_tmp / "k.json"):
            assert secret not in capsys.readouterr().out

    def test_add_warns_that_every_process_needs_the_file_first(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["keys", "generate", "k.json", "--key-id", "old"]) == 0
        assert main(["keys", "add", "k.json", "--key-id", "new"]) == 0
        out = capsys.readouterr().out
        assert "Every process that reads these columns needs this key file" in out
        assert "--no-primary" in out

    def test_set_primary_of_an_unknown_key_changes_nothing(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["keys", "generate", "k.json", "--key-id", "old"]) == 0
        before = (in_tmp / "k.json").read_bytes()
        capsys.readouterr()
        assert main(["keys", "set-primary", "k.json", "nope"]) == 1
        assert_one_error_line(capsys.readouterr().err)
        assert (in_tmp / "k.json").read_bytes() == before

    def test_list_marks_the_primary(self, in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["keys", "generate", "k.json", "--key-id", "old"]) == 0
        assert main(["keys", "add", "k.json", "--key-id", "new"]) == 0
        capsys.readouterr()

        assert main(["keys", "list", "k.json"]) == 0
        assert capsys.readouterr().out.splitlines() == ["old", "new  (primary)"]

    def test_missing_key_file_is_one_error_line(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["keys", "list", "missing.json"]) == 1
        assert_one_error_line(capsys.readouterr().err)

    def test_key_file_readable_by_others_is_one_error_line(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["keys", "generate", "k.json"]) == 0
        (in_tmp / "k.json").chmod(0o644)
        capsys.readouterr()
        assert main(["keys", "add", "k.json"]) == 1
        err = capsys.readouterr().err
        assert_one_error_line(err)
        assert "chmod 600" in err

    def test_write_into_missing_folder_names_the_key_file(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["keys", "generate", "nowhere/k.json"]) == 1
        err = capsys.readouterr().err
        assert_one_error_line(err)
        assert "nowhere/k.json" in err

    def test_invalid_key_id_is_one_error_line(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["keys", "generate", "k.json", "--key-id", "has space"]) == 1
        assert_one_error_line(capsys.readouterr().err)
        assert not (in_tmp / "k.json").exists()


@pytest.fixture(scope="module")
def envelope() -> bytes:
    return Encryptor(LocalKeyring.generate("abc123")).encrypt(b"secret", CONTEXT)


class TestInspect:
    @pytest.mark.parametrize(
        "encode",
        [
            pytest.param(lambda data: data.hex(), id="hex"),
            pytest.param(lambda data: "\\x" + data.hex(), id="psql-bytea"),
            pytest.param(lambda data: "0x" + data.hex().upper(), id="0x-hex"),
            pytest.param(lambda data: base64.b64encode(data).decode(), id="base64"),
            pytest.param(lambda data: base64.urlsafe_b64encode(data).decode(), id="base64url"),
        ],
    )
    def test_prints_header_without_decrypting(
        self, envelope: bytes, encode: Callable[[bytes], str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["inspect", encode(envelope)]) == 0
        out = capsys.readouterr().out
        wrapped = unpack(envelope).wrapped_keys[0]
        assert "format version  2" in out
        assert "key commitment  32 bytes" in out
        assert f"under key abc123, {len(wrapped.blob)} bytes" in out
        assert "nonce           12 bytes" in out
        assert "ciphertext      6 bytes" in out
        assert f"total           {len(envelope)} bytes" in out
        assert "secret" not in out

    def test_lists_every_wrapped_key(self, capsys: pytest.CaptureFixture[str]) -> None:
        data = pack(
            [WrappedKey("k1", b"\x01" * 60), WrappedKey("k2", b"\x02" * 7)],
            b"c" * 32,
            b"n" * 12,
            b"t" * 20,
        )
        assert main(["inspect", data.hex()]) == 0
        out = capsys.readouterr().out
        assert "wrapped key 1   under key k1, 60 bytes" in out
        assert "wrapped key 2   under key k2, 7 bytes" in out
        assert "ciphertext      4 bytes" in out

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param("not an envelope!", id="neither-hex-nor-base64"),
            pytest.param("deadbeef", id="hex-of-garbage"),
            pytest.param("\\xnothex", id="bad-hex-after-prefix"),
            pytest.param("", id="empty"),
        ],
    )
    def test_garbage_is_one_error_line(
        self, value: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["inspect", value]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert_one_error_line(captured.err)
        assert "not a sqla-envelope value" in captured.err

    def test_truncated_envelope_is_one_error_line(
        self, envelope: bytes, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["inspect", envelope[:40].hex()]) == 1
        assert_one_error_line(capsys.readouterr().err)


class TestUsage:
    @pytest.mark.parametrize(
        "argv", [[], ["keys"], ["frobnicate"], ["keys", "generate"], ["inspect"]]
    )
    def test_usage_errors_exit_2(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        assert main(argv) == 2
        assert "usage: sqla-envelope" in capsys.readouterr().err

    @pytest.mark.parametrize(
        "argv",
        [
            [],
            ["demo"],
            ["keys"],
            ["keys", "generate"],
            ["keys", "add"],
            ["keys", "list"],
            ["inspect"],
        ],
    )
    def test_every_command_has_help_with_an_example(
        self, argv: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main([*argv, "--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: sqla-envelope")
        assert "example" in out

    def test_python_m_sqla_envelope_help(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "sqla_envelope", "--help"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        assert result.returncode == 0
        assert result.stdout.startswith("usage: sqla-envelope")
        for command in ("demo", "keys", "inspect"):
            assert command in result.stdout


def test_keys_remove_retires_a_key_but_never_the_primary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "app.keys.json"
    assert main(["keys", "generate", str(path), "--key-id", "old"]) == 0
    assert main(["keys", "add", str(path), "--key-id", "new"]) == 0
    capsys.readouterr()
    assert main(["keys", "remove", str(path), "new"]) == 1
    assert "primary" in capsys.readouterr().err
    assert main(["keys", "remove", str(path), "nope"]) == 1
    assert capsys.readouterr().err == "sqla-envelope: error: key 'nope' is not in the keyring\n"
    assert LocalKeyring.from_file(path).key_ids == ("old", "new")  # nothing changed
    assert main(["keys", "remove", str(path), "old"]) == 0
    assert LocalKeyring.from_file(path).key_ids == ("new",)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_version_names_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sqla-envelope {sqla_envelope.__version__}"
