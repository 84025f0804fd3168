"""From a column command's options to a run: keys, the table, its EncryptedType, the exit code.

A Job reflects the named table and builds a Table of its own holding the primary
key and the column as ``EncryptedType(logical, encryptor, context=, storage=)``,
as the application declares it; the operation then runs on that column with a
progress display. Errors end as one line on stderr; nothing here prints a value
or key bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import re
import shlex
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    NoSuchTableError,
    OperationalError,
    SQLAlchemyError,
    StatementError,
)

from ..context import EncryptionContext
from ..encryptor import Encryptor
from ..envelope import WrappedKey
from ..errors import ConfigurationError, DecryptionError, EnvelopeError, KeyringError
from ..keyrings.base import DataKey, Keyring
from ..keyrings.kms import KmsKeyring
from ..keyrings.local import LocalKeyring
from ..maintenance.walk import ColumnReport, Shard, count_rows
from ..progress import RunDisplay, format_key
from ..types import EncryptedType

__all__ = [
    "LOGICAL",
    "PROG",
    "EitherKeyring",
    "Job",
    "UsageError",
    "describe",
    "fail",
    "json_context",
]

PROG = "sqla-envelope"
EXAMPLE_URL = "postgresql+psycopg://app@db/app"
Operation = Callable[[RunDisplay], ColumnReport]

# --logical names -> the logical type of EncryptedType(logical)
LOGICAL: dict[str, type[sa.types.TypeEngine[Any]]] = {
    "string": sa.String, "binary": sa.LargeBinary, "json": sa.JSON, "integer": sa.Integer,
    "float": sa.Float, "numeric": sa.Numeric, "boolean": sa.Boolean, "date": sa.Date,
    "datetime": sa.DateTime, "time": sa.Time, "uuid": sa.Uuid,
}  # fmt: skip
# Text of --start-after -> a primary key value, by the key column's Python type.
_FROM_TEXT: dict[type, Callable[[str], Any]] = {
    int: int, Decimal: Decimal, float: float, dt.date: dt.date.fromisoformat,
    dt.datetime: dt.datetime.fromisoformat, uuid.UUID: uuid.UUID,
}  # fmt: skip
# Database messages quote values ("Duplicate entry '123-45-6789'", "DETAIL: Key
# (ssn)=(...)"): during a run, when plaintext is in flight, quotes are blanked.
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


class UsageError(Exception):
    """A command line that cannot work: one line on stderr, exit code 2."""


# A run whose first rows all fail for one reason stops there: the options are
# wrong (a key file, a column, a storage), and one line per row would only bury it.
GIVE_UP_AFTER = 100


class _AllRowsFailError(Exception):
    """The first GIVE_UP_AFTER rows failed, all for one reason."""

    def __init__(self, report: ColumnReport) -> None:
        super().__init__(report.failures[0][1])
        self.report = report


def _likely_cause(reason: str) -> str:
    """What a user most likely got wrong, from the reason every row failed for."""
    if "no key in this keyring" in reason:
        return (
            "the keys given (--key-file, --kms-key-id) do not hold the key these values "
            "are under: check the key file or KMS key"
        )
    if "base64" in reason or "stored value is text" in reason:
        return "the column's storage is not what --storage says"
    if "not a sqla-envelope value" in reason:
        return (
            "the column does not hold envelopes: check --table and --column (or the "
            "column is not encrypted yet: encrypt-column)"
        )
    if "context" in reason or "authentication" in reason:
        return (
            "the values were written under another encryption context: check --context, "
            "--schema and --table (a renamed table needs reencrypt --from-context)"
        )
    return "check the command's options"


@contextlib.contextmanager
def _rows_unlogged() -> Iterator[None]:
    """Keep the walker's line per failing row off the terminal: the summary lists them."""
    walker = logging.getLogger("sqla_envelope.walk")
    drop = logging.Filter("no record has this name")
    walker.addFilter(drop)
    try:
        yield
    finally:
        walker.removeFilter(drop)


def _give_up_if_all_fail(report: ColumnReport) -> None:
    if (
        report.failed >= GIVE_UP_AFTER
        and report.failed == report.examined
        and len({reason for _, reason in report.failures}) == 1
    ):
        raise _AllRowsFailError(report)


def fail(message: str, code: int) -> int:
    """Print ``sqla-envelope: error: message`` as one line on stderr; return ``code``."""
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


