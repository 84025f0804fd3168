"""Values bound to other columns of their row: ``EncryptedType(context_columns=...)``.

values.py carries a value with its row's bound values; sync.py gives them to
each INSERT and UPDATE; reads.py to each result that selects them; orm.py keeps
an ORM object's bound columns and values in step through flushes and loads.
"""

from __future__ import annotations

from .values import SealedValue

__all__ = ["SealedValue", "install"]

_installed = False


def install() -> None:
    """Install the engine and ORM hooks (idempotent; done when a column first binds)."""
    global _installed
    if _installed:
        return
    from . import orm, sync

    sync.install()
    orm.install()
    _installed = True
