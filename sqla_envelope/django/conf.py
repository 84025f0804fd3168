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
- ``CACHE_WRITTEN_KEYS``: ``True`` caches each written value's data key too, so reading
  it back needs no KMS call (docs/kms.md says what that changes);
- ``AUDIT_LOG``: ``True`` writes a line on the ``sqla_envelope.audit`` logger for
  every wrap and unwrap;
- ``INDEX_KEY``: the wrapped blind index key, the text of ``Encryptor.new_index_key()``;
- ``DATABASE``: the alias in ``DATABASES`` that ``get_engine()`` and the management
  commands use by default (``"default"``).

The rules (sqla_envelope.settings) are those of sqla_envelope.flask: exactly one key
source, ``None`` means unset, and an unknown name, or an option the chosen mode would
ignore, is a ConfigurationError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigurationError
from ..settings import EnvelopeSettings as CommonSettings
from ..settings import parse_settings

__all__ = ["SETTING", "EnvelopeSettings", "from_django", "parse"]

SETTING = "SQLA_ENVELOPE"
_EXAMPLE = 'SQLA_ENVELOPE = {"KEY_FILE": BASE_DIR / "app.keys.json"}'


@dataclass(frozen=True)
class EnvelopeSettings(CommonSettings):
    """The checked ``settings.SQLA_ENVELOPE``, plus the database alias to use."""

    database: str = "default"


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
    given = {key: item for key, item in value.items() if key != "DATABASE"}
    common = parse_settings(given, _name)
    database = value.get("DATABASE") or "default"
    if not isinstance(database, str):
        raise ConfigurationError(f"{_name('DATABASE')} must be a database alias")
    if databases is not None and database not in databases:
        raise ConfigurationError(
            f"{_name('DATABASE')} is {database!r}, which is not in settings.DATABASES "
            f"(it has {', '.join(map(repr, databases))})"
        )
    return EnvelopeSettings(**asdict(common), database=database)


def from_django() -> EnvelopeSettings:
    """``settings.SQLA_ENVELOPE`` of the running project, checked against its DATABASES."""
    from django.conf import settings  # type: ignore[import-untyped]

    return parse(getattr(settings, SETTING, None), settings.DATABASES)


def _name(key: str) -> str:
    return f"{SETTING}[{key!r}]"
