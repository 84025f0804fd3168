"""LocalKeyring: keys, primary, key files and what never leaks."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from sqla_envelope import ConfigurationError, DecryptionError, Encryptor, Keyring, LocalKeyring
from sqla_envelope.context import EncryptionContext
from sqla_envelope.envelope import WrappedKey

CTX = EncryptionContext({"table": "t", "column": "c"})
KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))


def test_generate_makes_one_random_primary_key() -> None:
    one, two = LocalKeyring.generate(), LocalKeyring.generate()
    assert isinstance(one, Keyring)
    assert len(one.key_ids) == 1 and one.primary == one.key_ids[0]
    assert one._keys != two._keys
    assert LocalKeyring.generate("prod-2026").primary == "prod-2026"


def test_new_data_keys_are_wrapped_under_the_primary_and_any_key_unwraps() -> None:
    old = LocalKeyring({"a": KEY_A})
    both = LocalKeyring({"a": KEY_A, "b": KEY_B}, primary="b")
    data_key = old.generate_data_key(CTX)
    assert [k.key_ref for k in data_key.wrapped_keys] == ["a"]
    assert both.unwrap_data_key(data_key.wrapped_keys, CTX) == data_key.plaintext
    fresh = both.generate_data_key(CTX)
    assert both.is_primary(fresh.wrapped_keys[0]) and not both.is_primary(data_key.wrapped_keys[0])
    with pytest.raises(DecryptionError, match="no key in this keyring"):
        old.unwrap_data_key(fresh.wrapped_keys, CTX)


def test_wrap_is_bound_to_the_context() -> None:
    keyring = LocalKeyring({"a": KEY_A})
    wrapped = keyring.wrap_data_key(b"\x01" * 32, CTX)
    with pytest.raises(DecryptionError):
        keyring.unwrap_data_key(wrapped, EncryptionContext({"table": "t", "column": "other"}))


def test_with_new_primary_keeps_old_keys() -> None:
    keyring = LocalKeyring({"a": KEY_A})
    rotated = keyring.with_new_primary("b")
    assert rotated.primary == "b" and set(rotated.key_ids) == {"a", "b"}
    with pytest.raises(ConfigurationError):
        rotated.with_new_primary("a")


@pytest.mark.parametrize(
    ("keys", "primary"),
    [
        ({}, None),
        ({"a": b"short"}, None),
        ({"a": KEY_A + b"x"}, None),
        ({"a": "not bytes" * 4}, None),
        ({"a": KEY_A, "b": KEY_B}, None),
        ({"a": KEY_A}, "missing"),
        ({"has space": KEY_A}, None),
        ({"": KEY_A}, None),
    ],
)
def test_invalid_keyrings_are_refused(keys: dict[str, bytes], primary: str | None) -> None:
    with pytest.raises(ConfigurationError) as failure:
        LocalKeyring(keys, primary=primary)
    assert KEY_A.hex() not in str(failure.value)


def test_key_material_never_appears_in_repr() -> None:
    keyring = LocalKeyring({"a": KEY_A, "b": KEY_B}, primary="a")
    data_key = keyring.generate_data_key(CTX)
    texts = [repr(keyring), str(keyring), repr(data_key), repr(data_key.wrapped_keys)]
    for text in texts:
        for secret in (KEY_A, KEY_B, data_key.plaintext, data_key.wrapped_keys[0].blob):
            assert secret.hex() not in text and repr(secret)[2:-1] not in text
    assert "a" in repr(keyring)


def test_key_file_round_trip_with_owner_only_permissions(tmp_path: Path) -> None:
    keyring = LocalKeyring({"a": KEY_A, "b": KEY_B}, primary="b")
    path = tmp_path / "keys.json"
    keyring.to_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["format"] == "sqla-envelope-keyring" and document["version"] == 1
    assert document["primary"] == "b"
    assert base64.b64decode(document["keys"]["a"]) == KEY_A
    loaded = LocalKeyring.from_file(path)
    assert loaded.primary == "b" and loaded.key_ids == ("a", "b")
    envelope = Encryptor(keyring).encrypt(b"v", CTX)
    assert Encryptor(loaded).decrypt(envelope, CTX) == b"v"
    assert not [p for p in tmp_path.iterdir() if p.name != "keys.json"]  # no temp file left


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keys.json"
    LocalKeyring({"a": KEY_A}).to_file(path)
    os.chmod(path, mode)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        LocalKeyring.from_file(path)


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"format": "other", "version": 1, "keys": {}}',
        '{"format": "sqla-envelope-keyring", "version": 2, "primary": "a", "keys": {"a": ""}}',
        '{"format": "sqla-envelope-keyring", "version": 1, "primary": "a", "keys": {"a": "@@@"}}',
        '{"format": "sqla-envelope-keyring", "version": 1, "primary": "a", "keys": {"a": "AAAA"}}',
    ],
)
def test_broken_key_files_are_refused_clearly(tmp_path: Path, content: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigurationError):
        LocalKeyring.from_file(path)


def test_missing_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read key file"):
        LocalKeyring.from_file(tmp_path / "absent.json")


def test_unwrap_refuses_a_wrapped_key_of_the_wrong_size() -> None:
    keyring = LocalKeyring({"a": KEY_A})
    with pytest.raises(DecryptionError):
        keyring.unwrap_data_key([WrappedKey("a", b"\x00" * 10)], CTX)


def test_without_drops_a_retired_key_but_never_the_primary() -> None:
    keyring = LocalKeyring({"a": KEY_A, "b": KEY_B}, primary="b")
    old_value = Encryptor(LocalKeyring({"a": KEY_A})).encrypt(b"v", CTX)
    retired = keyring.without("a")
    assert retired.key_ids == ("b",) and retired.primary == "b"
    with pytest.raises(DecryptionError):
        Encryptor(retired).decrypt(old_value, CTX)
    with pytest.raises(ConfigurationError, match="primary"):
        keyring.without("b")
    with pytest.raises(ConfigurationError):
        keyring.without("zz")
    assert keyring.with_primary("a").primary == "a"
