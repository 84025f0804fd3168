"""Alembic helpers: render EncryptedType columns into migrations that import cleanly."""

from __future__ import annotations

from typing import Any

from .types import EncryptedType

__all__ = ["render_item"]


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """An Alembic ``render_item`` hook: adds ``import sqla_envelope`` where needed.

    Alembic renders a custom type as ``<module>.<repr>`` but does not import the
    module; with this hook in ``env.py`` (``context.configure(...,
    render_item=render_item)``) every migration that uses EncryptedType imports
    it. Returns False for everything else, so Alembic renders it as usual.
    """
    if type_ == "type" and isinstance(obj, EncryptedType):
        autogen_context.imports.add("import sqla_envelope")
        return f"sqla_envelope.{obj!r}"
    return False
