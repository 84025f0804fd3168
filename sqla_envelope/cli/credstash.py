"""``sqla-envelope secrets``, credstash's side: AWS options, import, reencrypt and export.

credstash's AWS options keep their meaning: ``-r`` the region (DynamoDB's, and
KMS's unless ``--kms-region`` or ``~/.credstash`` says otherwise), ``-p`` a
profile, ``-n ARN`` a role to assume (before the command, as in credstash,
since ``get -n`` means no newline; ``--arn`` after it). A store on a key file
touches no AWS at all.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import ConfigurationError
from ..keyrings.base import Keyring
from ..keyrings.kms import KmsKeyring
from ..secrets import SecretStore
from ..secrets.aws import aws_session, kms_region_of, region_of
from ..secrets.credstash_export import export_credstash
from ..secrets.credstash_import import DEFAULT_KMS_KEY, import_credstash, scan_credstash_table
from .job import UsageError, fail
from .options import keyring_of

__all__ = [
    "aws_options",
    "credstash_options",
    "export_command",
    "import_command",
    "keyring_from",
    "reencrypt_command",
]

PARTIAL = 3


def _session(args: argparse.Namespace) -> Any:
    """One boto3 Session per command: a role is assumed once."""
    if getattr(args, "aws_session", None) is None:
        try:
            args.aws_session = aws_session(
                profile=getattr(args, "aws_profile", None),
                role_arn=getattr(args, "aws_arn", None),
                region=args.aws_region,
            )
        except ConfigurationError as exc:
            raise UsageError(str(exc)) from None
    return args.aws_session


def _where(args: argparse.Namespace, session: Any) -> tuple[str, str, str | None]:
    """(region, KMS region, endpoint URL) by credstash's rules (secrets/aws.py)."""
    region = region_of(session, args.aws_region)
    kms_region = kms_region_of(args.region or os.environ.get("SQLA_ENVELOPE_KMS_REGION"), region)
    return region, kms_region, args.endpoint_url or os.environ.get("SQLA_ENVELOPE_KMS_ENDPOINT_URL")


def _kms(args: argparse.Namespace, key_id: str, decrypt_key_ids: list[str]) -> KmsKeyring:
    session = _session(args)
    _, kms_region, endpoint = _where(args, session)
    return KmsKeyring(
        key_id,
        region_name=kms_region,
        endpoint_url=endpoint,
        session=session,
        decrypt_key_ids=decrypt_key_ids,
    )


def keyring_from(args: argparse.Namespace) -> Keyring:
    """The store's keyring: a key file, or KMS with credstash's AWS options."""
    key_file = args.key_file or os.environ.get("SQLA_ENVELOPE_KEY_FILE")
    kms_key_id = args.kms_key_id or os.environ.get("SQLA_ENVELOPE_KMS_KEY_ID")
    decrypt_only = [k for k in args.decrypt_kms_key_id or () if k != kms_key_id]
    if key_file or not kms_key_id:
        if decrypt_only:
            raise UsageError("--decrypt-kms-key-id adds KMS keys to a -k/--kms-key-id keyring")
        return keyring_of(args)  # a key file, or the message saying what to give
    return _kms(args, kms_key_id, decrypt_only)


def _reencrypt(
    args: argparse.Namespace, store: SecretStore, context: dict[str, str], kms: Keyring | None
) -> int:
    """Convert the store's credstash items; say how many, and name those left (exit 3)."""
    conversion = store.reencrypt(
        pattern=getattr(args, "pattern", None),
        context=context,
        keyring=kms,
        skip_undecryptable=args.skip_undecryptable,
    )
    print(f"converted {conversion.converted} credstash item(s) to the store's format")
    for name, version in conversion.skipped:
        fail(
            f"left {name!r} version {version} as a credstash item: it cannot be decrypted "
            "with this context and key; run reencrypt again with its context",
            PARTIAL,
        )
    return PARTIAL if conversion.skipped else 0


def import_command(args: argparse.Namespace, store: SecretStore, context: dict[str, str]) -> int:
    """import-credstash: every item of credstash's table, kept as it is; --reencrypt converts."""
    if context and not args.reencrypt:
        raise UsageError(
            "KEY=VALUE is the context to decrypt with, for --reencrypt: an import that keeps "
            "credstash's items as they are needs none"
        )
    session = _session(args)
    region, _, endpoint = _where(args, session)
    items = scan_credstash_table(
        args.dynamodb_table,
        region=args.dynamodb_region or region,
        endpoint_url=args.dynamodb_endpoint_url or endpoint,
        session=session,
    )
    report = import_credstash(store, items, kms_key_id=args.from_kms_key_id)
    print(
        f"imported {report.imported} version(s) of {len(report.names)} secret(s) from "
        f"{args.dynamodb_table} as credstash items; {report.already_there} already there"
    )
    if not args.reencrypt:
        return 0
    with _kms(args, args.from_kms_key_id, []) as kms:
        return _reencrypt(args, store, context, kms)


