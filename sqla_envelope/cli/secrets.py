"""``sqla-envelope secrets``: credstash's command line over a SecretStore, on any SQL database.

credstash's subcommands and options keep their meaning (``put NAME VALUE k=v``,
``get -n``, ``-v``, ``-f``, values from ``-``, ``@file`` or ``-P``), with its bugs
fixed: versions are numbers, wildcards are globs (not regexes), dotenv and
shell output is quoted so a shell reads the exact value back, ``getall`` fails
instead of hanging, and no log file is written. Exit codes: 0 success, 1 a
runtime error (not found, cannot decrypt, keyring), 2 a usage error, 3 a
partial ``getall --skip-undecryptable``. No plaintext in any error.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..audit import log_events
from ..encryptor import Encryptor
from ..errors import ConfigurationError, EnvelopeError, SecretNotFound
from ..secrets import SecretStore
from ..secrets.aws import save_kms_region
from ..secrets.formats import FORMATS, UnprintableSecretError, render, text_of, variable_name
from .credstash import (
    aws_options,
    credstash_options,
    export_command,
    import_command,
    keyring_from,
    reencrypt_command,
)
from .job import PROG, UsageError, engine_for, fail
from .options import handled, key_options

__all__ = ["add_secrets_commands"]

ENV_TABLE = "SQLA_ENVELOPE_SECRETS_TABLE"
PARTIAL = 3
_GLOB = re.compile(r"[*?\[]")


def _context(pairs: Sequence[str]) -> dict[str, str]:
    """credstash's ``k=v`` arguments (and tags); "", "=", "k=", "=v", "a=b=c" are usage errors."""
    context: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value or "=" in value:
            raise UsageError(f"context must be given as key=value pairs, not {pair!r}")
        context[key] = value
    return context


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise UsageError(
            f"-v takes a version number (1, 2, ...; zero-padded is fine), not {text!r}"
        )
    return int(text)


def _read_value(value: str | None, prompt: bool) -> str | bytes:
    """The value argument: literal, ``-`` (stdin, as is), ``@file``, or asked for with -P."""
    if prompt:
        return getpass.getpass("secret: ")
    if value is None:
        return ""  # as credstash: an empty secret
    if value == "-":
        data = sys.stdin.buffer.read()
    elif value.startswith("@"):
        try:
            data = Path(value[1:]).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {value[1:]!r}: {exc.strerror}") from None
    else:
        return value
    try:
        return data.decode("utf-8")  # text stays text; other bytes are a binary secret
    except UnicodeDecodeError:
        return data


def _store(args: argparse.Namespace) -> SecretStore:
    url = args.url or os.environ.get("SQLA_ENVELOPE_URL")
    if not url:
        raise UsageError("--url (or SQLA_ENVELOPE_URL) names the database")
    table = (
        args.table
        or os.environ.get(ENV_TABLE)
        or os.environ.get("CREDSTASH_DEFAULT_TABLE")  # credstash's -t default
        or "credential_store"
    )
    # With --log-level INFO or DEBUG, every key wrap and unwrap is logged (key, table,
    # context; never a value), which is what credstash users look for in theirs.
    logging_keys = getattr(args, "log_level", None) in ("DEBUG", "INFO")
    encryptor = Encryptor(keyring_from(args), listeners=[log_events()] if logging_keys else ())
    return SecretStore(engine_for(url), encryptor, table=table)


def _cmd_setup(args: argparse.Namespace) -> int:
    if args.save_kms_region:
        print(f"saved kms-region {args.save_kms_region} in {save_kms_region(args.save_kms_region)}")
    store = _store(args)
    tags = _context(args.tags or ())
    try:
        created = store.create_table(tags=tags)
    except ConfigurationError as exc:  # tags on a database without table comments
        raise UsageError(str(exc)) from None
    if created:
        print(f"created table {store.table_name}")
    else:
        kept = "; its tags are left as they are" if tags else ""
        print(f"table {store.table_name} already exists{kept}")
    return 0


