"""settings.SQLA_ENVELOPE, read and checked, and the Encryptor it describes.

``SQLA_ENVELOPE`` is a dict:

- ``KEY_FILE``: a LocalKeyring key file (``sqla-envelope keys generate``); give an
  absolute path (``BASE_DIR / "app.keys.json"``), a relative one is relative to the
  working directory;
- or ``KMS_KEY_ID``: an AWS KMS key id, key ARN, alias or alias ARN, with
  ``KMS_REGION`` (unless the key id is an ARN), ``KMS_ENDPOINT_URL`` (a VPC
  endpoint, a test server) and ``KMS_ADDITIONAL_KEY_IDS`` (keys every data key is also
  wrapped under: a replica in another region);
- ``MODE``: ``"local"`` (the default with a key file), ``"direct"`` (the default with
  KMS) or ``"bounded_reuse"``, with ``MAX_ROWS`` and ``MAX_AGE`` (values per KMS
  wrapping key and its lifetime in seconds; docs/kms.md compares the modes);
- ``CACHE_TTL`` and ``CACHE_SIZE``: the Encryptor's cache of unwrapped data keys;
- ``AUDIT_LOG``: ``True`` writes a line on the ``sqla_envelope.audit`` logger for
  every wrap and unwrap;
- ``DATABASE``: the alias in ``DATABASES`` that ``get_engine()`` and the management
  commands use by default (``"default"``).

Exactly one key source must be set; ``None`` means unset. An unknown name, or an
option the chosen mode would ignore, is a ConfigurationError: a typo in a security
setting must not be silently dropped. The rules are those of sqla_envelope.flask.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..audit import log_events
from ..encryptor import Encryptor
from ..errors import ConfigurationError
from ..keyrings.base import Keyring
from ..keyrings.kms import KmsKeyring
from ..keyrings.local import LocalKeyring

__all__ = ["SETTING", "EnvelopeSettings", "from_django", "parse"]

SETTING = "SQLA_ENVELOPE"
_MODES = ("local", "direct", "bounded_reuse")
_KMS_OPTIONS = ("KMS_REGION", "KMS_ENDPOINT_URL", "KMS_ADDITIONAL_KEY_IDS")
_REUSE_OPTIONS = ("MAX_ROWS", "MAX_AGE")
_NAMES = frozenset(
    {"KEY_FILE", "KMS_KEY_ID", "MODE", "CACHE_TTL", "CACHE_SIZE", "AUDIT_LOG", "DATABASE"}
    | set(_KMS_OPTIONS)
    | set(_REUSE_OPTIONS)
)
_EXAMPLE = 'SQLA_ENVELOPE = {"KEY_FILE": BASE_DIR / "app.keys.json"}'


@dataclass(frozen=True)
class EnvelopeSettings:
    """The checked content of ``settings.SQLA_ENVELOPE``; builds the keyring and Encryptor.

    Made by ``parse``, which reads no file and calls no service; ``encryptor()``
    does, and raises ConfigurationError for an unreadable or group-readable key file.
    """

    key_file: str | os.PathLike[str] | None = None
    kms_key_id: str | None = None
    kms_region: str | None = None
    kms_endpoint_url: str | None = None
    additional_key_ids: tuple[str, ...] = ()
    mode: str = "local"
    max_rows: int | None = None
    max_age: float | None = None
    cache_ttl: float | None = None
    cache_size: int | None = None
    audit_log: bool = False
    database: str = "default"

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
            mode="bounded_reuse" if self.mode == "bounded_reuse" else "direct",
            **_given(max_rows=self.max_rows, max_age=self.max_age),
        )

    def encryptor(self) -> Encryptor:
        """A new Encryptor over ``keyring()``, with the cache and audit settings."""
        return Encryptor(
            self.keyring(),
            listeners=[log_events()] if self.audit_log else [],
            **_given(cache_ttl=self.cache_ttl, cache_size=self.cache_size),
        )


def parse(value: object, databases: Mapping[str, Any] | None = None) -> EnvelopeSettings:
    """Check a ``SQLA_ENVELOPE`` dict (and its DATABASE against ``databases``).

    Raises ConfigurationError naming the setting for a missing, unknown,
    conflicting or mistyped one.
    """
    if value is None:
        raise ConfigurationError(f"settings.{SETTING} is not set; for example: {_EXAMPLE}")
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"settings.{SETTING} must be a dict, got a {type(value).__name__}; "
            f"for example: {_EXAMPLE}"
        )
    given = {key: item for key, item in value.items() if item is not None}
    unknown = sorted(map(repr, set(given) - _NAMES))
    if unknown:
        raise ConfigurationError(
            f"unknown key {', '.join(unknown)} in settings.{SETTING}; "
            f"sqla_envelope.django reads {', '.join(sorted(_NAMES))}"
        )
    key_file = _setting(given, "KEY_FILE", (str, os.PathLike), "a path")
    key_id = _setting(given, "KMS_KEY_ID", str, "a KMS key id, ARN or alias")
    if (key_file is None) == (key_id is None):
        raise ConfigurationError(
            f"set exactly one of {_name('KEY_FILE')} (a local key file) and "
            f"{_name('KMS_KEY_ID')} (an AWS KMS key) in settings.{SETTING}; "
            + ("neither is set" if key_file is None else "both are set")
        )
    if key_file is not None and not str(key_file):
        raise ConfigurationError(f"{_name('KEY_FILE')} is empty")
    mode = given.get("MODE", "local" if key_file is not None else "direct")
    if mode not in _MODES:
        raise ConfigurationError(f"{_name('MODE')} must be one of {_MODES}, not {mode!r}")
    if key_file is not None and mode != "local":
        raise ConfigurationError(
            f"{_name('MODE')} {mode!r} is a KMS mode: set {_name('KMS_KEY_ID')} instead "
            f"of {_name('KEY_FILE')}, or use 'local'"
        )
    if key_id is not None and mode == "local":
        raise ConfigurationError(
            f"{_name('MODE')} 'local' needs {_name('KEY_FILE')}; "
            "with a KMS key use 'direct' or 'bounded_reuse'"
        )
    _reject(given, _REUSE_OPTIONS, mode != "bounded_reuse", f"{_name('MODE')} 'bounded_reuse'")
    _reject(given, _KMS_OPTIONS, key_id is None, _name("KMS_KEY_ID"))
    database = _setting(given, "DATABASE", str, "a database alias") or "default"
    if databases is not None and database not in databases:
        raise ConfigurationError(
            f"{_name('DATABASE')} is {database!r}, which is not in settings.DATABASES "
            f"(it has {', '.join(map(repr, databases))})"
        )
    return EnvelopeSettings(
        key_file=key_file,
        kms_key_id=key_id,
        kms_region=_setting(given, "KMS_REGION", str, "a region name"),
        kms_endpoint_url=_setting(given, "KMS_ENDPOINT_URL", str, "a URL"),
        additional_key_ids=tuple(
            _setting(given, "KMS_ADDITIONAL_KEY_IDS", (list, tuple), "a list of key ids") or ()
        ),
        mode=mode,
        max_rows=_setting(given, "MAX_ROWS", int, "an integer"),
        max_age=_setting(given, "MAX_AGE", (int, float), "a number of seconds"),
        cache_ttl=_setting(given, "CACHE_TTL", (int, float), "a number of seconds"),
        cache_size=_setting(given, "CACHE_SIZE", int, "an integer"),
        audit_log=bool(_setting(given, "AUDIT_LOG", bool, "True or False")),
        database=database,
    )


def from_django() -> EnvelopeSettings:
    """``settings.SQLA_ENVELOPE`` of the running project, checked against its DATABASES."""
    from django.conf import settings  # type: ignore[import-untyped]

    return parse(getattr(settings, SETTING, None), settings.DATABASES)


def _name(key: str) -> str:
    return f"{SETTING}[{key!r}]"


def _given(**options: Any) -> dict[str, Any]:
    """The options that are set: the Encryptor and KmsKeyring keep their own defaults."""
    return {name: value for name, value in options.items() if value is not None}


def _setting(
    given: Mapping[str, Any], name: str, kinds: type | tuple[type, ...], expected: str
) -> Any:
    """The value of ``name`` if set, checked against ``kinds``; bool is not a number here."""
    value = given.get(name)
    if value is None:
        return None
    if not isinstance(value, kinds) or isinstance(value, bool) != (kinds is bool):
        raise ConfigurationError(f"{_name(name)} must be {expected}, got a {type(value).__name__}")
    return value


def _reject(given: Mapping[str, Any], names: tuple[str, ...], ignored: bool, needs: str) -> None:
    stray = [_name(name) for name in names if name in given]
    if ignored and stray:
        raise ConfigurationError(f"{', '.join(stray)} only applies with {needs}")