# The library's messages name Python keyword arguments; on the command line the
# flags that set them are what the user can change.
_FLAGS = {
    "pass region_name=": "pass --region",
    "pass endpoint_url=": "pass --endpoint-url",
    "pass context=": "pass --context",
}


def describe(exc: BaseException, *, values_in_flight: bool = False) -> str:
    """One line for an error, never quoting a statement's parameters."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, EnvelopeError):
        message = str(exc)
        for keyword, flag in _FLAGS.items():
            message = message.replace(keyword, flag)
        return message
    if isinstance(exc, StatementError):
        # The driver's own message; str(exc) would quote the statement and parameters.
        args: tuple[Any, ...] = getattr(exc.orig, "args", ())
        if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
            message = f"{args[1]} (error {args[0]})"  # MySQL drivers: (code, message)
        else:
            message = str(exc.orig)
        if values_in_flight:
            lines = message.strip().splitlines()  # PostgreSQL's DETAIL line quotes the row
            message, hidden = _QUOTED.subn("'...'", lines[0] if lines else "")
            message += " (quoted names and values hidden)" if hidden else ""
        return f"database: {message}"
    return str(exc)


class EitherKeyring:
    """Reads with a key file and a KMS key together: each value goes to the one holding its key.

    Writes nothing: with both, the writer must be named (--to-key-file, --to-kms-key-id).
    """

    unwraps_remotely = True

    def __init__(self, local: LocalKeyring, kms: KmsKeyring) -> None:
        self._local, self._kms = local, kms

    def __repr__(self) -> str:
        return f"EitherKeyring({self._local!r}, {self._kms!r})"

    def generate_data_key(self, context: EncryptionContext) -> DataKey:
        raise ConfigurationError("two keyrings read this column; name the one that writes")

    def wrap_data_key(self, data_key: bytes, context: EncryptionContext) -> tuple[WrappedKey, ...]:
        raise ConfigurationError("two keyrings read this column; name the one that writes")

    def unwrap_data_key(
        self, wrapped_keys: Sequence[WrappedKey], context: EncryptionContext
    ) -> bytes:
        if any(key.key_ref in self._local.key_ids for key in wrapped_keys):
            return self._local.unwrap_data_key(wrapped_keys, context)
        return self._kms.unwrap_data_key(wrapped_keys, context)

    def is_primary(self, wrapped_key: WrappedKey) -> bool:
        return self._local.is_primary(wrapped_key) or self._kms.is_primary(wrapped_key)


class Job:
    """One command's run: its keyrings, engine and tables, all closed with ``stack``.

    Options are checked before anything is opened, keys are loaded before the
    database is reached, so a usage error costs no connection.
    """

    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
        self.args, self.stack = args, stack
        self.context = json_context(args.context, "--context")
        self.shard = _shard(args.shard)
        self.start_after: tuple[Any, ...] | None = None
        self._engine: Engine | None = None
        self._reflected: sa.Table | None = None

    def keyring(self, key_file: str | None, kms_key_id: str | None) -> Keyring | None:
        """The keyring of a key file, a KMS key, or both (an EitherKeyring); None if neither."""
        local = LocalKeyring.from_file(key_file) if key_file else None
        kms = None
        if kms_key_id:
            args = self.args
            kms = KmsKeyring(kms_key_id, region_name=args.region, endpoint_url=args.endpoint_url)
            self.stack.callback(kms.close)
        if local is not None and kms is not None:
            return EitherKeyring(local, kms)
        return local or kms

    def encryptor(self, keyring: Keyring) -> Encryptor:
        encryptor = Encryptor(keyring)
        self.stack.callback(encryptor.close)
        return encryptor

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "connect() first"
        return self._engine

    @property
    def reflected(self) -> sa.Table:
        assert self._reflected is not None, "connect() first"
        return self._reflected

    def connect(self) -> None:
        """Open the database and reflect the table."""
        args = self.args
        self._engine = engine = engine_for(args.url)
        self.stack.callback(engine.dispose)
        try:
            self._reflected = sa.Table(
                args.table, sa.MetaData(), autoload_with=engine, schema=args.schema
            )
        except NoSuchTableError:
            where = f"schema {args.schema!r}" if args.schema else "the database"
            raise ConfigurationError(f"no table {args.table!r} in {where}") from None
        pk = list(self._reflected.primary_key)
        if not pk:
            raise ConfigurationError(f"table {args.table!r} has no primary key to walk in order")
        self.start_after = parse_start_after(getattr(args, "start_after", None), pk)

    def column(self, name: str) -> sa.Column[Any]:
        """A reflected column that is not part of the primary key."""
        column = self.reflected.c.get(name)
        if column is None:
            known = ", ".join(self.reflected.c.keys())
            raise ConfigurationError(
                f"table {self.reflected.fullname!r} has no column {name!r} (it has {known})"
            )
        if column.primary_key:
            raise ConfigurationError(f"column {name!r} is part of the primary key")
        return column

    def build(
        self, logical: Any, encryptor: Encryptor, plain: str | None = None
    ) -> tuple[sa.Table, sa.Column[Any], sa.Column[Any] | None]:
        """Our Table: the primary key, the column as EncryptedType(logical), the plain column."""
        args, reflected = self.args, self.reflected
        stored = self.column(args.column)
        _check_storage(self.engine, stored, args.storage)
        type_ = EncryptedType(logical, encryptor, context=self.context, storage=args.storage)
        columns = [sa.Column(c.name, c.type, primary_key=True) for c in reflected.primary_key]
        columns.append(sa.Column(stored.name, type_))
        if plain is not None:
            columns.append(sa.Column(plain, self.column(plain).type))
        table = sa.Table(reflected.name, sa.MetaData(), *columns, schema=reflected.schema)
        return table, table.c[stored.name], table.c[plain] if plain is not None else None

    def options(self, display: RunDisplay, *, writes: bool = True) -> dict[str, Any]:
        """The keyword arguments of the rotation or migration function."""
        args = self.args

        def progress(report: ColumnReport) -> None:
            display(report)
            _give_up_if_all_fail(report)

        options = {"batch_size": args.batch_size, "shard": self.shard, "progress": progress}
        if writes:
            options.update(dry_run=args.dry_run, strict=args.strict, start_after=self.start_after)
        return options

    def run(self, verb: str, table: sa.Table, column: sa.Column[Any], operation: Operation) -> int:
        """Run ``operation`` with a progress display; print the summary; return the exit code."""
        display = RunDisplay(
            f"{verb} {table.fullname}.{column.name}",
            _expected_rows(self.engine, table, self.shard, self.start_after),
            [c.name for c in table.primary_key],
            stream=sys.stderr,
            interactive=sys.stderr.isatty(),
            interval=self.args.progress_interval,
        )
        try:
            with _rows_unlogged():
                report = operation(display)
        except KeyboardInterrupt:
            display.stop()
            return self._stopped(display, "interrupted", 130)
        except _AllRowsFailError as stop:
            display.stop()
            report = stop.report
            fail(
                f"the first {report.failed} rows all failed, so the run stopped: {stop}",
                2,
            )
            print(f"likely cause: {_likely_cause(str(stop))}", file=sys.stderr)
            print("nothing was changed; fix the options and run the command again", file=sys.stderr)
            return 2
        except (EnvelopeError, SQLAlchemyError, OSError) as exc:
            display.stop()
            message = describe(exc, values_in_flight=True)
            if isinstance(exc, DecryptionError) and getattr(self.args, "strict", False):
                message = f"--strict: a row cannot be decrypted: {message}"
            # An outage or a lost connection passes; a bad row or setting does not.
            passing = isinstance(exc, (KeyringError, OperationalError, OSError))
            return self._stopped(display, message, 1, passing=passing)
        display.finish(report)
        return 1 if report.failed else 0

    def _stopped(
        self, display: RunDisplay, message: str, code: int, *, passing: bool = True
    ) -> int:
        """The end of a run an error stopped: what was done, and how to go on.

        ``passing``: whether running again may succeed as it is (an outage, an
        interruption); otherwise the problem must be fixed first.
        """
        fail(message, code)
        key = display.last_key or self.start_after
        rerun = "run the same command" if passing else "fix it, then run the same command"
        if key is None:
            print(f"nothing was changed: {rerun} again", file=sys.stderr)
        else:
            print(
                f"stopped after {display.examined:,} rows; to resume, {rerun} "
                f"with --start-after {shlex.quote(format_key(key))}",
                file=sys.stderr,
            )
        return code


# -- options -> objects -----------------------------------------------------------------


def json_context(text: str | None, option: str) -> dict[str, str] | None:
    """A context option (--context, --from-context) as a dict; UsageError if it is not one."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if (
        not isinstance(value, dict)
        or not value
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    ):
        raise UsageError(
            f'{option} takes a JSON object of strings, e.g. \'{{"label": "patient.ssn"}}\''
        )
    return value


