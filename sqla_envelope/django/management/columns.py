"""What the envelope_* commands share: the column they name, the run options, the report.

A column is named by a SQLAlchemy model attribute, ``--attribute
clinic.models:Patient.national_id``, which carries the application's own type,
context and encryptor and is preferred; or by ``--table`` and ``--column``,
reflected from the database and read as ``EncryptedType(LargeBinary)`` under
the default encryptor (settings.SQLA_ENVELOPE). The run prints progress and the
summary on stdout and ends in CommandError (exit code 1) when a row failed or
an error stopped it; nothing printed holds a value or key bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from django.core.management.base import (  # type: ignore[import-untyped]
    BaseCommand,
    CommandError,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

from ...cli.job import UsageError, describe, json_context
from ...cli.maintenance import run_options
from ...errors import ConfigurationError, DecryptionError, EnvelopeError
from ...maintenance.rotation import encrypted_column
from ...maintenance.walk import ColumnReport, count_rows
from ...progress import RunDisplay
from ...storage import Storage
from ...types import EncryptedType
from ..engine import get_engine

__all__ = ["ColumnCommand", "Target", "import_attribute"]

Operation = Callable[[RunDisplay], ColumnReport]
_ATTRIBUTE_FORM = "MODULE:CLASS.ATTRIBUTE, e.g. clinic.models:Patient.national_id"


@dataclass(frozen=True)
class Target:
    """The column a command works on: an EncryptedType column, and a plaintext one."""

    engine: Engine
    column: sa.Column[Any]
    plain: sa.Column[Any] | None = None

    @property
    def type(self) -> EncryptedType:
        type_ = self.column.type
        assert isinstance(type_, EncryptedType)
        return type_


def import_attribute(path: str) -> Any:
    """The object ``MODULE:CLASS.ATTRIBUTE`` names; CommandError when there is none."""
    module_name, _, names = path.partition(":")
    if not module_name or not names:
        raise CommandError(f"--attribute {path!r}: write it {_ATTRIBUTE_FORM}")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(f"--attribute {path!r}: cannot import {module_name}: {exc}") from exc
    for name in names.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            raise CommandError(f"--attribute {path!r}: {name!r} not found") from None
    return found


class ColumnCommand(BaseCommand):  # type: ignore[misc]
    """A management command over one encrypted column; subclasses give ``operation``."""

    verb = ""
    writes = True  # offer --dry-run and --strict

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        where = parser.add_argument_group(
            "the column", "Name it with --attribute (preferred) or with --table and --column."
        )
        where.add_argument(
            "--attribute",
            metavar="MODULE:CLASS.ATTR",
            help=f"a SQLAlchemy model attribute, {_ATTRIBUTE_FORM}",
        )
        where.add_argument("--table", metavar="NAME", help="a table, reflected from the database")
        where.add_argument("--column", metavar="NAME", help="the encrypted column of --table")
        where.add_argument(
            "--storage",
            choices=("binary", "base64"),
            help="with --table: the column's storage= (default: binary)",
        )
        where.add_argument(
            "--context",
            metavar="JSON",
            help='with --table: the column\'s context=, e.g. \'{"label": "patient.ssn"}\' '
            '(default: {"table": TABLE, "column": COLUMN})',
        )
        where.add_argument(
            "--database",
            metavar="ALIAS",
            help="the alias in DATABASES (default: SQLA_ENVELOPE['DATABASE'] or 'default')",
        )
        self.add_command_arguments(parser)
        run_options(parser.add_argument_group("the run"), writes=self.writes, resumable=False)

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Options of one command, shown between the column's and the run's."""

    def logical_type(self, reflected: sa.Table, options: dict[str, Any]) -> Any:
        """The logical type a --table column is read as; decrypting is what is checked."""
        return sa.LargeBinary

    def operation(
        self, target: Target, options: dict[str, Any], stack: contextlib.ExitStack
    ) -> Operation:
        raise NotImplementedError

    def handle(self, *args: Any, **options: Any) -> None:
        with contextlib.ExitStack() as stack:
            try:
                target = self.target(get_engine(options["database"]), options)
                operation = self.operation(target, options, stack)
                table, column = target.column.table, target.column
                display = RunDisplay(
                    f"{self.verb} {table.fullname}.{column.name}",
                    count_rows(target.engine, table),
                    [c.name for c in table.primary_key],
                    stream=self.stdout,
                    interactive=False,
                    interval=options["progress_interval"],
                )
            except (EnvelopeError, SQLAlchemyError, OSError) as exc:
                raise CommandError(describe(exc)) from exc
            try:
                report = operation(display)
            except (EnvelopeError, SQLAlchemyError, OSError) as exc:
                display.stop()
                strict = isinstance(exc, DecryptionError) and options.get("strict")
                where = (
                    f"; {display.examined:,} rows were done, run the same command again to finish"
                    if self.writes and display.examined
                    else ""
                )
                raise CommandError(
                    ("--strict: a row cannot be decrypted: " if strict else "")
                    + describe(exc, values_in_flight=True)
                    + where
                ) from exc
        display.finish(report)
        if report.failed:
            raise CommandError(
                f"{report.failed} row(s) of {report.table}.{report.column} failed (listed above)"
            )

    # -- the column ---------------------------------------------------------------------

    def target(self, engine: Engine, options: dict[str, Any]) -> Target:
        plain_name: str | None = options.get("from_column")
        if options["attribute"]:
            given = [f"--{n}" for n in ("table", "column", "storage", "context") if options[n]]
            if given:
                raise CommandError(
                    f"--attribute names the column with its type; drop {', '.join(given)}"
                )
            found = import_attribute(options["attribute"])
            try:
                _, column, _ = encrypted_column(found)
            except ConfigurationError as exc:
                raise CommandError(f"--attribute {options['attribute']!r}: {exc}") from None
            plain = None
            if plain_name is not None:
                plain = column.table.c.get(plain_name)
                if plain is None:
                    raise CommandError(
                        f"table {column.table.fullname!r} has no column {plain_name!r}"
                    )
            return Target(engine, column, plain)
        if not options["table"] or not options["column"]:
            raise CommandError(
                "name the column: --attribute MODULE:CLASS.ATTRIBUTE, or --table NAME --column NAME"
            )
        return self._reflected_target(engine, options, plain_name)

    def _reflected_target(
        self, engine: Engine, options: dict[str, Any], plain_name: str | None
    ) -> Target:
        try:
            reflected = sa.Table(options["table"], sa.MetaData(), autoload_with=engine)
        except NoSuchTableError:
            raise CommandError(f"no table {options['table']!r} in the database") from None
        if not reflected.primary_key.columns:
            raise CommandError(f"table {reflected.name!r} has no primary key to walk in order")
        stored = _reflected_column(reflected, options["column"])
        storage: Storage = options["storage"] or "binary"
        text = isinstance(stored.type, sa.String)
        # SQLite keeps bytes in any column; elsewhere binary envelopes in text fail.
        if storage == "binary" and text and engine.dialect.name != "sqlite":
            raise CommandError(
                f"column {stored.name!r} holds text: binary envelopes need a binary "
                "column (bytea, BLOB); for base64 text pass --storage base64"
            )
        type_ = EncryptedType(
            self.logical_type(reflected, options),
            context=_context(options["context"]),
            storage=storage,
        )
        columns = [sa.Column(c.name, c.type, primary_key=True) for c in reflected.primary_key]
        columns.append(sa.Column(stored.name, type_))
        if plain_name is not None:
            columns.append(sa.Column(plain_name, _reflected_column(reflected, plain_name).type))
        table = sa.Table(reflected.name, sa.MetaData(), *columns)
        plain = table.c[plain_name] if plain_name is not None else None
        return Target(engine, table.c[stored.name], plain)


def _reflected_column(table: sa.Table, name: str) -> sa.Column[Any]:
    column = table.c.get(name)
    if column is None:
        known = ", ".join(table.c.keys())
        raise CommandError(f"table {table.name!r} has no column {name!r} (it has {known})")
    if column.primary_key:
        raise CommandError(f"column {name!r} is part of the primary key")
    return column


def _context(text: str | None) -> dict[str, str] | None:
    try:
        return json_context(text, "--context")
    except UsageError as exc:
        raise CommandError(str(exc)) from None
