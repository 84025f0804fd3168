"""Moving a column between plaintext and envelopes: encrypt_column and decrypt_column.

``encrypt_column`` turns plaintext into envelopes, in place or from a plaintext
column into an encrypted one; ``decrypt_column`` goes back. Both are batched,
idempotent and resumable like rotation (walk.py), so they can run online and
inside an Alembic migration (``op.get_bind()``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ..context import EncryptionContext
from ..errors import ConfigurationError, DecryptionError, MalformedEnvelopeError
from ..rows.walking import RowContexts
from ..schema_binding import translation_of
from ..types import EncryptedType
from .rotation import (
    Bind,
    column_encryptor,
    encrypted_column,
    worker_count,
)
from .walk import SKIP, ColumnReport, Progress, Shard, walk_values

__all__ = ["IN_PLACE_TYPES", "decrypt_column", "encrypt_column"]

# Logical types whose stored plaintext is text or bytes, so a column can change
# from plaintext to envelopes in place.
IN_PLACE_TYPES = frozenset({"String", "LargeBinary", "JSON", "Enum"})


def _plain_column(column: Any) -> sa.Column[Any]:
    prop = getattr(column, "property", None)
    target = prop.columns[0] if prop is not None and getattr(prop, "columns", None) else column
    if not isinstance(target, sa.Column):
        raise ConfigurationError(f"{column!r} is not a table column or mapped attribute")
    if isinstance(target.type, EncryptedType):
        raise ConfigurationError(f"column {target.name} is encrypted; name the plaintext column")
    return target


def _is_envelope(
    stored: Any, type_: EncryptedType, load: Any, opens: Any, context: EncryptionContext
) -> bool:
    """True if ``stored`` is an envelope that decrypts, False if it is plaintext.

    Raises for a value that starts like an envelope and does not decrypt: a
    damaged envelope is reported, never taken for plaintext and encrypted again.
    """
    try:
        opens(load(stored), context)
    except MalformedEnvelopeError:
        if type_.looks_like_envelope(stored):
            raise
        return False
    return True


def encrypt_column(
    bind: Bind,
    column: Any,
    *,
    source: Any = None,
    decode_with: sa.types.TypeEngine[Any] | None = None,
    batch_size: int = 1000,
    dry_run: bool = False,
    strict: bool = True,
    shard: Shard | None = None,
    start_after: Any = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> ColumnReport:
    """Encrypt the plaintext of an EncryptedType ``column``, without losing a row.

    ``decode_with`` (in place only) is the column type the values were stored
    with, whose own reading turns a stored value into the value to encrypt:
    sqlalchemy-utils' ``StringEncryptedType(String, old_key, AesGcmEngine)``, for
    one, so a column of its ciphertexts becomes a column of envelopes in one run
    (docs/migrating.md). A value it cannot read is a failed row, never stored as
    it is.

    In place (``source=None``): the column still holds plaintext (text, or bytes
    after ``ALTER ... TYPE bytea``) for a String, LargeBinary, JSON or Enum logical
    type, and every value that is not yet an envelope is encrypted. Into a new
    column (``source=`` a plaintext column of the same table, any logical type):
    each non-NULL source value is encrypted into ``column`` unless it holds an
    envelope already. Rows whose values changed meanwhile are left for the next
    run; running again finishes the job. A stored value that looks like an
    envelope but does not decrypt is reported (or raised with ``strict``).
    """
    table, col, type_ = encrypted_column(column)
    encryptor = column_encryptor(type_)
    contexts = RowContexts(table, col, type_.context_under(translation_of(bind)))
    load, store = type_.envelope_loader(), type_.envelope_storer()
    encode, decode = type_.codec.encode, type_.codec.decode

    def opens(envelope: bytes, context: EncryptionContext) -> None:
        encryptor.open(envelope, context)

    def seal(value: Any, context: EncryptionContext) -> Any:
        return store(encryptor.seal(encode(value), context))

    if decode_with is not None:
        if source is not None:
            raise ConfigurationError("decode_with= is for an in-place migration, without source=")
        transform, read, guard = (
            _from_old_type(bind, type_, decode_with, load, opens, seal),
            [col],
            [col],
        )
    elif source is None:
        if type_.codec.name not in IN_PLACE_TYPES:
            raise ConfigurationError(
                f"{type_.codec.name} values cannot be encrypted in place: add an "
                "EncryptedType column and pass the plaintext column as source="
            )

        def in_place(row: tuple[Any, ...], context: EncryptionContext) -> Any:
            (stored,) = row
            if stored is None or _is_envelope(stored, type_, load, opens, context):
                return SKIP
            plaintext = stored.encode("utf-8") if isinstance(stored, str) else bytes(stored)
            try:
                value = decode(plaintext)  # checks it is a valid value of the type
            except DecryptionError:
                raise DecryptionError(
                    f"plaintext is not a valid {type_.codec.name} value"
                ) from None
            return seal(value, context)

        transform, read, guard = in_place, [col], [col]
    else:
        plain = _plain_column(source)

        def from_source(row: tuple[Any, ...], context: EncryptionContext) -> Any:
            stored, value = row
            if value is None or (
                stored is not None and _is_envelope(stored, type_, load, opens, context)
            ):
                return SKIP
            return seal(value, context)

        transform, read, guard = from_source, [col, plain], [col, plain]

    report = ColumnReport(table.fullname, col.name, dry_run=dry_run)
    return walk_values(
        bind, contexts, read, guard, col, transform, report,
        batch_size=batch_size, dry_run=dry_run, strict=strict, shard=shard,
        start_after=start_after, progress=progress,
        workers=worker_count(workers, encryptor.keyring),
    )  # fmt: skip


def _from_old_type(
    bind: Bind,
    type_: EncryptedType,
    old: sa.types.TypeEngine[Any],
    load: Any,
    opens: Any,
    seal: Any,
) -> Any:
    """The in-place transform of ``decode_with``: stored by ``old``, read through it, sealed."""
    dialect = bind.dialect
    process = old.result_processor(dialect, None)
    rebind = old.bind_processor(dialect)
    described = type(old).__name__

    def read_back(stored: Any) -> Any:
        """The old type's value of ``stored``, checked where the old type can check it.

        An unauthenticated cipher (sqlalchemy-utils' AesEngine, AES-CBC) decrypts
        under a wrong key to garbage rather than an error. It is deterministic, so
        its value must encrypt back to exactly what is stored: a value that does
        not is refused, and the wrong key fails closed. A randomized cipher
        (AES-GCM, Fernet) authenticates instead, and raises on a wrong key.
        """
        value = process(stored) if process is not None else stored
        if value is not None and rebind is not None:
            again = rebind(value)
            if again == rebind(value) and again != stored:
                raise ValueError("the value does not encrypt back to what is stored")
        return value

    def from_old(row: tuple[Any, ...], context: EncryptionContext) -> Any:
        (stored,) = row
        if stored is None:
            return SKIP
        try:
            opens(load(stored), context)
        except DecryptionError:
            pass  # not one of ours (a damaged one of ours fails below, and is reported)
        else:
            return SKIP
        try:
            value = read_back(stored)
        except Exception as exc:  # the old type's own error may quote the value: name its type
            failure = type(exc).__name__
        else:
            if value is None:
                return SKIP
            return seal(value, context)
        raise DecryptionError(
            f"{described} cannot read the stored value ({failure}): is it the old key, "
            "engine and padding the column was written with?"
        )

    return from_old


def decrypt_column(
    bind: Bind,
    column: Any,
    *,
    target: Any = None,
    batch_size: int = 1000,
    dry_run: bool = False,
    strict: bool = True,
    shard: Shard | None = None,
    start_after: Any = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> ColumnReport:
    """Decrypt an EncryptedType ``column`` back to plaintext: the way back out.

    In place (``target=None``, String, LargeBinary, JSON or Enum only): each
    envelope is replaced by its plaintext (UTF-8 bytes in a binary column, text
    with base64 storage); values that are not envelopes are left alone. Into a
    plaintext ``target`` column: every envelope is decrypted into it unless the
    target already holds a value.
    """
    table, col, type_ = encrypted_column(column)
    encryptor = column_encryptor(type_)
    contexts = RowContexts(table, col, type_.context_under(translation_of(bind)))
    load = type_.envelope_loader()
    decode = type_.codec.decode
    as_text = type_.storage == "base64"

    if target is None:
        if type_.codec.name not in IN_PLACE_TYPES:
            raise ConfigurationError(
                f"{type_.codec.name} values cannot be decrypted in place: pass a plaintext "
                "column as target="
            )

        def in_place(row: tuple[Any, ...], context: EncryptionContext) -> Any:
            (stored,) = row
            if stored is None:
                return SKIP
            try:
                envelope = load(stored)
                plaintext = encryptor.open(envelope, context)
            except MalformedEnvelopeError:
                if type_.looks_like_envelope(stored):
                    raise  # damaged: reported, not left behind as if it were plaintext
                return SKIP  # plaintext already
            return plaintext.decode("utf-8") if as_text else plaintext

        transform, read, guard, write = in_place, [col], [col], col
    else:
        plain = _plain_column(target)

        def to_target(row: tuple[Any, ...], context: EncryptionContext) -> Any:
            stored, value = row
            if stored is None or value is not None:
                return SKIP
            return decode(encryptor.open(load(stored), context))

        transform, read, guard, write = to_target, [col, plain], [col, plain], plain

    report = ColumnReport(table.fullname, col.name, dry_run=dry_run)
    return walk_values(
        bind, contexts, read, guard, write, transform, report,
        batch_size=batch_size, dry_run=dry_run, strict=strict, shard=shard,
        start_after=start_after, progress=progress,
        workers=worker_count(workers, encryptor.keyring),
    )  # fmt: skip