def _shard(text: str | None) -> Shard | None:
    try:
        return Shard.parse(text) if text is not None else None
    except ConfigurationError as exc:
        raise UsageError(f"--shard {text}: {exc}") from None


def parse_start_after(text: str | None, pk: list[sa.Column[Any]]) -> tuple[Any, ...] | None:
    """--start-after as a key tuple: what progress.format_key writes, read back."""
    if text is None:
        return None
    try:
        parts = json.loads(text) if text.startswith("[") else None
    except ValueError:
        parts = None
    if parts is None:
        parts = text.split(",") if len(pk) > 1 else [text]
    if not isinstance(parts, list) or len(parts) != len(pk):
        names = ", ".join(c.name for c in pk)
        raise UsageError(
            f"--start-after takes {len(pk)} value(s) for the primary key ({names}), "
            "comma-separated or as a JSON array"
        )
    return tuple(_key_value(part, column) for part, column in zip(parts, pk, strict=True))


def _key_value(part: Any, column: sa.Column[Any]) -> Any:
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        python_type = str
    convert = _FROM_TEXT.get(python_type)
    if convert is None:
        return part if isinstance(part, str) else str(part)
    try:
        return part if type(part) is python_type else convert(str(part))
    except ValueError:
        raise UsageError(
            f"--start-after: {part!r} is not a value of key column {column.name!r}"
        ) from None


