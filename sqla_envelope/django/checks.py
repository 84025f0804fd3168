"""System checks (``manage.py check``): settings.SQLA_ENVELOPE and the database it names."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error  # type: ignore[import-untyped]
from django.db import connections  # type: ignore[import-untyped]

from ..errors import ConfigurationError
from ..keyrings.local import LocalKeyring
from .conf import SETTING, from_django
from .engine import database_url

__all__ = ["check_settings"]


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """sqla_envelope.E001 for bad settings or key file, E002 for a database with no engine."""
    try:
        options = from_django()
        if options.key_file is not None:
            LocalKeyring.from_file(options.key_file)
    except ConfigurationError as exc:
        hint = f"See sqla_envelope.django.conf for the keys of {SETTING}."
        return [Error(str(exc), hint=hint, obj=SETTING, id="sqla_envelope.E001")]
    try:
        database_url(connections.settings[options.database])
    except ConfigurationError as exc:
        hint = "get_engine() and the envelope_* commands need an engine for this database."
        where = f"DATABASES[{options.database!r}]"
        return [Error(str(exc), hint=hint, obj=where, id="sqla_envelope.E002")]
    return []
