"""The blind index commands of ``sqla-envelope``: ``index-key new`` and ``reindex``.

``index-key new`` makes the wrapped index key that ``Encryptor(index_key=)``,
Flask's ``SQLA_ENVELOPE_INDEX_KEY`` and Django's ``INDEX_KEY`` take. ``reindex``
fills or recomputes a blind index column; it names the index by the
application's model (``package.module:Model.attribute``), because the index's
``normalize`` is Python code that only the application has.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ..encryptor import Encryptor, configure
from ..errors import ConfigurationError
from ..maintenance.walk import ColumnReport, Shard
from ..search.planning import measure
from ..search.reindex import index_column, reindex_column
from .job import PROG, UsageError, engine_for, parse_start_after
from .maintenance import run_options
from .options import handled, import_attribute, key_options, keyring_of

__all__ = ["ENV_INDEX_KEY", "add_index_commands"]

ENV_INDEX_KEY = "SQLA_ENVELOPE_INDEX_KEY"


def _cmd_index_key_new(args: argparse.Namespace) -> int:
    print(Encryptor(keyring_of(args)).new_index_key())
    return 0


def _model_attribute(spec: str) -> Any:
    """``package.module:Model.attribute`` -> the mapped attribute; UsageError otherwise."""
    if "." not in spec.partition(":")[2]:
        raise UsageError("--model takes package.module:Model.attribute")
    return import_attribute(spec, "--model")


def _with_model(args: argparse.Namespace, run: Any) -> Any:
    """``run(engine, attribute)`` with the database, the model and the keys of ``args``."""
    url = args.url or os.environ.get("SQLA_ENVELOPE_URL")
    if not url:
        raise UsageError("--url (or SQLA_ENVELOPE_URL) names the database")
    index_key = getattr(args, "index_key", None) or os.environ.get(ENV_INDEX_KEY)
    attribute = _model_attribute(args.model)
    configure(Encryptor(keyring_of(args), index_key=index_key))
    engine = engine_for(url)
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
            start_after=parse_start_after(args.start_after, pk),
            progress=progress,
        )

    report = _with_model(args, run)
    print(report.summary(), file=sys.stderr)
    for key, reason in report.failures:
        print(f"  failed: row {key}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


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
