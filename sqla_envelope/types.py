"""EncryptedType: a SQLAlchemy column type that stores each value in its own envelope."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Dialect, LargeBinary, String, Text
from sqlalchemy.sql.cache_key import NO_CACHE
from sqlalchemy.sql.type_api import TypeDecorator, TypeEngine
from sqlalchemy.types import to_instance

from .codecs import Codec, codec_for
from .comparisons import GuardedComparator
from .context import EncryptionContext
from .declaration import bounded_encoder, refuse_unique_or_index
from .decorated import undecorate
from .encryptor import Encryptor, get_default_encryptor
from .errors import (
    ConfigurationError,
    DecryptionError,
    InvalidValueError,
    KeyringError,
    MalformedEnvelopeError,
)
from .rows.values import (
    RowBound,
    RowStored,
    SealedValue,
    bound_context,
    check_context_columns,
)
from .schema_binding import TRANSLATING, SchemaTranslation, current_translation
from .storage import (
    BINARY,
    BLOB_CAPACITY,
    SMALL_LENGTH,
    Storage,
    envelope_shaped,
    loader,
    mysql_capacity,
    mysql_type,
    storer,
)

__all__ = ["EncryptedType"]


class EncryptedType(TypeDecorator[Any]):
    """A column whose every non-NULL value is encrypted under its own data key.

    ``impl_type`` is the logical type the application sees (String, Integer,
    JSON, ..., or a TypeDecorator over one of them, whose own conversions run
    before encryption and after decryption: decorated.py). The value is bound
    to its table and column as authenticated context, ``{"table": ...,
    "column": ...}``, unless ``context=`` gives a stable label of your own (so
    renames need no re-encryption). ``encryptor=None`` uses the default set by
    ``configure()``, looked up when a value is first encrypted or decrypted.
    ``storage="base64"`` keeps envelopes as text for schemas that cannot hold
    binary.

    ``context_columns=("tenant_id",)`` binds each value to those columns of its
    own row too: their values join its context (so KMS and CloudTrail see the
    tenant), and a value copied to a row whose bound values differ, or left in a
    row whose tenant changed, fails to decrypt. The ORM and Core statements that
    give the bound columns with the value write it (rows/sync.py); one that does
    not is refused before it runs. A result that carries the bound columns reads
    it; one that does not yields a SealedValue to ``open(row)`` (rows/values.py).

    ``allow_plaintext=True`` is for the duration of a migration only (as Rails'
    ``support_unencrypted_data``): a stored value that is not an envelope at all
    is returned as plaintext instead of raising MalformedEnvelopeError. A value
    that is an envelope and fails to decrypt still raises. Writes always encrypt.

    A declared size holds as it would on a plaintext column: a value longer than
    ``String(n)`` characters or ``LargeBinary(n)`` bytes, or past a
    ``Numeric(precision, scale)``, raises InvalidValueError and nothing is stored
    (a plaintext NUMERIC would round it: refused rather than changed).
    ``check_length=False`` lets such values through (legacy data a plaintext
    column on SQLite let in), bounded only by what the column holds.

    SQL that compares or transforms the column (``==``, ``LIKE``, functions,
    ``CAST``, ``ORDER BY``, ...) raises UnsupportedComparisonError, while the
    expression is built or at the latest when the statement is compiled
    (comparisons.py, sql_guard.py): randomized ciphertexts never match, and their
    order, length or groups mean nothing. ``unique=True``, ``index=True``, and a
    UniqueConstraint or Index on the column raise ConfigurationError when the
    table is declared, for the same reason.
    """

    impl = LargeBinary
    cache_ok = True

    def __init__(
        self,
        impl_type: TypeEngine[Any] | type[TypeEngine[Any]] = String,
        encryptor: Encryptor | None = None,
        *,
        context: Mapping[str, str] | None = None,
        storage: Storage = "binary",
        allow_plaintext: bool = False,
        check_length: bool = True,
        context_columns: Sequence[str] = (),
    ) -> None:
        super().__init__()
        logical = inner = to_instance(impl_type)
        while isinstance(inner, TypeDecorator):  # under an application's decorators too
            if isinstance(inner, EncryptedType):
                raise ConfigurationError("EncryptedType cannot wrap another EncryptedType")
            inner = inner.impl_instance
        base, decorators = undecorate(logical)
        if encryptor is not None and not isinstance(encryptor, Encryptor):
            raise ConfigurationError("encryptor= takes an Encryptor or None")
        if storage not in ("binary", "base64"):
            raise ConfigurationError("storage= is 'binary' or 'base64'")
        # The codec and the declared sizes are the base type's; a TypeDecorator's
        # own conversions run around them (decorated.py).
        self._base, self._decorators = base, decorators
        self._codec = codec_for(base)
        self.impl_type = logical
        self.encryptor = encryptor
        self.context = EncryptionContext(context) if context is not None else None
        self.storage = storage
        self.allow_plaintext = allow_plaintext
        self.check_length = check_length
        self.context_columns = check_context_columns(context_columns)
        if self.context_columns:
            install_row_binding()
        if storage == "base64":
            self.impl = self.impl_instance = Text()  # type: ignore[assignment]
        self._column: Column[Any] | None = None
        self._bound_context: EncryptionContext | None = None  # derived from _column, once
        self._translated: dict[Any, EncryptionContext] = {}  # by translated schema
        self._row_contexts: dict[Any, EncryptionContext] = {}  # by a row's bound values

    # -- where the value lives: its default context ---------------------------------

    def _set_parent(self, parent: Any, outer: bool = False, **kw: Any) -> None:
        """Called by SQLAlchemy when a Column takes this type; remembers the column."""
        super()._set_parent(parent, outer=outer, **kw)
        if not isinstance(parent, Column):
            return
        refuse_unique_or_index(parent, parent.name or "encrypted column")
        if self._column is None or self._column is parent:
            self._column, self._bound_context, self._translated = parent, None, {}
            self._row_contexts = {}
            return
        # The same instance was handed to a second column (a type_annotation_map
        # entry, a copied mixin column): give that column a copy of its own, or the
        # two columns would share one context and values could move between them.
        own = self.copy()
        own._column, own._bound_context, own._translated = parent, None, {}
        own._row_contexts = {}
        parent.type = own

    def encryption_context(self) -> EncryptionContext:
        """The context values of this column are bound to, as the table is declared.

        ``{"table": <schema-qualified table name>, "column": <column name>}``, or the
        ``context=`` label. Raises ConfigurationError when the type is not attached
        to a table column and no ``context=`` was given: encrypting without a
        binding would fail open.
        """
        if self.context is not None:
            return self.context
        bound = self._bound_context
        if bound is None:
            bound = self._bound_context = self._column_context()
        return bound

    def context_under(self, translation: SchemaTranslation | None) -> EncryptionContext:
        """The context of this column's values in a statement run with ``schema_translate_map``.

        The table's schema as the map translates it replaces the declared one, so a
        value copied from one tenant's schema to another's fails to decrypt there.
        A ``context=`` label is kept as it is: it is the stable name of the values,
        wherever they live.
        """
        if translation is None or self.context is not None:
            return self.encryption_context()
        table = getattr(self._column, "table", None)
        schema = getattr(table, "schema", None)
        if table is None or schema not in translation:
            return self.encryption_context()
        translated = translation[schema]
        context = self._translated.get(translated)
        if context is None:
            name = f"{translated}.{table.name}" if translated else table.name
            context = EncryptionContext({"table": name, "column": self._column.name})  # type: ignore[union-attr]
            self._translated[translated] = context
        return context

    def execution_context(self) -> EncryptionContext:
        """The context for the statement executing now (``context_under`` its translation)."""
        return self.context_under(current_translation())

    def _column_context(self) -> EncryptionContext:
        column = self._column
        table = getattr(column, "table", None) if column is not None else None
        if column is None or table is None or not hasattr(table, "fullname"):
            raise ConfigurationError(
                "EncryptedType is not attached to a table column; pass context= to bind "
                "its values to a label of your own"
            )
        return EncryptionContext({"table": table.fullname, "column": column.name})

    def _label(self) -> str:
        column = self._column
        if column is not None and getattr(column, "table", None) is not None:
            return f"{column.table.fullname}.{column.name}"
        return "encrypted value"

    # -- storage --------------------------------------------------------------------

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            # MySQL's BLOB/TEXT stop at 64 KiB: the type must hold every value.
            return dialect.type_descriptor(mysql_type(self._codec, self._base, self.storage))
        # Not type_descriptor(): on PostgreSQL that turns Text into a length-less
        # VARCHAR, and autogenerate then sees a type change against TEXT columns.
        return self.impl_instance

    def envelope_loader(self) -> Callable[[Any], bytes]:
        """Stored value -> envelope bytes; MalformedEnvelopeError for what cannot be one."""
        return loader(self.storage)

    def envelope_storer(self) -> Callable[[bytes], Any]:
        """Envelope bytes -> the value to store (base64 text, or the bytes as they are)."""
        return storer(self.storage)

    @property
    def codec(self) -> Codec:
        """How values of the logical type become the bytes that are encrypted.

        For a TypeDecorator, its own conversions included: the codec encodes and
        decodes the values the application sees.
        """
        return self._decorators.around(self._codec)

    @property
    def python_type(self) -> type[Any]:
        return self.impl_type.python_type

    # -- the per-value hot path -----------------------------------------------------

    def bind_processor(self, dialect: Dialect) -> Any:
        """Returns the function SQLAlchemy calls for each parameter at execution time.

        Written as one closure (not process_bind_param) so the per-value path is a
        codec call, one encrypt and nothing else. A value that cannot be encoded or
        encrypted raises one of our errors, never another exception: SQLAlchemy would
        wrap that in a StatementError quoting every parameter of the row.
        """
        encode = self._codec.encode
        if self.check_length:
            encode = bounded_encoder(self._codec, self._base)
        fixed = self.encryptor
        store = self.envelope_storer()
        context: EncryptionContext | None = None
        translating = TRANSLATING
        if self.context_columns:
            return self._within_capacity(dialect, self._row_bound_writer(encode, store))

        def process(value: Any) -> Any:
            nonlocal context
            if value is None:
                return None
            if context is None:  # on the first value: the type may be attached late
                context = self.encryption_context()
            encryptor = fixed if fixed is not None else get_default_encryptor()
            try:
                envelope = encryptor.seal(
                    encode(value), self.execution_context() if translating[0] else context
                )
            except (KeyringError, ConfigurationError, DecryptionError):
                raise  # about the keys (a shredded tenant's too), not the value
            except Exception as exc:  # re-raised below, holding nothing of the value
                failure = exc
            else:
                return store(envelope)
            raise self._unwritable(failure)

        # The TypeDecorator's own conversion, for None too, as SQLAlchemy calls it.
        return self._within_capacity(dialect, self._decorators.before(process, self._label()))

    def _within_capacity(self, dialect: Dialect, process: Callable[[Any], Any]) -> Any:
        """``process``, refusing on MySQL an envelope too long for the column."""
        if dialect.name not in ("mysql", "mariadb"):
            return process
        # MySQL without a strict sql_mode cuts a value too long for its column,
        # with a warning nobody reads: the envelope would never decrypt again.
        capacity = mysql_capacity(self._codec, self._base, self.storage)

        def process_within_capacity(value: Any) -> Any:
            stored = process(value)
            if stored is not None and len(stored) > capacity:
                raise self._too_large(len(stored), capacity)
            return stored

        return process_within_capacity

    def _row_bound_writer(
        self, encode: Callable[[Any], bytes], store: Callable[[bytes], Any]
    ) -> Callable[[Any], Any]:
        """The bind processor of a column bound to other columns of its row.

        It takes only a RowBound, which the engine hook (rows/sync.py) makes of
        each value whose statement gives the bound columns too: anything else
        reached here through a statement that does not, and is refused.
        """
        label = self._label()
        convert = self._decorators.before(_same, label)
        names = ", ".join(self.context_columns)

        def process(value: Any) -> Any:
            if value is None:
                return convert(None)
            if type(value) is not RowBound:
                raise ConfigurationError(
                    f"{label} is bound to its row's {names}, which this statement does not "
                    "give with the value: give them in the same statement, as Python values "
                    "(the ORM does)"
                )
            inner = convert(value.value)
            if inner is None:
                return None
            context = self.row_context(value.pairs)
            encryptor = self.encryptor if self.encryptor is not None else get_default_encryptor()
            try:
                envelope = encryptor.seal(encode(inner), context)
            except (KeyringError, ConfigurationError, DecryptionError):
                raise  # about the keys (a shredded tenant's too), not the value
            except Exception as exc:  # re-raised below, holding nothing of the value
                failure = exc
            else:
                return store(envelope)
            raise self._unwritable(failure)

        return process

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        """Returns the function SQLAlchemy calls for each fetched value of this column."""
        if self.context_columns:
            return self._row_bound_reader()
        decode = self._codec.decode
        fixed = self.encryptor
        load = self.envelope_loader()
        as_text = self.storage == "base64"
        context: EncryptionContext | None = None
        translating = TRANSLATING

        def process(value: Any) -> Any:
            nonlocal context
            if value is None:
                return None
            if context is None:
                context = self.encryption_context()
            stored = value
            try:
                if as_text or type(value) is not bytes:  # spares the common case a call
                    value = load(value)
                encryptor = fixed if fixed is not None else get_default_encryptor()
                return decode(
                    encryptor.open(value, self.execution_context() if translating[0] else context)
                )
            except DecryptionError as exc:
                failure = exc
            return self._unreadable(stored, failure)

        return self._decorators.after(process, self._label())

    def _row_bound_reader(self) -> Callable[[Any], Any]:
        """The result processor of a column bound to other columns of its row.

        A RowStored (the result carried the bound columns: rows/reads.py) is
        opened under them; a bare stored value becomes a SealedValue.
        """
        label = self._label()
        after = self._decorators.after(_same, label)
        names = self.context_columns
        opener = self._row_bound_opener()

        def process(value: Any) -> Any:
            if type(value) is RowStored:
                if value.stored is None:
                    return after(None)
                if value.pairs is None:
                    raise DecryptionError(
                        f"{label}: its row's {', '.join(names)} hold no value it could have "
                        "been bound to (NULL, or not str, int or UUID): it cannot be read"
                    )
                return opener(value.stored, value.pairs)
            if value is None:
                return after(None)
            return SealedValue(value, names, opener)

        return process

    def open_row_bound(self, stored: Any, pairs: tuple[tuple[str, str], ...]) -> Any:
        """Decrypt a stored value of a row-bound column under its row's bound values.

        ``pairs`` are the (column, text) pairs of rows/values.bound_pairs. A value
        that does not decrypt under them raises DecryptionError naming them: it was
        written for another row, or its row's bound values changed without it
        being encrypted again, or it was altered.
        """
        return self._row_bound_opener()(stored, pairs)

    def _row_bound_opener(self) -> Callable[[Any, tuple[tuple[str, str], ...]], Any]:
        """``open_row_bound`` with what does not change from value to value looked up once."""
        label = self._label()
        load = self.envelope_loader()
        decode = self.codec.decode
        fixed = self.encryptor
        row_context = self.row_context

        def open_bound(stored: Any, pairs: tuple[tuple[str, str], ...]) -> Any:
            encryptor = fixed if fixed is not None else get_default_encryptor()
            try:
                return decode(encryptor.open(load(stored), row_context(pairs)))
            except DecryptionError as exc:
                failure = exc
            if type(failure) is DecryptionError:
                shown = ", ".join(f"{name}={text!r}" for name, text in pairs)
                raise DecryptionError(
                    f"{label}: does not decrypt under its row's {shown}: it was written for "
                    "another row (copied, or the row's bound columns changed without it "
                    "being encrypted again), or it was altered"
                )
            return self._decorators.after(_same, label)(self._unreadable(stored, failure))

        return open_bound

    def row_context(self, pairs: tuple[tuple[str, str], ...]) -> EncryptionContext:
        """The context of a value whose row's bound columns hold ``pairs``.

        Kept per tenant (a few thousand at most): building a context sorts and
        encodes it, and a result meets each tenant many times.
        """
        translated = TRANSLATING[0]
        key: Any = (self.execution_context(), pairs) if translated else pairs
        found = self._row_contexts.get(key)
        if found is None:
            base = self.execution_context() if translated else self.encryption_context()
            found = bound_context(self._label(), base, pairs)
            if len(self._row_contexts) >= _ROW_CONTEXTS_KEPT:
                self._row_contexts.clear()
            self._row_contexts[key] = found
        return found

    def _unwritable(self, failure: Exception) -> InvalidValueError:
        """The error for a value that cannot be encrypted, holding nothing of the value.

        Built outside the ``except`` block, so it carries no ``__context__``: a
        codec's own error (a UnicodeEncodeError, a ValueError) can quote the value.
        """
        if isinstance(failure, InvalidValueError):
            return InvalidValueError(f"{self._label()}: {failure}")
        return InvalidValueError(
            f"{self._label()}: cannot encrypt this value: {type(failure).__name__}"
        )

    def _too_large(self, size: int, capacity: int) -> InvalidValueError:
        """The error for an envelope its MySQL column would cut, naming what fits instead."""
        small, long = ("TEXT", "LONGTEXT") if self.storage == "base64" else ("BLOB", "LONGBLOB")
        column = small if capacity == BLOB_CAPACITY else long
        return InvalidValueError(
            f"{self._label()}: this value's envelope takes {size:,} bytes, more than the "
            f"{capacity:,} a {column} column holds on MySQL and MariaDB; declare the logical "
            f"type without a length or with one over {SMALL_LENGTH:,} (stored as {long}) "
            f"and change the column to {long}"
        )

    def _unreadable(self, stored: Any, failure: DecryptionError) -> Any:
        """A stored value that did not decrypt: legacy plaintext, or a clear error.

        Under ``allow_plaintext``, a value that is not envelope-shaped (see
        ``looks_like_envelope``) and decodes as the logical type is returned as the
        plaintext it is. Anything else raises, a truncated or damaged envelope
        included, with a fresh error and no ``__context__``: a codec's error can
        quote the decrypted bytes.
        """
        if (
            self.allow_plaintext
            and isinstance(failure, MalformedEnvelopeError)
            and not self.looks_like_envelope(stored)
        ):
            try:
                return self._plaintext(stored)
            except DecryptionError as exc:
                failure = exc
        error = type(failure)(f"{self._label()}: {failure}")
        # What it says beyond its message (a shredded tenant's name), never its
        # recorded cause (_first_cause): that may be a codec's error quoting the value.
        error.__dict__.update((k, v) for k, v in failure.__dict__.items() if not k.startswith("_"))
        raise error

    def looks_like_envelope(self, stored: Any) -> bool:
        """Whether a stored value is an envelope, or was one before damage or a cut.

        The rule by which ``allow_plaintext`` reads, and migrations skip, legacy
        plaintext: an envelope-shaped value that does not decrypt is damaged, never
        plaintext (``storage.envelope_shaped``).
        """
        return envelope_shaped(stored, self.storage)

    def _plaintext(self, stored: Any) -> Any:
        """A value stored before encryption, read under ``allow_plaintext``.

        Text and bytes are decoded as the logical type; a value of a column's old
        SQL type (an int, a date, a Decimal) must be one the logical type accepts.
        Raises DecryptionError for anything else.
        """
        if isinstance(stored, str):
            return self._codec.decode(stored.encode("utf-8"))
        if isinstance(stored, BINARY):
            return self._codec.decode(bytes(stored))
        try:
            encoded = self._codec.encode(stored)
        except InvalidValueError:
            raise MalformedEnvelopeError(
                f"stored {type(stored).__name__} is not a {self._codec.name} value"
            ) from None
        return self._codec.decode(encoded)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return self.bind_processor(dialect)(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return self.result_processor(dialect, None)(value)

    def process_literal_param(self, value: Any, dialect: Dialect) -> str:
        raise ConfigurationError("an encrypted value cannot be rendered as a SQL literal")

    # -- SQL expressions ------------------------------------------------------------

    class comparator_factory(GuardedComparator):  # noqa: N801 - SQLAlchemy's name
        """Refuses, while the expression is built, operators that cannot work on ciphertext.

        Its class also marks the column as encrypted for the check sql_guard runs when
        a statement is compiled.
        """

    # -- SQLAlchemy's statement cache ------------------------------------------------

    @property
    def _static_cache_key(self) -> Any:
        """Every option that changes what is stored or how it is read.

        SQLAlchemy builds a type's cache key from the positional parameters of its
        ``__init__`` only (``impl_type``, ``encryptor``): two statements whose types
        differ in ``context=`` would share one compiled form and its processors,
        and a value would be stored under the first one's context. A TypeDecorator
        whose class does not set ``cache_ok`` makes the statement uncached, as it
        would on a plaintext column.
        """
        decorators = self._decorators.cache_key
        if decorators is None:
            return NO_CACHE
        return (
            EncryptedType,
            decorators,
            self._base._static_cache_key,
            self.encryptor,  # pinned encryptors: compared by identity
            self.context.canonical if self.context is not None else None,
            self.storage,
            self.allow_plaintext,
            self.check_length,
            self.context_columns,
        )

    # -- rendering (Alembic autogenerate, logs) -------------------------------------

    def __repr__(self) -> str:
        """An importable expression without the encryptor, for Alembic migrations."""
        logical = self.impl_type
        module = type(logical).__module__
        prefix = "sa." if module.startswith("sqlalchemy.") else f"{module}."
        args = [prefix + repr(logical)]
        if self.context is not None:
            args.append(f"context={self.context.as_dict()!r}")
        if self.storage != "binary":
            args.append(f"storage={self.storage!r}")
        if self.allow_plaintext:
            args.append("allow_plaintext=True")
        if not self.check_length:
            args.append("check_length=False")
        if self.context_columns:
            args.append(f"context_columns={self.context_columns!r}")
        return f"EncryptedType({', '.join(args)})"


_ROW_CONTEXTS_KEPT = 4096


def _same(value: Any) -> Any:
    return value


def install_row_binding() -> None:
    """Install the engine and ORM hooks that carry a row's bound values (idempotent)."""
    from .rows import install

    install()


# Alembic renders a custom type as "<its module>.<repr>"; advertising the public
# package as the module yields sqla_envelope.EncryptedType(...) in migrations.
EncryptedType.__module__ = "sqla_envelope"
