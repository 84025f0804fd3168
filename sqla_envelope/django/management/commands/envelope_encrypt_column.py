"""``manage.py envelope_encrypt_column``: encrypt a column's plaintext, in place or from another."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import sqlalchemy as sa

from ....cli.job import LOGICAL
from ....maintenance.columns import encrypt_column
from ..columns import ColumnCommand, Operation, Target


class Command(ColumnCommand):
    help = (
        "Encrypt existing plaintext. In place: every value of the column that is not yet "
        "an envelope is encrypted (String, LargeBinary, JSON or Enum types). With "
        "--from-column: each plaintext value of that column of the same table is encrypted "
        "into the column, read as its type. Each batch is its own transaction, a row changed "
        "meanwhile is left for the next run, and running again finishes the job."
    )
    verb = "encrypt-column"

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--from-column", metavar="NAME", help="the plaintext column to encrypt into the column"
        )
        parser.add_argument(
            "--logical",
            choices=tuple(LOGICAL),
            help="with --table: the column's logical type, as in EncryptedType(TYPE) "
            "(default: the type of --from-column, else string)",
        )

    def logical_type(self, reflected: sa.Table, options: dict[str, Any]) -> Any:
        if options["logical"] is not None:
            return LOGICAL[options["logical"]]
        source = options["from_column"]
        if source is not None and source in reflected.c:
            return reflected.c[source].type
        return sa.String

    def operation(
        self, target: Target, options: dict[str, Any], stack: contextlib.ExitStack
    ) -> Operation:
        def run(progress: Any) -> Any:
            return encrypt_column(
                target.engine,
                target.column,
                source=target.plain,
                batch_size=options["batch_size"],
                dry_run=options["dry_run"],
                strict=options["strict"],
                progress=progress,
            )

        return run