def _cmd_put(args: argparse.Namespace) -> int:
    _check_digest(args)
    store = _store(args)
    value = _read_value(args.value, args.prompt)
    version = _version(args.version)
    store.put(
        args.name, value, version=version, context=_context(args.context), comment=args.comment
    )
    print(f"{args.name} has been stored")
    return 0


def _cmd_putall(args: argparse.Namespace) -> int:
    _check_digest(args)
    store = _store(args)
    document = _read_value(args.credentials, False)
    try:
        pairs = json.loads(document)
    except (ValueError, TypeError):
        raise UsageError("putall takes a JSON object of names and values") from None
    if not isinstance(pairs, dict) or not all(isinstance(v, str) for v in pairs.values()):
        raise UsageError("putall takes a JSON object of names and string values")
    context, failed = _context(args.context), 0
    for name, value in pairs.items():
        try:
            store.put(
                name, value, version=_version(args.version), context=context, comment=args.comment
            )
            print(f"{name} has been stored")
        except EnvelopeError as exc:
            failed += 1
            fail(str(exc), 1)
    return 1 if failed else 0  # credstash exits 0 even then


def _write(text: str | bytes) -> None:
    if isinstance(text, bytes):
        sys.stdout.flush()
        sys.stdout.buffer.write(text)
        sys.stdout.buffer.flush()
    else:
        sys.stdout.write(text)


def _cmd_get(args: argparse.Namespace) -> int:
    store = _store(args)
    context = _context(args.context)
    if _GLOB.search(args.name):
        secrets = store.get_all(pattern=args.name, context=context)
        _write(render(secrets, args.format or "json"))
        return 0
    value = store.get(args.name, version=_version(args.version), context=context)
    if args.format == "raw":
        _write(value.encode("utf-8") if isinstance(value, str) else value)
    elif args.format is not None:
        _write(render({args.name: value}, args.format))
    else:
        _write(text_of(args.name, value, binary_as_base64=False) + ("" if args.noline else "\n"))
    return 0


def _cmd_getall(args: argparse.Namespace) -> int:
    store = _store(args)
    context, version = _context(args.context), _version(args.version)
    if version is not None:  # that version of every name: a name without it fails (case 23)
        names = store.keys()
        _write(
            render({n: store.get(n, version=version, context=context) for n in names}, args.format)
        )
        return 0
    secrets = store.get_all(context=context, skip_undecryptable=args.skip_undecryptable)
    _write(render(secrets, args.format))
    for name in secrets.skipped:
        fail(f"skipped {name!r}: it cannot be decrypted with this context and keyring", PARTIAL)
    return PARTIAL if secrets.skipped else 0


def _cmd_list(args: argparse.Namespace) -> int:
    infos = _store(args).list(pattern=args.pattern)
    width = max((len(info.name) for info in infos), default=0)
    for info in infos:
        print(f"{info.name:<{width}} -- version {info.version} -- comment {info.comment or ''}")
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    for name in _store(args).keys():  # noqa: SIM118 - a store, not a dict
        print(name)
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    for info in _store(args).history(args.name):
        created = info.created_at.isoformat(timespec="seconds") if info.created_at else "-"
        kept = " -- a credstash item (reencrypt converts it)" if info.format == "credstash" else ""
        print(
            f"{info.name} -- version {info.version} -- {created} -- comment "
            f"{info.comment or ''}{kept}"
        )
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    store = _store(args)
    version = _version(args.version)
    versions = [info.version for info in store.history(args.name)]  # SecretNotFound if none
    if version is not None:
        if version not in versions:
            raise SecretNotFound(f"secret {args.name!r} version {version} not found")
        versions = [version]
    for each in versions:
        store.delete(args.name, version=each)
        print(f"Deleting {args.name} -- version {each}")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    deleted = _store(args).prune(args.name, keep=args.keep)
    print(f"deleted {deleted} old version(s) of {args.name}, kept the {args.keep} latest")
    return 0


