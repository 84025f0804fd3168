"""EncryptedType: a SQLAlchemy column type that stores each value in its own envelope."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any, Literal

from sqlalchemy import Column, Dialect, LargeBinary, String, Text
from sqlalchemy.dialects import mysql
from sqlalchemy.sql.type_api import TypeDecorator, TypeEngine
from sqlalchemy.types import to_instance

from .codecs import Codec, codec_for
from .comparisons import GuardedComparator
from .context import EncryptionContext
from .encryptor import Encryptor, get_default_encryptor
from .envelope import FORMAT_VERSION
from .errors import (
    ConfigurationError,
    DecryptionError,
    InvalidValueError,
    KeyringError,
    MalformedEnvelopeError,
)

__all__ = ["EncryptedType"]

Storage = Literal["binary", "base64"]

# How every stored envelope starts: what allow_plaintext will not read as plaintext.
_VERSION_BYTE = bytes((FORMAT_VERSION,))
# Logical types whose encoding is small and bounded: a 64 KiB BLOB holds them on MySQL.
_SMALL_STRING = 8_000


class EncryptedType(TypeDecorator[Any]):
    """A column whose every non-NULL value is encrypted under its own data key.

    ``impl_type`` is the logical type the application sees (String, Integer,
    JSON, ...). The value is bound to its table and column as authenticated
    context, ``{"table": ..., "column": ...}``, unless ``context=`` gives a stable
    label of your own (so renames need no re-encryption). ``encryptor=None`` uses
    the default set by ``configure()``, looked up when a value is first encrypted
    or decrypted. ``storage="base64"`` keeps envelopes as text for schemas that
    cannot hold binary.

    ``allow_plaintext=True`` is for the duration of a migration only (as Rails'
    ``support_unencrypted_data``): a stored value that is not an envelope at all
    is returned as plaintext instead of raising MalformedEnvelopeError. A value
    that is an envelope and fails to decrypt still raises. Writes always encrypt.

    SQL that compares or transforms the column (``==``, ``LIKE``, functions, ``CAST``,
    ``ORDER BY``, ...) raises UnsupportedComparisonError, while the expression is built
    or at the latest when the statement is compiled (comparisons.py, sql_guard.py): randomized
    ciphertexts never match, and their order, length or groups mean nothing.
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
    ) -> None:
        super().__init__()
        logical = to_instance(impl_type)
        if isinstance(logical, EncryptedType):
            raise ConfigurationError("EncryptedType cannot wrap another EncryptedType")
        if encryptor is not None and not isinstance(encryptor, Encryptor):
            raise ConfigurationError("encryptor= takes an Encryptor or None")
        if storage not in ("binary", "base64"):
            raise ConfigurationError("storage= is 'binary' or 'base64'")
        self._codec = codec_for(logical)
        self.impl_type = logical
        self.encryptor = encryptor
        self.context = EncryptionContext(context) if context is not None else None
        self.storage = storage
        self.allow_plaintext = allow_plaintext
        if storage == "base64":
            self.impl = self.impl_instance = Text()  # type: ignore[assignment]
        self._column: Column[Any] | None = None
        self._bound_context: EncryptionContext | None = None  # derived from _column, once

    # -- where the value lives: its default context ---------------------------------

    def _set_parent(self, parent: Any, outer: bool = False, **kw: Any) -> None:
        """Called by SQLAlchemy when a Column takes this type; remembers the column."""
        super()._set_parent(parent, outer=outer, **kw)
        if not isinstance(parent, Column):
            return
        if self._column is None or self._column is parent:
            self._column, self._bound_context = parent, None
            return
        # The same instance was handed to a second column (a type_annotation_map
        # entry, a copied mixin column): give that column a copy of its own, or the
        # two columns would share one context and values could move between them.
        own = self.copy()
        own._column, own._bound_context = parent, None
        parent.type = own

    def encryption_context(self) -> EncryptionContext:
        """The context values of this column are bound to.

        Raises ConfigurationError when the type is not attached to a table column
        and no ``context=`` was given: encrypting without a binding would fail open.
        """
        if self.context is not None:
            return self.context
        bound = self._bound_context
        if bound is None:
            bound = self._bound_context = self._column_context()
        return bound

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
            # MySQL's BLOB/TEXT stop at 64 KiB; only small bounded types fit there.
            fixed = self._codec.fixed_size is not None
            length = getattr(self.impl_type, "length", None)
            small = fixed or (length is not None and length <= _SMALL_STRING)
            if self.storage == "base64":
                return dialect.type_descriptor(mysql.TEXT() if small else mysql.LONGTEXT())
            return dialect.type_descriptor(mysql.BLOB() if small else mysql.LONGBLOB())
        # Not type_descriptor(): on PostgreSQL that turns Text into a length-less
        # VARCHAR, and autogenerate then sees a type change against TEXT columns.
        return self.impl_instance

    def envelope_loader(self) -> Callable[[Any], bytes]:
        """Stored value -> envelope bytes; MalformedEnvelopeError for what cannot be one."""
        return _load_base64 if self.storage == "base64" else _load_binary

    def envelope_storer(self) -> Callable[[bytes], Any]:
        """Envelope bytes -> the value to store (base64 text, or the bytes as they are)."""
        return _store_base64 if self.storage == "base64" else _store_binary

    @property
    def codec(self) -> Codec:
        """How values of the logical type become the bytes that are encrypted."""
        return self._codec

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
        fixed = self.encryptor
        store = self.envelope_storer()
        context: EncryptionContext | None = None

        def process(value: Any) -> Any:
            nonlocal context
            if value is None:
                return None
            if context is None:  # on the first value: the type may be attached late
                context = self.encryption_context()
            encryptor = fixed if fixed is not None else get_default_encryptor()
            try:
                envelope = encryptor.seal(encode(value), context)
            except (KeyringError, ConfigurationError):
                raise  # about the keys, not the value; the cause stays chained
            except Exception as exc:  # re-raised below, holding nothing of the value
                failure = exc
            else:
                return store(envelope)
            raise self._unwritable(failure)

        return process

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        """Returns the function SQLAlchemy calls for each fetched value of this column."""
        decode = self._codec.decode
        fixed = self.encryptor
        load = self.envelope_loader()
        as_text = self.storage == "base64"
        context: EncryptionContext | None = None

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
                return decode(encryptor.open(value, context))
            except DecryptionError as exc:
                failure = exc
            return self._unreadable(stored, failure)

        return process

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

    def _unreadable(self, stored: Any, failure: DecryptionError) -> Any:
        """A stored value that did not decrypt: legacy plaintext, or a clear error.

        Under ``allow_plaintext``, a value that does not even start like an envelope
        (the format version byte, after base64 in base64 storage) is returned as the
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
        raise type(failure)(f"{self._label()}: {failure}")

    def looks_like_envelope(self, stored: Any) -> bool:
        """Whether a stored value starts as an envelope does, whether or not it is one.

        The rule by which ``allow_plaintext`` reads, and migrations skip, legacy
        plaintext: a value that starts like an envelope and does not decrypt is
        damaged (cut by a short column, altered), never plaintext.
        """
        if isinstance(stored, str):
            if self.storage != "base64":
                return False  # text in a binary column: never written by us
            # A column too short for the text may have cut it anywhere: judge by
            # the whole base64 quanta at its start.
            try:
                stored = base64.b64decode(stored[: len(stored) // 4 * 4], validate=True)
            except (binascii.Error, ValueError):
                return False
        return bytes(stored[:1]) == _VERSION_BYTE

    def _plaintext(self, stored: Any) -> Any:
        """A value stored before encryption, read under ``allow_plaintext``."""
        data = stored.encode("utf-8") if isinstance(stored, str) else bytes(stored)
        return self._codec.decode(data)

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
        return f"EncryptedType({', '.join(args)})"


# Alembic renders a custom type as "<its module>.<repr>"; advertising the public
# package as the module yields sqla_envelope.EncryptedType(...) in migrations.
EncryptedType.__module__ = "sqla_envelope"


def _load_base64(value: Any) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise MalformedEnvelopeError("stored text is not base64") from None


def _load_binary(value: Any) -> bytes:
    if isinstance(value, str):
        raise MalformedEnvelopeError("stored value is text, not an envelope")
    return bytes(value)


def _store_base64(envelope: bytes) -> str:
    return base64.b64encode(envelope).decode("ascii")


def _store_binary(envelope: bytes) -> bytes:
    return envelope