def engine_for(url_text: str) -> Engine:
    try:
        url = make_url(url_text)
    except (ArgumentError, ValueError):
        raise UsageError(f"--url is not a SQLAlchemy URL, e.g. {EXAMPLE_URL}") from None
    path = url.database or ""
    on_disk = path not in ("", ":memory:") and "uri" not in url.query
    if url.get_backend_name() == "sqlite" and on_disk and not Path(path).exists():
        # else SQLite would create an empty database
        raise ConfigurationError(f"no SQLite database file {path!r}")
    try:
        return sa.create_engine(url)
    except ArgumentError:
        raise UsageError(f"--url: unknown database or driver {url.drivername!r}") from None
    except ImportError as exc:
        raise ConfigurationError(
            f"the driver for {url.drivername} is not installed ({exc.name})"
        ) from None


def _check_storage(engine: Engine, column: sa.Column[Any], storage: str) -> None:
    """UsageError for a column that cannot hold envelopes stored as ``storage``.

    Checked before any row is read: a DATE or INTEGER column named by mistake
    would otherwise fail on every row.
    """
    type_ = column.type
    kind = type_.compile(dialect=engine.dialect)
    text = isinstance(type_, sa.String)
    binary = isinstance(type_, sa.types._Binary)
    untyped = isinstance(type_, sa.types.NullType)  # SQLite: a column declared without a type
    if not (text or binary or untyped):
        raise UsageError(
            f"column {column.name!r} is {kind}, which cannot hold envelopes: an encrypted "
            "column is binary (bytea, BLOB) or, with --storage base64, text. To encrypt "
            f"a {kind} column, add a binary column and run encrypt-column --column NEW "
            f"--from-column {column.name}"
        )
    if storage == "base64" and binary:
        raise UsageError(
            f"column {column.name!r} is {kind}: --storage base64 keeps envelopes as text; "
            "leave --storage out for a binary column"
        )
    # SQLite keeps bytes in any column; elsewhere binary envelopes in text fail or corrupt.
    if storage == "binary" and text and engine.dialect.name != "sqlite":
        raise UsageError(
            f"column {column.name!r} is {kind}: binary envelopes need a binary column "
            "(bytea, BLOB); for base64 text pass --storage base64"
        )


def _expected_rows(
    engine: Engine, table: sa.Table, shard: Shard | None, start_after: tuple[Any, ...] | None
) -> int:
    """Rows the walk will examine: exact, or with both a shard and a resume point, at most."""
    if start_after is None or shard is not None:
        return count_rows(engine, table, shard)
    pk = list(table.primary_key)
    key = pk[0] if len(pk) == 1 else sa.tuple_(*pk)
    after = start_after[0] if len(pk) == 1 else sa.tuple_(*start_after)
    with engine.connect() as conn:
        stmt = sa.select(sa.func.count()).select_from(table).where(key > after)
        return int(conn.execute(stmt).scalar_one())