def _cmd_exec(args: argparse.Namespace) -> int:
    rest = list(args.rest)
    if "--" not in rest or rest.index("--") == len(rest) - 1:
        raise UsageError("exec runs a command: exec [--prefix P] [k=v ...] -- COMMAND ARGS")
    split = rest.index("--")
    pairs, command = rest[:split], rest[split + 1 :]
    prefix = args.prefix or ""
    secrets = _store(args).get_all(pattern=prefix + "*", context=_context(pairs))
    environment = dict(os.environ)
    for name, value in secrets.items():
        environment[variable_name(name[len(prefix) :])] = text_of(
            name, value, binary_as_base64=False
        )
    try:
        # The user's own command, as given, without a shell: nothing to inject into.
        return subprocess.run(command, env=environment, check=False).returncode  # noqa: S603
    except OSError as exc:
        raise UsageError(f"cannot run {command[0]!r}: {exc.strerror}") from None


def digest_option(parser: argparse.ArgumentParser) -> None:
    """credstash's -d: its HMAC's hash. Values here are authenticated by AES-GCM instead."""
    parser.add_argument(
        "-d",
        "--digest",
        choices=("SHA", "SHA224", "SHA256", "SHA384", "SHA512", "MD5"),
        help="accepted for credstash's scripts: only SHA256, its default (values here are "
        "authenticated by AES-GCM; export-credstash writes SHA256)",
    )


def _check_digest(args: argparse.Namespace) -> None:
    if getattr(args, "digest", None) not in (None, "SHA256"):
        raise UsageError(
            f"-d {args.digest}: this store authenticates values with AES-GCM, not an HMAC; "
            "leave -d out (export-credstash writes SHA256 items)"
        )


