"""``sqla-envelope tenants``: the branch key table, its tenants, rotation and crypto-shredding.

``create-table``, ``list`` and ``shred`` need the database only: shredding
destroys rows of the branch key table and asks no key service. ``rotate`` makes
new branch keys, so it takes the master keyring's options too. Errors are one
line on stderr: exit code 2 for a usage error, 1 for the library or the database.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import sqlalchemy as sa

from ..tenants import DEFAULT_TABLE, SqlBranchKeyStore, TenantKeyring, create_branch_key_table
from ..tenants.keyring import shred
from .job import PROG, UsageError, engine_for
from .options import handled, import_attribute, key_options, keyring_of

__all__ = ["add_tenants_commands"]

ENV_URL = "SQLA_ENVELOPE_URL"
_URL = "postgresql+psycopg://app@db/app"


def _store(args: argparse.Namespace) -> SqlBranchKeyStore:
    url = args.url or os.environ.get(ENV_URL)
    if not url:
        raise UsageError(f"--url (or {ENV_URL}) names the database")
    return SqlBranchKeyStore(engine_for(url), args.table)


def _metadata(spec: str) -> sa.MetaData:
    """``package.module:attribute`` -> a MetaData, or the ``metadata`` of a declarative base."""
    target = import_attribute(spec, "--metadata")
    found = target if isinstance(target, sa.MetaData) else getattr(target, "metadata", None)
    if not isinstance(found, sa.MetaData):
        raise UsageError(f"--metadata: {spec} is neither a MetaData nor has one")
    return found


def _cmd_create_table(args: argparse.Namespace) -> int:
    store = _store(args)
    created = create_branch_key_table(store.engine, table=args.table)
    print(f"{'created' if created else 'found'} table {args.table}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    by_tenant: dict[str, list[Any]] = {}
    for record in _store(args).records(args.tenant):
        by_tenant.setdefault(record.tenant, []).append(record)
    for tenant, records in by_tenant.items():
        top = records[-1]
        if top.destroyed:
            state = (
                f"shredded {top.destroyed_at:%Y-%m-%d %H:%M}" if top.destroyed_at else "shredded"
            )
        else:
            assert top.wrapped is not None
            state = f"active version {top.version} under {top.wrapped[0].key_ref}"
        live = [r.version for r in records if not r.destroyed]
        print(f"{tenant}\t{state}\tlive versions: {', '.join(map(str, live)) or 'none'}")
    if not by_tenant:
        print("no tenant has a branch key", file=sys.stderr)
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    if bool(args.tenant) == bool(args.all):
        raise UsageError("name the tenants to rotate, or pass --all")
    store = _store(args)
    keyring = TenantKeyring(keyring_of(args), store=store, field=args.field)
    rotated = keyring.rotate_all() if args.all else {t: keyring.rotate(t) for t in args.tenant}
    for tenant, version in rotated.items():
        print(f"{tenant}: version {version} is active")
    print(
        f"Other processes write under the new versions once their cache expires.\nThen "
        f"move the rows with '{PROG} rewrap' (values under older versions still read).",
        file=sys.stderr,
    )
    return 0


def _cmd_shred(args: argparse.Namespace) -> int:
    if not args.dry_run and not args.yes:
        raise UsageError(
            f"shredding {args.tenant!r} cannot be undone: every value of the tenant becomes "
            "unreadable. Look first with --dry-run, then pass --yes"
        )
    metadata = _metadata(args.metadata) if args.metadata else None
    data = engine_for(args.data_url) if args.data_url else None
    store = _store(args)
    report = shred(
        store, args.tenant, field=args.field, dry_run=args.dry_run, metadata=metadata, bind=data
    )
    print(report.summary())
    verb = "would become" if args.dry_run else "are now"
    for exposure in report.exposure:
        print(
            f"  {exposure.table}: {exposure.rows} rows {verb} unreadable "
            f"(columns {', '.join(exposure.columns)})"
        )
    if metadata is None:
        print("  (pass --metadata package.module:Base to count the rows)", file=sys.stderr)
    if not args.dry_run:
        print(
            "Processes that hold the keys in their cache forget them within its TTL. Copies of "
            "the branch key table in backups still hold the keys: see docs/tenants.md.",
            file=sys.stderr,
        )
    return 0


def add_tenants_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    formatter: type[argparse.HelpFormatter],
) -> None:
    group = commands.add_parser(
        "tenants",
        formatter_class=formatter,
        help="per-tenant branch keys: create the table, list, rotate, shred",
        description="Manage TenantKeyring's branch keys (docs/tenants.md).",
    )
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(
            name, formatter_class=formatter, help=help_text, description=help_text, epilog=epilog
        )
        parser.add_argument("--url", metavar="URL", help=f"the database [{ENV_URL}]")
        parser.add_argument(
            "--table", default=DEFAULT_TABLE, help="the branch key table (default: %(default)s)"
        )
        return parser

    create = command(
        "create-table",
        "create the branch key table if it is missing",
        f"example:\n  {PROG} tenants create-table --url {_URL}",
    )
    create.set_defaults(handler=handled(_cmd_create_table))

    listing = command(
        "list",
        "list the tenants, their active version and master key, or that they are shredded",
        f"example:\n  {PROG} tenants list --url {_URL}",
    )
    listing.add_argument("tenant", nargs="?", help="only this tenant")
    listing.set_defaults(handler=handled(_cmd_list))

    rotate = command(
        "rotate",
        "make a new active branch key version for tenants (old versions still read)",
        f"examples:\n  {PROG} tenants rotate acme globex --url {_URL} --kms-key-id alias/app\n"
        f"  {PROG} tenants rotate --all --url {_URL} --key-file app.keys.json",
    )
    rotate.add_argument("tenant", nargs="*", help="the tenants to rotate")
    rotate.add_argument("--all", action="store_true", help="every tenant that is not shredded")
    rotate.add_argument("--field", default="tenant_id", help="the context key naming the tenant")
    key_options(rotate)
    rotate.set_defaults(handler=handled(_cmd_rotate))

    shredding = command(
        "shred",
        "destroy every branch key of a tenant: its values can never be decrypted again",
        f"examples:\n  {PROG} tenants shred acme --dry-run --metadata app.models:Base "
        f"--url {_URL}\n  {PROG} tenants shred acme --yes --url {_URL}",
    )
    shredding.add_argument("tenant", help="the tenant to shred")
    shredding.add_argument("--dry-run", action="store_true", help="change nothing; list only")
    shredding.add_argument("--yes", action="store_true", help="shred: it cannot be undone")
    shredding.add_argument(
        "--metadata",
        metavar="MODULE:ATTR",
        help="the application's MetaData or declarative Base, to count the tenant's rows",
    )
    shredding.add_argument(
        "--data-url",
        metavar="URL",
        help="the database of the --metadata tables, if not --url's (where the keys are)",
    )
    shredding.add_argument("--field", default="tenant_id", help="the column naming the tenant")
    shredding.set_defaults(handler=handled(_cmd_shred))
