"""``sqla-envelope secrets import-credstash`` and ``export-credstash``: to and from credstash."""

from __future__ import annotations

import argparse
import os

from .keyrings.kms import KmsKeyring
from .secrets import SecretStore
from .secrets.credstash_export import export_credstash
from .secrets.credstash_import import import_credstash, scan_credstash_table

__all__ = ["credstash_options", "export_command", "import_command"]


def _kms_where(args: argparse.Namespace) -> tuple[str | None, str | None]:
    region = args.region or os.environ.get("SQLA_ENVELOPE_KMS_REGION")
    return region, args.endpoint_url or os.environ.get("SQLA_ENVELOPE_KMS_ENDPOINT_URL")


def import_command(args: argparse.Namespace, store: SecretStore, context: dict[str, str]) -> int:
    """import-credstash: every item of credstash's table, re-encrypted into ``store``."""
    region, endpoint = _kms_where(args)
    items = scan_credstash_table(
        args.dynamodb_table,
        region=args.dynamodb_region or region,
        endpoint_url=args.dynamodb_endpoint_url,
    )
    with KmsKeyring(args.from_kms_key_id, region_name=region, endpoint_url=endpoint) as kms:
        report = import_credstash(store, items, kms, context=context)
    print(
        f"imported {report.imported} version(s) of {len(report.names)} secret(s) from "
        f"{args.dynamodb_table}; {report.already_there} already there"
    )
    return 0


def export_command(args: argparse.Namespace, store: SecretStore) -> int:
    """export-credstash: every version of every secret of ``store`` as a credstash item."""
    region, endpoint = _kms_where(args)
    with KmsKeyring(args.to_kms_key_id, region_name=region, endpoint_url=endpoint) as kms:
        written, existing = export_credstash(
            store,
            args.dynamodb_table,
            kms,
            region=args.dynamodb_region or region,
            endpoint_url=args.dynamodb_endpoint_url,
            hmac_as_string=args.hmac_as_string,
        )
    print(f"wrote {written} credstash item(s) to {args.dynamodb_table}; {existing} already there")
    return 0


def credstash_options(imported: argparse.ArgumentParser, exported: argparse.ArgumentParser) -> None:
    """The options of the two commands: credstash's table, and the KMS key of its items."""
    for parser in (imported, exported):
        parser.add_argument("--dynamodb-table", metavar="NAME", default="credential-store")
        parser.add_argument("--dynamodb-region", metavar="NAME", help="(default: --region)")
        parser.add_argument("--dynamodb-endpoint-url", metavar="URL")
    imported.add_argument(
        "--from-kms-key-id",
        metavar="ID",
        default="alias/credstash",
        help="the KMS key of credstash's items (default: %(default)s)",
    )
    exported.add_argument(
        "--to-kms-key-id",
        metavar="ID",
        default="alias/credstash",
        help="the KMS key of the items written (default: %(default)s)",
    )
    exported.add_argument(
        "--hmac-as-string",
        action="store_true",
        help="write hmac as a DynamoDB string, for readers older than credstash 1.13.1",
    )
