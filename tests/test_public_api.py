"""The public names of shared/API.md, pinned."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import sqla_envelope

# Fixed by shared/API.md: code outside the package imports these exact names.
API_NAMES = {
    "ConfigurationError",
    "DecryptionError",
    "EncryptedType",
    "Encryptor",
    "EnvelopeError",
    "Keyring",
    "KeyringError",
    "KmsKeyring",
    "LocalKeyring",
    "MalformedEnvelopeError",
    "configure",
    "rewrap",
}

# isort-style order (constants, classes, functions), as ruff's RUF022 keeps it
EXPORTED = [
    "PREFETCH_OPTION",
    "BlindIndex",
    "ConfigurationError",
    "DataKey",
    "DecryptionError",
    "EncryptedType",
    "EncryptionContext",
    "Encryptor",
    "Envelope",
    "EnvelopeError",
    "InvalidValueError",
    "Keyring",
    "KeyringError",
    "KmsKeyring",
    "LocalKeyring",
    "MalformedEnvelopeError",
    "SealedValue",
    "SecretExists",
    "SecretNotFound",
    "SecretStore",
    "TenantKeyring",
    "TenantShreddedError",
    "UnsupportedComparisonError",
    "WrappedKey",
    "configure",
    "get_default_encryptor",
    "plan_bits",
    "reindex",
    "rewrap",
    "unpack_envelope",
]


def test_all_is_pinned() -> None:
    assert sqla_envelope.__all__ == EXPORTED
    assert len(set(EXPORTED)) == len(EXPORTED)


def test_every_exported_name_imports() -> None:
    for name in sqla_envelope.__all__:
        assert getattr(sqla_envelope, name) is not None


def test_api_contract_names_are_exported() -> None:
    assert set(sqla_envelope.__all__) >= API_NAMES


def test_api_contract_file_names_nothing_we_lack() -> None:
    contract = Path(__file__).resolve().parents[2] / "shared" / "API.md"
    if not contract.exists():  # the contract lives beside the repo, not in it
        pytest.skip(f"{contract} is not beside this checkout")
    text = contract.read_text()
    backticked = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)[(`]", text))
    for name in API_NAMES:
        assert name in backticked, f"{name} is no longer in shared/API.md"


def test_error_tree() -> None:
    from sqla_envelope import errors

    assert issubclass(errors.MalformedEnvelopeError, errors.DecryptionError)
    for leaf in (
        errors.DecryptionError,
        errors.ConfigurationError,
        errors.KeyringError,
        errors.InvalidValueError,
        errors.UnsupportedComparisonError,
    ):
        assert issubclass(leaf, errors.EnvelopeError)


def test_kms_keyring_builds_without_a_network_call() -> None:
    keyring = sqla_envelope.KmsKeyring("alias/app", region_name="eu-west-1")
    assert "alias/app" in repr(keyring)


def test_the_import_paths_of_0_1_still_work() -> None:
    """The maintenance code moved to sqla_envelope.maintenance; 0.1's paths still import it."""
    from sqla_envelope import maintenance
    from sqla_envelope.migrations import decrypt_column, encrypt_column, render_item
    from sqla_envelope.rotation import reencrypt, rewrap, rewrap_column, verify
    from sqla_envelope.walk import ColumnReport, Shard

    assert (reencrypt, rewrap, rewrap_column, verify) == (
        maintenance.reencrypt,
        maintenance.rewrap,
        maintenance.rewrap_column,
        maintenance.verify,
    )
    assert (ColumnReport, Shard) == (maintenance.ColumnReport, maintenance.Shard)
    assert (encrypt_column, decrypt_column) == (
        maintenance.encrypt_column,
        maintenance.decrypt_column,
    )
    assert callable(render_item)
