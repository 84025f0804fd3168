"""Each row's context for the maintenance walks (rewrap, reencrypt, verify, migrations).

A walk reads stored values past the column type; for a row-bound column it reads
the bound columns too, and each value opens and seals under its own row's
context. The bound columns are also guarded: a row whose tenant changed while a
batch was being processed is not written under the old one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..context import EncryptionContext
from ..errors import DecryptionError
from .values import bound_context, bound_pairs

__all__ = ["RowContexts"]

_KEPT = 10_000  # contexts kept for reuse: a walk meets each tenant many times


class RowContexts:
    """The context of each row of one encrypted column: its own, plus its row's bound values."""

    def __init__(self, table: Any, column: Any, base: EncryptionContext) -> None:
        self.names: tuple[str, ...] = getattr(column.type, "context_columns", ())
        self.columns = [table.c[name] for name in self.names]
        self.base = base
        self._label = f"{table.name}.{column.name}"
        self._seen: dict[tuple[Any, ...], EncryptionContext] = {}

    def of(self, values: tuple[Any, ...]) -> EncryptionContext:
        """The context of a row whose bound columns hold ``values`` (in ``names`` order)."""
        if not self.names:
            return self.base
        found = self._seen.get(values)
        if found is None:
            given = dict(zip(self.names, values, strict=True))
            found = bound_context(
                self._label, self.base, bound_pairs(self._label, self.names, given.__getitem__)
            )
            if len(self._seen) >= _KEPT:
                self._seen.clear()
            self._seen[values] = found
        return found

    def moved(self, context: EncryptionContext, base: EncryptionContext) -> EncryptionContext:
        """``context`` with ``base`` in place of the column's own (``reencrypt(from_context=)``)."""
        if not self.names:
            return base
        return EncryptionContext({**base.as_dict(), **{n: context[n] for n in self.names}})

    def adapt(
        self, transform: Callable[[tuple[Any, ...], EncryptionContext], Any], width: int
    ) -> Callable[[tuple[Any, ...]], Any]:
        """A walk transform: the first ``width`` values and the row's context, from a row."""
        if not self.names:
            base = self.base
            return lambda row: transform(row, base)
        names = self.names

        def run(row: tuple[Any, ...]) -> Any:
            context = self.of(tuple(row[width:]))
            try:
                return transform(row[:width], context)
            except DecryptionError as exc:
                if type(exc) is not DecryptionError:
                    raise
                failure = exc
            shown = ", ".join(f"{name}={context[name]!r}" for name in names)
            raise DecryptionError(f"{failure} (its row's {shown})")

        return run
