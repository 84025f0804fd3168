"""BlindIndex: the column type of a blind index, a keyed hash of an encrypted column's value.

Declared beside the encrypted column it indexes (``source``), on the same table.
It hashes on bind: whatever plaintext is bound to it (the ORM's copy of the
source value, a Core ``insert().values(email_bidx=x)``, the right side of
``email_bidx == x``) is normalized, encoded canonically and hashed, so the
database only ever sees the hash. Reading it returns the stored hash bytes.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Column, LargeBinary
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from ..context import EncryptionContext
from ..encryptor import Encryptor, get_default_encryptor
from ..errors import ConfigurationError, EnvelopeError, InvalidValueError
from ..rows.values import RowBound, RowStored
from .encoding import canonical
from .hashing import INDEX_KEY_SIZE, blind_hash, derive_index_key

__all__ = ["BlindIndex", "IndexDigest"]

_UNKNOWN = object()


class IndexDigest(bytes):
    """Bytes that are already a hash of this index: bound as they are, not hashed again."""


class BlindIndex(TypeDecorator[bytes]):
    """A blind index of the encrypted column ``source`` (or columns, for a compound index).

    ``normalize`` maps the value (for a compound index, the values in the order of
    ``source``, as positional arguments) to what is hashed: ``str.lower`` makes a
    lookup by email case-blind. ``bits`` (a multiple of 8 from 16 to 256)
    truncates the hash: fewer bits leak less about equal values and make lookups
    return some rows whose index collides, which the application filters after
    decryption (docs/searching.md). The index's key is derived from the
    encryptor's ``index_key`` with ``label`` (by default ``<table>.<index
    column>``), or is ``key`` (32 bytes) itself.

    When the source is bound to other columns of its row (``EncryptedType(...,
    context_columns=("tenant_id",))``), so is its index: each tenant's values are
    hashed under a key of that tenant's own, so equal values of two tenants do not
    match, and a lookup names the tenant (``search.matching``).

    ``replaces`` names the index column this one replaces (a new key, ``normalize``
    or ``bits``): while ``reindex`` fills this one, lookups ask both, so no row is
    missed; then drop the old column and the argument (docs/searching.md).
    """

    impl = LargeBinary
    cache_ok = True

    def __init__(
        self,
        source: str | Sequence[str],
        *,
        normalize: Callable[..., Any] | None = None,
        bits: int = 256,
        key: bytes | None = None,
        label: str | None = None,
        replaces: str | None = None,
    ) -> None:
        if isinstance(source, str):
            sources: tuple[str, ...] = (source,)
        else:
            sources = tuple(source)
        if not sources or not all(isinstance(name, str) and name for name in sources):
            raise ConfigurationError("BlindIndex(source) names one or more encrypted columns")
        if not isinstance(bits, int) or bits % 8 or not 16 <= bits <= 256:
            raise ConfigurationError("bits= must be a multiple of 8 from 16 to 256")
        if key is not None and (not isinstance(key, bytes) or len(key) != INDEX_KEY_SIZE):
            raise ConfigurationError(f"key= must be {INDEX_KEY_SIZE} bytes")
        super().__init__(bits // 8)
        self.sources = sources
        self.normalize = normalize
        self.bits = bits
        self.label = label
        self.replaces = replaces
        self._key = key
        self._column: Column[Any] | None = None
        self._pinned: Any = _UNKNOWN  # the source's own encryptor, once the table is known
        self._keys: weakref.WeakKeyDictionary[Encryptor, bytes] = weakref.WeakKeyDictionary()
        self._bound_keys: dict[tuple[int, Any], bytes] = {}  # per encryptor and tenant

    @property
    def context_columns(self) -> tuple[str, ...]:
        """The columns of its row the index is bound to: those its sources are bound to."""
        if self._column is None or getattr(self._column, "table", None) is None:
            return ()
        names: list[str] = []
        for source in self.source_columns():
            for name in getattr(source.type, "context_columns", ()):
                if name not in names:
                    names.append(name)
        return tuple(names)

    @property
    def indexes_source(self) -> str | None:
        """The one column this index answers ``==`` and ``IN`` for; None for a compound one."""
        return self.sources[0] if len(self.sources) == 1 else None

    def _set_parent(self, parent: Any, outer: bool = False, **kw: Any) -> None:
        super()._set_parent(parent, outer=outer, **kw)
        if not isinstance(parent, Column):
            return
        if self._column is None or self._column is parent:
            self._column, self._pinned = parent, _UNKNOWN
            return
        own = self.copy()  # one type instance per column, as EncryptedType does
        own._column, own._keys, own._pinned = parent, weakref.WeakKeyDictionary(), _UNKNOWN
        parent.type = own

    # -- hashing ----------------------------------------------------------------------

    def index_label(self) -> str:
        """The label this index's key is derived with."""
        if self.label is not None:
            return self.label
        column = self._column
        table = getattr(column, "table", None)
        if column is None or table is None or not hasattr(table, "fullname"):
            raise ConfigurationError(
                "BlindIndex is not attached to a table column; pass label= to name its key"
            )
        return f"{table.fullname}.{column.name}"

    def source_columns(self) -> list[Column[Any]]:
        """The encrypted columns this index hashes, from its table."""
        table = getattr(self._column, "table", None)
        if table is None:
            raise ConfigurationError("BlindIndex is not attached to a table")
        missing = [name for name in self.sources if name not in table.c]
        if missing:
            raise ConfigurationError(
                f"BlindIndex on {table.name}.{self._column.name} names columns the "  # type: ignore[union-attr]
                f"table does not have: {', '.join(missing)}"
            )
        return [table.c[name] for name in self.sources]

    def index_key(self, bound: tuple[tuple[str, str], ...] = ()) -> bytes:
        """The key this index hashes with (derived once per encryptor, then held).

        ``bound`` are a row's bound values (rows/values.py) for an index bound to
        its row: each tenant's key is derived with the tenant's values in its label.
        """
        if bound:
            return self._bound_key(bound)
        if self._key is not None:
            return self._key
        encryptor = self._encryptor()
        derived = self._keys.get(encryptor)
        if derived is None:
            derived = derive_index_key(encryptor.unwrapped_index_key(), self.index_label())
            self._keys[encryptor] = derived
        return derived

    def _bound_key(self, bound: tuple[tuple[str, str], ...]) -> bytes:
        root = self._key if self._key is not None else None
        encryptor = None if root is not None else self._encryptor()
        cache_key = (id(encryptor), bound)
        derived = self._bound_keys.get(cache_key)
        if derived is None:
            if encryptor is not None:
                root = encryptor.unwrapped_index_key()
            # The label names the row's values unambiguously: their canonical encoding.
            label = f"{self.index_label()}/{EncryptionContext(dict(bound)).canonical.hex()}"
            derived = derive_index_key(root, label)  # type: ignore[arg-type]
            if len(self._bound_keys) >= 10_000:
                self._bound_keys.clear()
            self._bound_keys[cache_key] = derived
        return derived

    def _encryptor(self) -> Encryptor:
        """The source column's own encryptor, else the configured default (looked up each time)."""
        pinned = self._pinned
        if pinned is _UNKNOWN:
            pinned = None
            if self._column is not None and getattr(self._column, "table", None) is not None:
                found = getattr(self.source_columns()[0].type, "encryptor", None)
                pinned = found if isinstance(found, Encryptor) else None
            self._pinned = pinned
        return pinned if pinned is not None else get_default_encryptor()

    def normalized(self, value: Any) -> Any:
        """What is hashed for a plaintext (a tuple for a compound index); None for NULL."""
        if value is None or self.normalize is None:
            return value
        return self.normalize(*value) if len(self.sources) > 1 else self.normalize(value)

    def digest(self, value: Any, bound: tuple[tuple[str, str], ...] = ()) -> bytes | None:
        """The index value of a plaintext (a tuple for a compound index); None for NULL.

        ``bound``: the row's bound values, for an index bound to its row.
        """
        if isinstance(value, IndexDigest):
            return bytes(value)
        value = self.normalized(value)
        if value is None:
            return None
        return blind_hash(self.index_key(bound), canonical(value), self.bits)

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        bound: tuple[tuple[str, str], ...] = ()
        if type(value) is RowBound:
            value, bound = value.value, value.pairs
        elif value is not None and not isinstance(value, IndexDigest) and self.context_columns:
            raise ConfigurationError(
                f"blind index {self._where()} is per {', '.join(self.context_columns)}: "
                "look a value up with sqla_envelope.search.matching(column, value, "
                f"{'=..., '.join(self.context_columns)}=...)"
            )
        try:
            return self.digest(value, bound)
        except EnvelopeError:
            raise
        except Exception as exc:  # normalize= is the application's code; say nothing of the value
            failure = exc
        raise InvalidValueError(
            f"blind index {self._where()}: normalize failed: {type(failure).__name__}"
        )

    def process_result_value(self, value: Any, dialect: Dialect) -> bytes | None:
        if type(value) is RowStored:
            value = value.stored
        return bytes(value) if value is not None else None

    def _where(self) -> str:
        try:
            return self.index_label()
        except ConfigurationError:
            return "(unattached)"

    @property
    def _static_cache_key(self) -> tuple[Any, ...]:
        key_id = hashlib.sha256(self._key).digest() if self._key is not None else None
        return (
            BlindIndex,
            self.sources,
            self.bits,
            self.label,
            self.replaces,
            self.normalize,
            key_id,
        )

    def __repr__(self) -> str:
        """An importable expression for Alembic (normalize= and key= are the application's)."""
        source = self.sources[0] if len(self.sources) == 1 else list(self.sources)
        args = [repr(source)]
        if self.bits != 256:
            args.append(f"bits={self.bits}")
        if self.label is not None:
            args.append(f"label={self.label!r}")
        if self.replaces is not None:
            args.append(f"replaces={self.replaces!r}")
        return f"BlindIndex({', '.join(args)})"


BlindIndex.__module__ = "sqla_envelope"
