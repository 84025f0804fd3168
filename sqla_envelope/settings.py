"""Settings that describe an Encryptor, checked once, for the framework integrations.

The Flask extension reads them from ``app.config`` (``SQLA_ENVELOPE_KEY_FILE``...),
the Django app from ``settings.SQLA_ENVELOPE`` (``{"KEY_FILE": ...}``); both hand the
names without their prefix to ``parse_settings`` and so apply the same rules:

- ``KEY_FILE`` (a LocalKeyring key file) or ``KMS_KEY_ID`` (an AWS KMS key id,
  ARN or alias), exactly one; with KMS, ``KMS_REGION``, ``KMS_ENDPOINT_URL``,
  ``KMS_ADDITIONAL_KEY_IDS`` and ``KMS_DECRYPT_KEY_IDS``;
- ``MODE``: ``"local"`` (the default with a key file), ``"direct"`` (the default
  with KMS) or ``"bounded_reuse"`` with ``MAX_ROWS`` and ``MAX_AGE``;
- ``CACHE_TTL``, ``CACHE_SIZE``: the key cache; ``AUDIT_LOG``: log every key use;
- ``INDEX_KEY``: the wrapped blind index key (``Encryptor.new_index_key()``).

``None`` means unset. A missing key source, two of them, a mode that does not fit
the key, an option the mode would ignore or a value of the wrong type is a
ConfigurationError naming the setting: a typo in a security setting must never be
silently dropped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .audit import log_events
from .encryptor import Encryptor
from .errors import ConfigurationError
from .keyrings.base import Keyring
from .keyrings.kms import KmsKeyring
from .keyrings.local import LocalKeyring

__all__ = ["NAMES", "EnvelopeSettings", "parse_settings"]

MODES = ("local", "direct", "bounded_reuse")
_KMS_OPTIONS = ("KMS_REGION", "KMS_ENDPOINT_URL", "KMS_ADDITIONAL_KEY_IDS", "KMS_DECRYPT_KEY_IDS")
_REUSE_OPTIONS = ("MAX_ROWS", "MAX_AGE")
NAMES = frozenset(
    {
        "KEY_FILE",
        "KMS_KEY_ID",
        "MODE",
        "CACHE_TTL",
        "CACHE_SIZE",
        "CACHE_WRITTEN_KEYS",
        "AUDIT_LOG",
        "INDEX_KEY",
    }
    | set(_KMS_OPTIONS)
    | set(_REUSE_OPTIONS)
)

Namer = Callable[[str], str]


@dataclass(frozen=True)
class EnvelopeSettings:
    """Checked settings; builds the keyring and Encryptor they describe.

    Made by ``parse_settings``, which reads no file and calls no service;
    ``encryptor()`` does, and raises ConfigurationError for an unreadable or
    group-readable key file.
    """

    key_file: str | os.PathLike[str] | None = None
    kms_key_id: str | None = None
    kms_region: str | None = None
    kms_endpoint_url: str | None = None
    additional_key_ids: tuple[str, ...] = ()
    decrypt_key_ids: tuple[str, ...] = ()
    mode: str = "local"
    max_rows: int | None = None
    max_age: float | None = None
    cache_ttl: float | None = None
    cache_size: int | None = None
    cache_written_keys: bool = False
    audit_log: bool = False
    index_key: str | None = None

    def keyring(self) -> Keyring:
        """A LocalKeyring read from KEY_FILE, or a KmsKeyring (building it calls no service)."""
        if self.key_file is not None:
            return LocalKeyring.from_file(self.key_file)
        assert self.kms_key_id is not None
        return KmsKeyring(
            self.kms_key_id,
            region_name=self.kms_region,
            endpoint_url=self.kms_endpoint_url,
            additional_key_ids=self.additional_key_ids,
            decrypt_key_ids=self.decrypt_key_ids,
            mode="bounded_reuse" if self.mode == "bounded_reuse" else "direct",
            **_given(max_rows=self.max_rows, max_age=self.max_age),
        )

    def encryptor(self) -> Encryptor:
        """A new Encryptor over ``keyring()``, with the cache and audit settings."""
        return Encryptor(
            self.keyring(),
            listeners=[log_events()] if self.audit_log else [],
            index_key=self.index_key,
            cache_written_keys=self.cache_written_keys,
            **_given(cache_ttl=self.cache_ttl, cache_size=self.cache_size),
        )


def parse_settings(given: Mapping[str, Any], name: Namer) -> EnvelopeSettings:
    """Check settings (names without their framework's prefix, None meaning unset).

    ``name`` renders a setting as the user wrote it, for messages
    (``SQLA_ENVELOPE_MODE`` in Flask, ``SQLA_ENVELOPE['MODE']`` in Django).
    """
    given = {key: value for key, value in given.items() if value is not None}
    unknown = sorted(set(given) - NAMES)
    if unknown:
        raise ConfigurationError(
            f"unknown setting {', '.join(name(k) for k in unknown)}; "
            f"the settings are {', '.join(name(k) for k in sorted(NAMES))}"
        )
    key_file = _setting(given, name, "KEY_FILE", (str, os.PathLike), "a path")
    key_id = _setting(given, name, "KMS_KEY_ID", str, "a KMS key id, ARN or alias")
    if (key_file is None) == (key_id is None):
        raise ConfigurationError(
            f"set exactly one of {name('KEY_FILE')} (a local key file) and "
            f"{name('KMS_KEY_ID')} (an AWS KMS key); "
            + ("neither is set" if key_file is None else "both are set")
        )
    if key_file is not None and not str(key_file):
        raise ConfigurationError(f"{name('KEY_FILE')} is empty")
    mode = given.get("MODE", "local" if key_file is not None else "direct")
    if mode not in MODES:
        raise ConfigurationError(f"{name('MODE')} must be one of {MODES}, not {mode!r}")
    if key_file is not None and mode != "local":
        raise ConfigurationError(
            f"{name('MODE')} {mode!r} is a KMS mode: set {name('KMS_KEY_ID')} instead "
            f"of {name('KEY_FILE')}, or use 'local'"
        )
    if key_id is not None and mode == "local":
        raise ConfigurationError(
            f"{name('MODE')} 'local' needs {name('KEY_FILE')}; "
            "with a KMS key use 'direct' or 'bounded_reuse'"
        )
    _reject(given, name, _REUSE_OPTIONS, mode != "bounded_reuse", f"{name('MODE')} 'bounded_reuse'")
    _reject(given, name, _KMS_OPTIONS, key_id is None, name("KMS_KEY_ID"))
    key_list = (list, tuple)
    return EnvelopeSettings(
        key_file=key_file,
        kms_key_id=key_id,
        kms_region=_setting(given, name, "KMS_REGION", str, "a region name"),
        kms_endpoint_url=_setting(given, name, "KMS_ENDPOINT_URL", str, "a URL"),
        additional_key_ids=tuple(
            _setting(given, name, "KMS_ADDITIONAL_KEY_IDS", key_list, "a list of key ids") or ()
        ),
        decrypt_key_ids=tuple(
            _setting(given, name, "KMS_DECRYPT_KEY_IDS", key_list, "a list of key ids") or ()
        ),
        mode=mode,
        max_rows=_setting(given, name, "MAX_ROWS", int, "an integer"),
        max_age=_setting(given, name, "MAX_AGE", (int, float), "a number of seconds"),
        cache_ttl=_setting(given, name, "CACHE_TTL", (int, float), "a number of seconds"),
        cache_size=_setting(given, name, "CACHE_SIZE", int, "an integer"),
        cache_written_keys=bool(_setting(given, name, "CACHE_WRITTEN_KEYS", bool, "True or False")),
        audit_log=bool(_setting(given, name, "AUDIT_LOG", bool, "True or False")),
        index_key=_setting(given, name, "INDEX_KEY", str, "the text of Encryptor.new_index_key()"),
    )


def _given(**options: Any) -> dict[str, Any]:
    """The options that are set: the Encryptor and KmsKeyring keep their own defaults."""
    return {key: value for key, value in options.items() if value is not None}


def _setting(
    given: Mapping[str, Any], name: Namer, key: str, kinds: type | tuple[type, ...], expected: str
) -> Any:
    """The value of ``key`` if set, checked against ``kinds``; bool is not a number here."""
    value = given.get(key)
    if value is None:
        return None
    if not isinstance(value, kinds) or isinstance(value, bool) != (kinds is bool):
        raise ConfigurationError(f"{name(key)} must be {expected}, got a {type(value).__name__}")
    return value


def _reject(
    given: Mapping[str, Any], name: Namer, keys: tuple[str, ...], ignored: bool, needs: str
) -> None:
    stray = [name(key) for key in keys if key in given]
    if ignored and stray:
        raise ConfigurationError(f"{', '.join(stray)} only applies with {needs}")
