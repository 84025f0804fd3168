"""The blind index commands of ``sqla-envelope``: ``index-key new`` and ``reindex``.

``index-key new`` makes the wrapped index key that ``Encryptor(index_key=)``,
Flask's ``SQLA_ENVELOPE_INDEX_KEY`` and Django's ``INDEX_KEY`` take. ``reindex``
fills or recomputes a blind index column; it names the index by the
application's model (``package.module:Model.attribute``), because the index's
``normalize`` is Python code that only the application has.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from typing import Any

from .cli_job import PROG, UsageError, _engine, _start_after, fail
from .cli_ops import run_options
from .encryptor import Encryptor, configure
from .errors import ConfigurationError
from .keyrings.base import Keyring
from .keyrings.kms import KmsKeyring
from .keyrings.local import LocalKeyring
from .maintenance.walk import ColumnReport, Shard
from .search.planning import measure
from .search.reindex import index_column, reindex_column

__all__ = [
    "ENV_INDEX_KEY",
    "add_index_commands",
    "handled",
    "import_attribute",
    "key_options",
    "keyring_of",
]

ENV_INDEX_KEY = "SQLA_ENVELOPE_INDEX_KEY"
_KEY_ENV = {
    "key_file": "SQLA_ENVELOPE_KEY_FILE",
    "kms_key_id": "SQLA_ENVELOPE_KMS_KEY_ID",
    "region": "SQLA_ENVELOPE_KMS_REGION",
    "endpoint_url": "SQLA_ENVELOPE_KMS_ENDPOINT_URL",
}


def keyring_of(args: argparse.Namespace) -> Keyring:
    key_file = args.key_file or os.environ.get(_KEY_ENV["key_file"])
    kms_key_id = args.kms_key_id or os.environ.get(_KEY_ENV["kms_key_id"])
    if bool(key_file) == bool(kms_key_id):
        raise UsageError("give exactly one of --key-file and --kms-key-id")
    if key_file:
        return LocalKeyring.from_file(key_file)
    return KmsKeyring(
        kms_key_id,  # type: ignore[arg-type]
        region_name=args.region or os.environ.get(_KEY_ENV["region"]),
        endpoint_url=args.endpoint_url or os.environ.get(_KEY_ENV["endpoint_url"]),
    )


def _cmd_index_key_new(args: argparse.Namespace) -> int:
    print(Encryptor(keyring_of(args)).new_index_key())
    return 0


def _model_attribute(spec: str) -> Any:
    """``package.module:Model.attribute`` -> the mapped attribute; UsageError otherwise."""
    if "." not in spec.partition(":")[2]:
        raise UsageError("--model takes package.module:Model.attribute")
    return import_attribute(spec, "--model")


def import_attribute(spec: str, flag: str) -> Any:
    """``package.module:name.name`` -> that object of the application; UsageError otherwise."""
    module_name, _, path = spec.partition(":")
    if not module_name or not path:
        raise UsageError(f"{flag} takes package.module:attribute")
    if "" not in sys.path:
        sys.path.insert(0, "")  # the application's package, from where the command runs
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"{flag}: cannot import {module_name!r}: {exc}") from None
    for name in path.split("."):
        if not hasattr(target, name):
            raise UsageError(f"{flag}: {module_name}:{path} has no {name!r}")
        target = getattr(target, name)
    return target


def _with_model(args: argparse.Namespace, run: Any) -> Any:
    """``run(engine, attribute)`` with the database, the model and the keys of ``args``."""
    url = args.url or os.environ.get("SQLA_ENVELOPE_URL")
    if not url:
        raise UsageError("--url (or SQLA_ENVELOPE_URL) names the database")
    index_key = getattr(args, "index_key", None) or os.environ.get(ENV_INDEX_KEY)
    attribute = _model_attribute(args.model)
    configure(Encryptor(keyring_of(args), index_key=index_key))
    engine = _engine(url)
    try:
        return run(engine, attribute)
    finally:
        configure(None)
        engine.dispose()


def _cmd_index_plan(args: argparse.Namespace) -> int:
    if not args.false_positives > 0:
        raise UsageError("--false-positives must be positive")
    plan = _with_model(
        args,
        lambda engine, attribute: measure(engine, attribute, false_positives=args.false_positives),
    )
    print(plan.summary())
    print(f"recommended: bits={plan.bits}")
    return 0


def _cmd_reindex(args: argparse.Namespace) -> int:
    try:
        shard = Shard.parse(args.shard) if args.shard else None
    except ConfigurationError as exc:
        raise UsageError(f"--shard: {exc}") from None
    interval, last = args.progress_interval, [time.monotonic()]

    def progress(report: ColumnReport) -> None:
        if time.monotonic() - last[0] >= interval:
            last[0] = time.monotonic()
            print(f"{report.summary()} (last key {report.last_key})", file=sys.stderr)

    def run(engine: Any, attribute: Any) -> ColumnReport:
        pk = list(index_column(attribute)[0].primary_key.columns)
        return reindex_column(
            engine,
            attribute,
            batch_size=args.batch_size,
            dry_run=args.dry_run,
            strict=args.strict,
            shard=shard,
            start_after=_start_after(args.start_after, pk),
            progress=progress,
        )

    report = _with_model(args, run)
    print(report.summary(), file=sys.stderr)
    for key, reason in report.failures:
        print(f"  failed: row {key}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


def handled(handler: Any) -> Any:
    """A command handler whose UsageError is one line on stderr and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except UsageError as exc:
            return fail(str(exc), 2)

    return run