def reencrypt_command(args: argparse.Namespace, store: SecretStore, context: dict[str, str]) -> int:
    """reencrypt: the credstash items kept verbatim, converted to the store's format."""
    if args.from_kms_key_id is None:  # the store's own keyring reads them
        return _reencrypt(args, store, context, None)
    with _kms(args, args.from_kms_key_id, []) as kms:
        return _reencrypt(args, store, context, kms)


def export_command(args: argparse.Namespace, store: SecretStore) -> int:
    """export-credstash: every version of every secret of ``store`` as a credstash item."""
    session = _session(args)
    region, kms_region, endpoint = _where(args, session)
    with KmsKeyring(
        args.to_kms_key_id, region_name=kms_region, endpoint_url=endpoint, session=session
    ) as kms:
        written, existing = export_credstash(
            store,
            args.dynamodb_table,
            kms,
            region=args.dynamodb_region or region,
            endpoint_url=args.dynamodb_endpoint_url or endpoint,
            hmac_as_string=args.hmac_as_string,
            session=session,
        )
    print(f"wrote {written} credstash item(s) to {args.dynamodb_table}; {existing} already there")
    return 0


def _credentials(container: Any, default: Any, arn_flags: tuple[str, ...]) -> None:
    container.add_argument(
        "-p",
        "--profile",
        dest="aws_profile",
        metavar="NAME",
        default=default,
        help="the AWS profile whose credentials to use",
    )
    container.add_argument(
        *arn_flags,
        dest="aws_arn",
        metavar="ARN",
        default=default,
        help="an IAM role to assume with STS, not with -p (credstash's -n, before the command)",
    )


def aws_options(parser: argparse.ArgumentParser, *, subcommand: bool = True) -> None:
    """credstash's AWS options: -r, -p and -n ARN (-n only before the subcommand)."""
    if not subcommand:
        _credentials(parser.add_mutually_exclusive_group(), None, ("-n", "--arn"))
        return
    aws = parser.add_argument_group("AWS, as credstash's options")
    aws.add_argument(
        "-r",
        "--region",
        dest="aws_region",
        metavar="NAME",
        help="AWS region: DynamoDB's, and KMS's unless --kms-region (default: "
        "AWS_DEFAULT_REGION, then the profile's, then us-east-1)",
    )
    # Suppressed defaults: given before the subcommand, they are not reset here.
    _credentials(aws, argparse.SUPPRESS, ("--arn",))
    aws.add_argument(
        "--decrypt-kms-key-id",
        action="append",
        metavar="ID",
        help="a KMS key that only unwraps (repeat): credstash's, for its items imported as "
        "they are",
    )


def _conversion_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--skip-undecryptable",
        action="store_true",
        help="leave what cannot be decrypted as it is, name it on stderr, and exit 3",
    )


def credstash_options(
    imported: argparse.ArgumentParser,
    exported: argparse.ArgumentParser,
    reencrypt: argparse.ArgumentParser,
) -> None:
    """The options of the three commands: credstash's table, and the KMS key of its items."""
    for parser in (imported, exported):
        parser.add_argument("--dynamodb-table", metavar="NAME", default="credential-store")
        parser.add_argument("--dynamodb-region", metavar="NAME", help="(default: -r)")
        parser.add_argument(
            "--dynamodb-endpoint-url", metavar="URL", help="(default: --endpoint-url)"
        )
    imported.add_argument(
        "--from-kms-key-id",
        metavar="ID",
        default=DEFAULT_KMS_KEY,
        help="the KMS key of credstash's items, which reads will name (default: %(default)s)",
    )
    imported.add_argument(
        "--reencrypt",
        action="store_true",
        help="then convert them to the store's format (needs kms:Decrypt and their context)",
    )
    _conversion_options(imported)
    reencrypt.add_argument("--pattern", metavar="GLOB", help="only the names matching GLOB")
    reencrypt.add_argument(
        "--from-kms-key-id",
        metavar="ID",
        help="read credstash's items with this KMS key (default: the store's keyring, which "
        "must hold the key they were imported under)",
    )
    _conversion_options(reencrypt)
    exported.add_argument(
        "--to-kms-key-id",
        metavar="ID",
        default="alias/credstash",
        help="the KMS key of the items written (default: %(default)s); credstash items "
        "imported as they are keep theirs",
    )
    exported.add_argument(
        "--hmac-as-string",
        action="store_true",
        help="write hmac as a DynamoDB string, for readers older than credstash 1.13.1",
    )
