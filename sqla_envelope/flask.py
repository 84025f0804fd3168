"""SqlaEnvelope: a Flask extension that builds the default encryptor from ``app.config``.

Only Flask applications import this module; ``import sqla_envelope`` never imports
Flask. Settings, read once by ``init_app``:

- ``SQLA_ENVELOPE_KEY_FILE``: a LocalKeyring key file (``sqla-envelope keys generate``),
  relative to the working directory;
- or ``SQLA_ENVELOPE_KMS_KEY_ID``: an AWS KMS key id, key ARN, alias or alias ARN, with
  ``SQLA_ENVELOPE_KMS_REGION`` (unless the key id is an ARN),
  ``SQLA_ENVELOPE_KMS_ENDPOINT_URL`` (a VPC endpoint, a test server) and
  ``SQLA_ENVELOPE_KMS_ADDITIONAL_KEY_IDS`` (a list of keys every data key is also
  wrapped under: a replica in another region);
- ``SQLA_ENVELOPE_MODE``: ``"local"`` (the default with a key file), ``"direct"`` (the
  default with KMS) or ``"bounded_reuse"`` with ``SQLA_ENVELOPE_MAX_ROWS`` and
  ``SQLA_ENVELOPE_MAX_AGE`` (values per KMS wrapping key and its lifetime in seconds;
  docs/kms.md compares the modes);
- ``SQLA_ENVELOPE_CACHE_TTL`` and ``SQLA_ENVELOPE_CACHE_SIZE``: the Encryptor's cache
  of unwrapped data keys;
- ``SQLA_ENVELOPE_AUDIT_LOG``: ``True`` writes an INFO record on the
  ``sqla_envelope.audit`` logger for every wrap and unwrap (the application's
  logging configuration decides where it goes).

Exactly one key source must be set. An unknown ``SQLA_ENVELOPE_*`` name, or an option
that the chosen mode would ignore, is a ``ConfigurationError`` at ``init_app`` time:
a typo in a security setting must not be silently dropped.

The encryptor is installed with ``sqla_envelope.configure()``, which is process-wide:
one process serves one application's keys, and each ``init_app`` replaces the
default. Models declared before ``init_app`` (with Flask-SQLAlchemy, in an
application factory) work, because columns look the default up at first use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app, has_app_context

from .audit import log_events
from .encryptor import Encryptor, configure
from .errors import ConfigurationError
from .keyrings.base import Keyring
from .keyrings.kms import KmsKeyring
from .keyrings.local import LocalKeyring

__all__ = ["EXTENSION_NAME", "SqlaEnvelope", "get_encryptor"]

EXTENSION_NAME = "sqla_envelope"  # the key in app.extensions

_PREFIX = "SQLA_ENVELOPE_"
_MODES = ("local", "direct", "bounded_reuse")
_KMS_OPTIONS = ("KMS_REGION", "KMS_ENDPOINT_URL", "KMS_ADDITIONAL_KEY_IDS")
_REUSE_OPTIONS = ("MAX_ROWS", "MAX_AGE")
_SETTINGS = frozenset(
    {"KEY_FILE", "KMS_KEY_ID", "MODE", "CACHE_TTL", "CACHE_SIZE", "AUDIT_LOG"}
    | set(_KMS_OPTIONS)
    | set(_REUSE_OPTIONS)
)


class SqlaEnvelope:
    """Configures sqla_envelope's default encryptor for a Flask application.

    ``SqlaEnvelope(app)`` or, in an application factory, ``ext = SqlaEnvelope()``
    at import time and ``ext.init_app(app)`` in the factory. ``init_app`` raises
    ConfigurationError for missing, conflicting or unknown settings, and for an
    unreadable or group-readable key file, so a misconfigured app fails at start
    rather than on its first encrypted write.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._encryptor: Encryptor | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Build the encryptor from ``app.config``, store it on the app and make it the default."""
        encryptor = _encryptor_from_config(app.config)
        app.extensions[EXTENSION_NAME] = encryptor
        self._encryptor = encryptor
        configure(encryptor)

    @property
    def encryptor(self) -> Encryptor:
        """The current app's encryptor in an app context, else the one last initialised."""
        if has_app_context() and EXTENSION_NAME in current_app.extensions:
            return get_encryptor()
        if self._encryptor is None:
            raise ConfigurationError("SqlaEnvelope.init_app(app) has not been called")
        return self._encryptor


def get_encryptor(app: Flask | None = None) -> Encryptor:
    """The Encryptor ``init_app`` built for ``app`` (default: the current app).

    For stats(), clear_cache() or adding an audit listener. Raises
    ConfigurationError if SqlaEnvelope was not initialised on the app.
    """
    target = app if app is not None else current_app
    encryptor = target.extensions.get(EXTENSION_NAME)
    if not isinstance(encryptor, Encryptor):
        raise ConfigurationError(f"SqlaEnvelope.init_app() was not called on app {target.name!r}")
    return encryptor