def key_options(
    parser: argparse.ArgumentParser,
    *,
    kms_flags: tuple[str, ...] = ("--kms-key-id",),
    region_flags: tuple[str, ...] = ("--region",),
) -> None:
    """The keyring options every command shares (credstash spells two of them -k and -r)."""
    keys = parser.add_argument_group("keys (or the environment variables in brackets)")
    keys.add_argument("--key-file", metavar="PATH", help=f"local key file [{_KEY_ENV['key_file']}]")
    keys.add_argument(
        *kms_flags,
        dest="kms_key_id",
        metavar="ID",
        help=f"AWS KMS key id, ARN or alias [{_KEY_ENV['kms_key_id']}]",
    )
    keys.add_argument(
        *region_flags, dest="region", metavar="NAME", help=f"AWS region [{_KEY_ENV['region']}]"
    )
    keys.add_argument(
        "--endpoint-url", metavar="URL", help=f"KMS endpoint [{_KEY_ENV['endpoint_url']}]"
    )


def _group(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    formatter: type[argparse.HelpFormatter],
    name: str,
    help_text: str,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    group = commands.add_parser(
        name, formatter_class=formatter, help=help_text, description="docs/searching.md"
    )
    return group.add_subparsers(title="commands", metavar="COMMAND", required=True)


def add_index_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    formatter: type[argparse.HelpFormatter],
) -> None:
    sub = _group(commands, formatter, "index-key", "make the wrapped key of blind indexes")
    new = sub.add_parser(
        "new",
        formatter_class=formatter,
        help="print a new index key, wrapped by the keyring",
        description="Make a random 256-bit blind index key, wrap it with the keyring's "
        "primary key,\nand print the text that Encryptor(index_key=), "
        "SQLA_ENVELOPE_INDEX_KEY (Flask)\nand INDEX_KEY (Django) take. The key itself "
        "is never printed.",
        epilog=f"example:\n  {PROG} index-key new --key-file app.keys.json",
    )
    key_options(new)
    new.set_defaults(handler=handled(_cmd_index_key_new))

    index_commands = _group(commands, formatter, "index", "size a blind index from a live column")
    plan = index_commands.add_parser(
        "plan",
        formatter_class=formatter,
        help="count rows and distinct values, and recommend bits",
        description="Decrypt the index's source column(s), count the rows and the distinct "
        "normalized\nvalues, and recommend the bits that keep the unrelated rows of one "
        "lookup at or\nunder --false-positives; say what the index would leak at that size.",
        epilog=f"example:\n  {PROG} index plan --url sqlite:///app.db --model "
        "app.models:User.email_bidx \\\n      --key-file app.keys.json",
    )
    plan.add_argument("--url", metavar="URL", help="the database [SQLA_ENVELOPE_URL]")
    plan.add_argument(
        "--model", metavar="MODULE:MODEL.ATTR", required=True, help="the BlindIndex attribute"
    )
    plan.add_argument(
        "--false-positives",
        type=float,
        default=1.0,
        metavar="N",
        help="unrelated rows one lookup may return, on average (default: %(default)s)",
    )
    key_options(plan)
    plan.set_defaults(handler=handled(_cmd_index_plan))

    reindex = commands.add_parser(
        "reindex",
        formatter_class=formatter,
        help="fill or recompute a blind index column",
        description="Decrypt the sources of each row and write its blind index, in "
        "primary-key\norder, a batch per transaction; rows already right are skipped, "
        "so a stopped\nrun is run again. The index is named by the application's model.",
        epilog=f"example:\n  {PROG} reindex --url sqlite:///app.db --model "
        "app.models:User.email_bidx \\\n      --key-file app.keys.json --index-key "
        '"$SQLA_ENVELOPE_INDEX_KEY"',
    )
    reindex.add_argument("--url", metavar="URL", help="the database [SQLA_ENVELOPE_URL]")
    reindex.add_argument(
        "--model", metavar="MODULE:MODEL.ATTR", required=True, help="the BlindIndex attribute"
    )
    reindex.add_argument(
        "--index-key", metavar="TEXT", help=f"the wrapped index key [{ENV_INDEX_KEY}]"
    )
    run_options(reindex.add_argument_group("the run"), writes=True)
    key_options(reindex)
    reindex.set_defaults(handler=handled(_cmd_reindex))