def _printable(handler: Any) -> Any:
    """A value the format cannot show is the user's choice of format: a usage error."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except UnprintableSecretError as exc:
            raise UsageError(str(exc)) from None

    return run


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@contextlib.contextmanager
def _logging_to_stderr(level: str | None) -> Any:
    """credstash's --log-level: sqla-envelope's own logs on stderr for one run, no file.

    Only the ``sqla_envelope`` loggers: botocore's DEBUG logs carry request
    signatures and session tokens, which a user turning on "debug" did not ask
    to print.
    """
    if level is None:
        yield
        return
    logger = logging.getLogger("sqla_envelope")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


def _logged(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        with _logging_to_stderr(getattr(args, "log_level", None)):
            return int(handler(args))

    return run


def _log_level_option(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=default,
        type=str.upper,
        help="show sqla-envelope's logs at this level on stderr (INFO: every key wrap and "
        "unwrap); never a file",
    )


def add_secrets_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    formatter: type[argparse.HelpFormatter],
) -> None:
    secrets = commands.add_parser(
        "secrets",
        formatter_class=formatter,
        help="a credential store (credstash's commands) on any SQL database",
        description="Named, versioned secrets in a table of your database, each under its "
        "own data key\n(docs/secrets.md). The database comes from --url or SQLA_ENVELOPE_URL, "
        "the keys from\n--key-file or --kms-key-id (or their environment variables).",
        epilog=f"examples:\n  {PROG} secrets setup\n  {PROG} secrets put app.db.pass hunter2 "
        f"env=prod\n  {PROG} secrets get app.db.pass env=prod\n  {PROG} secrets exec "
        "--prefix app. env=prod -- ./run-app",
    )
    aws_options(secrets, subcommand=False)
    _log_level_option(secrets, None)
    sub = secrets.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(
            name, formatter_class=formatter, help=help_text, description=help_text
        )
        parser.add_argument("--url", metavar="URL", help="the database [SQLA_ENVELOPE_URL]")
        parser.add_argument(
            "-t",
            "--table",
            metavar="NAME",
            help=f"the table (default credential_store) [{ENV_TABLE}, CREDSTASH_DEFAULT_TABLE]",
        )
        key_options(parser, kms_flags=("-k", "--kms-key-id"), region_flags=("--kms-region",))
        aws_options(parser)
        _log_level_option(parser, argparse.SUPPRESS)  # given before the command, kept
        parser.set_defaults(handler=handled(_logged(_printable(handler))))
        return parser

    def context_argument(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("context", nargs="*", metavar="KEY=VALUE", help="encryption context")

    setup = command("setup", _cmd_setup, "create the table if it is missing")
    setup.add_argument(
        "--tags",
        nargs="+",
        metavar="KEY=VALUE",
        help="tags of the new table, kept as its comment (PostgreSQL, MySQL, MariaDB)",
    )
    setup.add_argument(
        "--save-kms-region", metavar="NAME", help="save the KMS region in ~/.credstash first"
    )

    put = command("put", _cmd_put, "store a new version of a secret")
    put.add_argument("name", metavar="NAME")
    put.add_argument("value", nargs="?", metavar="VALUE", help="the value, - for stdin, @FILE")
    context_argument(put)
    put.add_argument("-v", "--version", metavar="N", help="this version (default: the next)")
    put.add_argument("-a", "--autoversion", action="store_true", help="the next version (default)")
    put.add_argument("-c", "--comment", metavar="TEXT")
    put.add_argument("-P", "--prompt", action="store_true", help="ask for the value")
    digest_option(put)

    putall = command("putall", _cmd_putall, "store several secrets from a JSON object")
    putall.add_argument("credentials", metavar="JSON", help="a JSON object, - for stdin, @FILE")
    context_argument(putall)
    putall.add_argument("-v", "--version", metavar="N")
    putall.add_argument("-a", "--autoversion", action="store_true", help="(the default)")
    putall.add_argument("-c", "--comment", metavar="TEXT", help="for every secret stored")
    digest_option(putall)

    get = command("get", _cmd_get, "print a secret, or every secret matching a glob")
    get.add_argument("name", metavar="NAME", help="a name, or a glob (app.db.*)")
    context_argument(get)
    get.add_argument("-n", "--noline", action="store_true", help="no newline after the value")
    get.add_argument("-v", "--version", metavar="N")
    get.add_argument("-f", "--format", choices=(*FORMATS, "raw"))

    getall = command("getall", _cmd_getall, "print the latest version of every secret")
    context_argument(getall)
    getall.add_argument("-f", "--format", choices=FORMATS, default="json")
    getall.add_argument("-v", "--version", metavar="N", help="this version of every secret")
    getall.add_argument(
        "--skip-undecryptable",
        action="store_true",
        help="leave out what cannot be decrypted, name it on stderr, and exit 3",
    )

    listing = command("list", _cmd_list, "list every name and version, never values")
    listing.add_argument("pattern", nargs="?", metavar="GLOB")
    command("keys", _cmd_keys, "list every name once")
    history = command("history", _cmd_history, "list the versions of one secret")
    history.add_argument("name", metavar="NAME")
    delete = command("delete", _cmd_delete, "delete every version of a secret, or one")
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("-v", "--version", metavar="N")
    prune = command("prune", _cmd_prune, "delete all but the latest versions of a secret")
    prune.add_argument("name", metavar="NAME")
    prune.add_argument("--keep", type=int, required=True, metavar="N")

    imported = command(
        "import-credstash",
        lambda args: import_command(args, _store(args), _context(args.context)),
        "copy every version of every secret of a credstash DynamoDB table into the store",
    )
    context_argument(imported)
    reencrypt = command(
        "reencrypt",
        lambda args: reencrypt_command(args, _store(args), _context(args.context)),
        "convert the credstash items imported as they are to the store's format",
    )
    context_argument(reencrypt)
    exported = command(
        "export-credstash",
        lambda args: export_command(args, _store(args)),
        "write every version of every secret as a credstash item that credstash reads",
    )
    credstash_options(imported, exported, reencrypt)

    run = command("exec", _cmd_exec, "run a command with secrets in its environment (no shell)")
    run.add_argument("--prefix", metavar="P", help="only names starting with P, without it")
    run.add_argument("rest", nargs=argparse.REMAINDER, metavar="[KEY=VALUE ...] -- COMMAND ARGS")
