"""``sqla-envelope kms setup``: a KMS key and alias if missing, and a least-privilege policy."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import ConfigurationError
from ..keyrings.kms_setup import ensure_key, key_policy
from .job import PROG, UsageError
from .options import handled

__all__ = ["add_kms_commands"]


def _cmd_kms_setup(args: argparse.Namespace) -> int:
    region = args.region or os.environ.get("SQLA_ENVELOPE_KMS_REGION")
    endpoint = args.endpoint_url or os.environ.get("SQLA_ENVELOPE_KMS_ENDPOINT_URL")
    try:
        arn, created = ensure_key(args.alias, region=region, endpoint_url=endpoint)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    print(f"{'created' if created else 'found'} {args.alias}: {arn}", file=sys.stderr)
    account = arn.split(":")[4] if arn.count(":") >= 5 else "ACCOUNT"
    role = f"arn:aws:iam::{account}:role"
    print(
        key_policy(
            account=account,
            readers=args.reader or [f"{role}/READER"],
            writers=args.writer or [f"{role}/WRITER"],
            store_table=None if args.any_context else args.table,
        )
    )
    return 0


def add_kms_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    formatter: type[argparse.HelpFormatter],
) -> None:
    kms = commands.add_parser(
        "kms", formatter_class=formatter, help="set up an AWS KMS key", description="AWS KMS."
    )
    sub = kms.add_subparsers(title="commands", metavar="COMMAND", required=True)
    setup = sub.add_parser(
        "setup",
        formatter_class=formatter,
        help="create a KMS key and alias if missing; print a least-privilege key policy",
        description="Create a symmetric KMS key and its alias unless the alias exists, "
        "then print a key\npolicy (JSON, on stdout) that lets --reader principals Decrypt "
        "and --writer principals\nGenerateDataKey, only for the credential store in "
        "--table (or for any context with\n--any-context). Apply it with aws kms "
        "put-key-policy.",
        epilog=f"example:\n  {PROG} kms setup --alias alias/app-secrets --region eu-west-1 "
        "\\\n      --reader arn:aws:iam::123456789012:role/app > policy.json",
    )
    setup.add_argument("--alias", required=True, metavar="alias/NAME")
    setup.add_argument("-r", "--region", metavar="NAME", help="[SQLA_ENVELOPE_KMS_REGION]")
    setup.add_argument("--endpoint-url", metavar="URL", help="[SQLA_ENVELOPE_KMS_ENDPOINT_URL]")
    setup.add_argument("--reader", action="append", metavar="ARN", help="may Decrypt (repeat)")
    setup.add_argument("--writer", action="append", metavar="ARN", help="may GenerateDataKey")
    setup.add_argument("-t", "--table", default="credential_store", metavar="NAME")
    setup.add_argument(
        "--any-context", action="store_true", help="no condition on the encryption context"
    )
    setup.set_defaults(handler=handled(_cmd_kms_setup))
