"""The Django app: builds the encryptor from settings.SQLA_ENVELOPE when Django starts."""

from __future__ import annotations

try:
    from django.apps import AppConfig  # type: ignore[import-untyped]
    from django.core import checks  # type: ignore[import-untyped]
except ImportError as exc:  # name the extra, not only the missing module
    raise ImportError(
        "sqla_envelope.django needs Django: pip install 'sqla-envelope[django]'"
    ) from exc

from ..encryptor import Encryptor, configure
from .checks import check_settings
from .conf import EnvelopeSettings, from_django

__all__ = ["SqlaEnvelopeConfig"]


class SqlaEnvelopeConfig(AppConfig):  # type: ignore[misc]
    """``"sqla_envelope.django"`` in INSTALLED_APPS: the default encryptor from settings.

    ``ready()`` raises ConfigurationError for bad settings or an unreadable key
    file, so a misconfigured project fails at start (``manage.py``, the WSGI
    module) rather than on its first encrypted write. ``manage.py check`` also
    reports the settings and the database alias as errors (sqla_envelope.E001, E002).
    """

    name = "sqla_envelope.django"
    label = "sqla_envelope"
    verbose_name = "sqla-envelope"

    options: EnvelopeSettings | None = None
    encryptor: Encryptor | None = None

    def ready(self) -> None:
        """Called once by ``django.setup()``: build the encryptor from settings, install it."""
        checks.register(check_settings)
        options = from_django()
        encryptor = options.encryptor()
        self.options, self.encryptor = options, encryptor
        configure(encryptor)
