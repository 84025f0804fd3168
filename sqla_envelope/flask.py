"""SqlaEnvelope: a Flask extension that builds the default encryptor from ``app.config``.

Only Flask applications import this module; ``import sqla_envelope`` never imports
Flask. Settings, read once by ``init_app``:

- ``SQLA_ENVELOPE_KEY_FILE``: a LocalKeyring key file (``sqla-envelope keys generate``),
  relative to the working directory;
- or ``SQLA_ENVELOPE_KMS_KEY_ID``: an AWS KMS key id, key ARN, alias or alias ARN, with
  ``SQLA_ENVELOPE_KMS_REGION`` (unless the key id is an ARN),
  ``SQLA_ENVELOPE_KMS_ENDPOINT_URL`` (a VPC endpoint, a test server) and
  ``SQLA_ENVELOPE_KMS_ADDITIONAL_KEY_IDS`` (a list of keys every data key is also
  wrapped under: a replica in another region) and ``SQLA_ENVELOPE_KMS_DECRYPT_KEY_IDS``
  (keys that only unwrap: an alias's previous key during a rotation);
- ``SQLA_ENVELOPE_MODE``: ``"local"`` (the default with a key file), ``"direct"`` (the
  default with KMS) or ``"bounded_reuse"`` with ``SQLA_ENVELOPE_MAX_ROWS`` and
  ``SQLA_ENVELOPE_MAX_AGE`` (values per KMS wrapping key and its lifetime in seconds;
  docs/kms.md compares the modes);
- ``SQLA_ENVELOPE_CACHE_TTL`` and ``SQLA_ENVELOPE_CACHE_SIZE``: the Encryptor's cache
  of unwrapped data keys;
- ``SQLA_ENVELOPE_CACHE_WRITTEN_KEYS``: ``True`` caches each written value's data key
  too, so reading it back needs no KMS call (docs/kms.md says what that changes);
- ``SQLA_ENVELOPE_AUDIT_LOG``: ``True`` writes an INFO record on the
  ``sqla_envelope.audit`` logger for every wrap and unwrap (the application's
  logging configuration decides where it goes);
- ``SQLA_ENVELOPE_INDEX_KEY``: the wrapped blind index key, the text of
  ``Encryptor.new_index_key()`` (docs/searching.md).

Exactly one key source must be set. An unknown ``SQLA_ENVELOPE_*`` name, or an option
that the chosen mode would ignore, is a ``ConfigurationError`` at ``init_app`` time:
a typo in a security setting must not be silently dropped (the rules are in
sqla_envelope.settings, shared with the Django app).

The encryptor is installed with ``sqla_envelope.configure()``, which is process-wide:
one process serves one application's keys, and each ``init_app`` replaces the
default. Models declared before ``init_app`` (with Flask-SQLAlchemy, in an
application factory) work, because columns look the default up at first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    from flask import Flask, current_app, has_app_context
except ImportError as exc:  # name the extra, not only the missing module
    raise ImportError(
        "sqla_envelope.flask needs Flask and Flask-SQLAlchemy: pip install 'sqla-envelope[flask]'"
    ) from exc

from .encryptor import Encryptor, configure
from .errors import ConfigurationError
from .settings import parse_settings

__all__ = ["EXTENSION_NAME", "SqlaEnvelope", "get_encryptor"]

EXTENSION_NAME = "sqla_envelope"  # the key in app.extensions

_PREFIX = "SQLA_ENVELOPE_"


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
        key.removeprefix(_PREFIX): value for key, value in config.items() if key.startswith(_PREFIX)
    }
    return parse_settings(given, lambda key: _PREFIX + key).encryptor()