def _encryptor_from_config(config: Mapping[str, Any]) -> Encryptor:
    # None means unset, so an app may declare every name with a None default.
    given = {
        key.removeprefix(_PREFIX): value
        for key, value in config.items()
        if key.startswith(_PREFIX) and value is not None
    }
    unknown = sorted(set(given) - _SETTINGS)
    if unknown:
        raise ConfigurationError(
            f"unknown setting {', '.join(_PREFIX + name for name in unknown)}; "
            f"sqla_envelope.flask reads {', '.join(_PREFIX + name for name in sorted(_SETTINGS))}"
        )
    cache: dict[str, Any] = {}
    if "CACHE_TTL" in given:
        cache["cache_ttl"] = _setting(given, "CACHE_TTL", (int, float), "a number of seconds")
    if "CACHE_SIZE" in given:
        cache["cache_size"] = _setting(given, "CACHE_SIZE", int, "an integer")
    listeners = [log_events()] if _setting(given, "AUDIT_LOG", bool, "True or False") else []
    return Encryptor(_keyring(given), listeners=listeners, **cache)


def _keyring(given: Mapping[str, Any]) -> Keyring:
    key_file = _setting(given, "KEY_FILE", (str, os.PathLike), "a path")
    key_id = _setting(given, "KMS_KEY_ID", str, "a KMS key id, ARN or alias")
    if (key_file is None) == (key_id is None):
        raise ConfigurationError(
            f"set exactly one of {_PREFIX}KEY_FILE (a local key file) and "
            f"{_PREFIX}KMS_KEY_ID (an AWS KMS key); "
            + ("neither is set" if key_file is None else "both are set")
        )
    mode = given.get("MODE", "local" if key_file is not None else "direct")
    if mode not in _MODES:
        raise ConfigurationError(f"{_PREFIX}MODE must be one of {_MODES}, not {mode!r}")
    if key_file is not None and mode != "local":
        raise ConfigurationError(
            f"{_PREFIX}MODE={mode!r} is a KMS mode: set {_PREFIX}KMS_KEY_ID "
            f"instead of {_PREFIX}KEY_FILE, or use mode 'local'"
        )
    if key_id is not None and mode == "local":
        raise ConfigurationError(
            f"{_PREFIX}MODE='local' needs {_PREFIX}KEY_FILE; "
            "with a KMS key use 'direct' or 'bounded_reuse'"
        )
    _reject(given, _REUSE_OPTIONS, mode != "bounded_reuse", f"{_PREFIX}MODE='bounded_reuse'")
    _reject(given, _KMS_OPTIONS, key_id is None, f"{_PREFIX}KMS_KEY_ID")
    if key_file is not None:
        if not str(key_file):
            raise ConfigurationError(f"{_PREFIX}KEY_FILE is empty")
        return LocalKeyring.from_file(key_file)
    additional = _setting(given, "KMS_ADDITIONAL_KEY_IDS", (list, tuple), "a list of key ids")
    reuse: dict[str, Any] = {}
    if "MAX_ROWS" in given:
        reuse["max_rows"] = _setting(given, "MAX_ROWS", int, "an integer")
    if "MAX_AGE" in given:
        reuse["max_age"] = _setting(given, "MAX_AGE", (int, float), "a number of seconds")
    return KmsKeyring(
        key_id,
        region_name=_setting(given, "KMS_REGION", str, "a region name"),
        endpoint_url=_setting(given, "KMS_ENDPOINT_URL", str, "a URL"),
        additional_key_ids=tuple(additional or ()),
        mode="bounded_reuse" if mode == "bounded_reuse" else "direct",
        **reuse,
    )


def _setting(
    given: Mapping[str, Any], name: str, kinds: type | tuple[type, ...], expected: str
) -> Any:
    """The value of ``name`` if set, checked against ``kinds``; bool is not a number here."""
    value = given.get(name)
    if value is None:
        return None
    is_bool = isinstance(value, bool)
    wants_bool = kinds is bool
    if not isinstance(value, kinds) or is_bool != wants_bool:
        raise ConfigurationError(
            f"{_PREFIX}{name} must be {expected}, got a {type(value).__name__}"
        )
    return value


def _reject(given: Mapping[str, Any], names: tuple[str, ...], ignored: bool, needs: str) -> None:
    stray = [_PREFIX + name for name in names if name in given]
    if ignored and stray:
        raise ConfigurationError(f"{', '.join(stray)} only applies with {needs}")
