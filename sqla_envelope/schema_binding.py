"""The schema a statement runs in, when ``schema_translate_map`` moves its tables.

A value's default context names its table, schema-qualified. With one ``Table``
serving a schema per tenant through SQLAlchemy's ``schema_translate_map``, the
schema is only known when a statement executes: the engine event that sees each
statement's execution options records the map here, for the column types'
processors that run during that execution (and for the rows fetched after it).

The map is kept per thread and per asyncio task (a ContextVar; SQLAlchemy's
asyncio layer runs its greenlets in the task's context). A result read after a
later statement ran in the same thread or task under another map is read under
that other map, and fails to decrypt rather than give a wrong value.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

__all__ = [
    "TRANSLATING",
    "SchemaTranslation",
    "current_translation",
    "note_execution",
    "schema_under",
    "translation_of",
]

SchemaTranslation = Mapping[Any, Any]

_current: ContextVar[SchemaTranslation | None] = ContextVar(
    "sqla_envelope_schema_translation", default=None
)
# Whether any statement has run with a translation in this process: until then
# the per-value path reads this flag only (a list, so closures hold it directly).
TRANSLATING = [False]


def note_execution(execution_options: Mapping[str, Any]) -> None:
    """Record the schema translation of the statement about to execute (or none)."""
    translation = execution_options.get("schema_translate_map")
    if translation:
        TRANSLATING[0] = True
        _current.set(translation)
    elif TRANSLATING[0]:
        _current.set(None)


def current_translation() -> SchemaTranslation | None:
    """The translation of the statement executed last in this thread or task."""
    return _current.get()


def translation_of(bind: Any) -> SchemaTranslation | None:
    """The ``schema_translate_map`` an Engine or Connection applies to what it executes."""
    options = bind.get_execution_options() if hasattr(bind, "get_execution_options") else {}
    return options.get("schema_translate_map") or None


def schema_under(schema: str | None, translation: SchemaTranslation | None) -> str | None:
    """The schema a table declared in ``schema`` lives in under ``translation``.

    For statements built on lightweight ``sa.table()`` views, which SQLAlchemy's
    translation does not reach.
    """
    if translation is not None and schema in translation:
        translated: str | None = translation[schema]
        return translated
    return schema
