"""``manage.py envelope_rewrap``: re-wrap every value's data key under a new master key."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from django.core.management.base import CommandError  # type: ignore[import-untyped]

from ....keyrings.base import Keyring
from ....keyrings.kms import KmsKeyring
from ....keyrings.local import LocalKeyring
from ....maintenance.rotation import column_encryptor, rewrap_column
from ...conf import from_django
from ..columns import ColumnCommand, Operation, Target


class Command(ColumnCommand):
    help = (
        "Re-wrap the data key of every value of a column under the primary key of the "
        "target keys (default: those of settings.SQLA_ENVELOPE, e.g. after "
        "'sqla-envelope keys add'). The ciphertext is untouched, values already under the "
        "target are skipped, and each batch is its own transaction: safe on a live table, "
        "and a stopped run is simply run again. Once every row is rewrapped, remove the "
        "old key."
    )
    verb = "rewrap"

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            "target keys", "The keys to rewrap under (default: settings.SQLA_ENVELOPE)."
        )
        group.add_argument("--to-key-file", metavar="PATH", help="a LocalKeyring key file")
        group.add_argument("--to-kms-key-id", metavar="ID", help="an AWS KMS key id, ARN or alias")
        group.add_argument(
            "--to-region", help="the region of --to-kms-key-id (default: KMS_REGION)"
        )
        group.add_argument(
            "--to-endpoint-url", metavar="URL", help="a KMS endpoint (default: KMS_ENDPOINT_URL)"
        )

    def operation(
        self, target: Target, options: dict[str, Any], stack: contextlib.ExitStack
    ) -> Operation:
        to = _target_keyring(options, stack) or column_encryptor(target.type).keyring

        def run(progress: Any) -> Any:
            return rewrap_column(
                target.engine,
                target.column,
                to,
                batch_size=options["batch_size"],
                dry_run=options["dry_run"],
                strict=options["strict"],
                progress=progress,
            )

        return run


def _target_keyring(options: dict[str, Any], stack: contextlib.ExitStack) -> Keyring | None:
    key_file, key_id = options["to_key_file"], options["to_kms_key_id"]
    if key_file and key_id:
        raise CommandError("rewrap rewraps under one key: pass --to-key-file or --to-kms-key-id")
    if key_file:
        return LocalKeyring.from_file(key_file)
    if not key_id:
        return None
    settings = from_django()
    keyring = KmsKeyring(
        key_id,
        region_name=options["to_region"] or settings.kms_region,
        endpoint_url=options["to_endpoint_url"] or settings.kms_endpoint_url,
    )
    stack.callback(keyring.close)
    return keyring
