"""``manage.py envelope_verify``: decrypt every value of a column, report the rows that fail."""

from __future__ import annotations

import contextlib
from typing import Any

from ....maintenance.rotation import verify
from ..columns import ColumnCommand, Operation, Target


class Command(ColumnCommand):
    help = (
        "Decrypt every value of a column and list the primary key of each row that fails, "
        "and why: tampered, wrong context, no key, not an envelope (plaintext), or, with "
        "--attribute, not a valid value of the column's type. Reads only. Exits with an "
        "error when a row failed."
    )
    verb = "verify"
    writes = False

    def operation(
        self, target: Target, options: dict[str, Any], stack: contextlib.ExitStack
    ) -> Operation:
        def run(progress: Any) -> Any:
            return verify(
                target.engine, target.column, batch_size=options["batch_size"], progress=progress
            )

        return run
