"""The ``sqla-envelope`` command: a demo, local key files, envelope inspection.

The column commands (rewrap, reencrypt, encrypt-column, decrypt-column, verify)
live in maintenance.py. Errors from the library or the file system end as one line
on stderr and exit code 1; usage errors exit 2, as argparse does. Nothing here
prints key bytes.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from .._version import __version__
from ..envelope import TAG_SIZE, Envelope, unpack
from ..errors import EnvelopeError, MalformedEnvelopeError
from ..keyrings.local import LocalKeyring
from . import demo
from .index import add_index_commands
from .job import PROG, describe, fail
from .kms import add_kms_commands
from .maintenance import add_commands
from .secrets import add_secrets_commands
from .tenants import add_tenants_commands

__all__ = ["decode_value", "main"]

_ONE_SSN = "SELECT ssn FROM users LIMIT 1"
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else 2
    handler: Handler = args.handler
    try:
        return handler(args)
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, as the Python docs advise,
        # and keep the interpreter from failing again when it flushes stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (EnvelopeError, OSError, DBAPIError) as exc:
        return fail(describe(exc), 1)


# -- demo ---------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    db_path = Path(args.db)
    key_path = Path(args.key_file) if args.key_file else db_path.with_suffix(".keys.json")
    demo.run(db_path, key_path)
    return 0


# -- keys ---------------------------------------------------------------------------


def _cmd_keys_generate(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        return fail(f"{path} already exists; pass --force to replace it and lose its keys", 2)
    keyring = LocalKeyring.generate(args.key_id)
    _write(keyring, path)
    print(f"Wrote {path} (mode 0600) with one key, id {keyring.primary}")
    return 0


def _cmd_keys_add(args: argparse.Namespace) -> int:
    path = Path(args.path)
    old = LocalKeyring.from_file(path)
    keyring = old.with_new_key(args.key_id)
    new = keyring.key_ids[-1]
    if args.no_primary:
        _write(keyring, path)
        print(f"Added key {new} to {path}; the primary is still {keyring.primary}.")
        print(
            f"Deploy {path} to every process that reads these columns and restart or reload "
            f"them,\nthen make the new key primary with\n  {PROG} keys set-primary {path} {new}"
        )
        return 0
    keyring = keyring.with_primary(new)
    _write(keyring, path)
    print(f"Added key {new} to {path}; it is now the primary key.")
    print(
        f"New values are encrypted under {new}. Values written before stay under "
        f"{', '.join(old.key_ids)}\nand still decrypt. Every process that reads these columns "
        f"needs this key file\nbefore it meets a value under {new}: deploy it first "
        f"(or use --no-primary next time).\nThen move the old values to the new key with\n"
        f"  {PROG} rewrap --url URL --table TABLE --column COLUMN "
        f"--key-file {path} --to-key-file {path}\nthen remove the old key."
    )
    return 0


def _cmd_keys_set_primary(args: argparse.Namespace) -> int:
    path = Path(args.path)
    keyring = LocalKeyring.from_file(path).with_primary(args.key_id)
    _write(keyring, path)
    print(f"{args.key_id} is now the primary key of {path}; new values are encrypted under it.")
    return 0


def _write(keyring: LocalKeyring, path: Path) -> None:
    try:
        keyring.to_file(path)
    except OSError as exc:  # name the key file, not to_file's temporary file beside it
        raise OSError(exc.errno, f"cannot write key file: {exc.strerror}", str(path)) from exc


def _cmd_keys_remove(args: argparse.Namespace) -> int:
    path = Path(args.path)
    keyring = LocalKeyring.from_file(path).without(args.key_id)
    _write(keyring, path)
    print(f"Removed key {args.key_id} from {path}; it holds {', '.join(keyring.key_ids)}.")
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    keyring = LocalKeyring.from_file(Path(args.path))
    for key_id in keyring.key_ids:
        print(f"{key_id}  (primary)" if key_id == keyring.primary else key_id)
    return 0


# -- inspect ------------------------------------------------------------------------


def decode_value(value: str) -> list[bytes]:
    """The byte strings ``value`` may stand for, hex first, then base64.

    Accepts hex with an optional ``\\x`` (as psql shows bytea) or ``0x`` prefix,
    and standard or URL-safe base64; whitespace is ignored. Raises
    MalformedEnvelopeError when it is neither.
    """
    compact = "".join(value.split())
    if compact[:2].lower() in ("\\x", "0x"):
        if _HEX.fullmatch(compact[2:]):
            return [bytes.fromhex(compact[2:])]
        raise MalformedEnvelopeError("not a sqla-envelope value: invalid hex after the prefix")
    candidates = [bytes.fromhex(compact)] if _HEX.fullmatch(compact) else []
    padded = compact.replace("-", "+").replace("_", "/") + "=" * (-len(compact) % 4)
    with contextlib.suppress(binascii.Error, ValueError):
        candidates.append(base64.b64decode(padded, validate=True))
    if not candidates:
        raise MalformedEnvelopeError("not a sqla-envelope value: neither hex nor base64")
    return candidates


def _cmd_inspect(args: argparse.Namespace) -> int:
    errors: list[MalformedEnvelopeError] = []
    for data in decode_value(args.value):
        try:
            envelope = unpack(data)
        except MalformedEnvelopeError as exc:
            errors.append(exc)
            continue
        _print_envelope(envelope, len(data))
        return 0
    raise errors[0]


def _print_envelope(envelope: Envelope, total: int) -> None:
    rows = [("format version", str(envelope.version))]
    for number, key in enumerate(envelope.wrapped_keys, start=1):
        rows.append((f"wrapped key {number}", f"under key {key.key_ref}, {len(key.blob)} bytes"))
    if envelope.commitment:
        rows.append(("key commitment", f"{len(envelope.commitment)} bytes"))
    rows += [
        ("nonce", f"{len(envelope.nonce)} bytes"),
        ("ciphertext", f"{envelope.plaintext_size} bytes (the plaintext's size)"),
        ("tag", f"{TAG_SIZE} bytes"),
        ("total", f"{total} bytes"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}")


# -- the parser ---------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=formatter,
        description="Row-level envelope encryption for SQLAlchemy: try it, manage local "
        "key files,\nlook inside stored values, and encrypt, rotate and verify the columns "
        "of a\ndatabase.",
        epilog=f"examples:\n  {PROG} demo\n  {PROG} keys generate app.keys.json\n"
        f"  {PROG} rewrap --url $URL --table patients --column ssn \\\n"
        "      --key-file app.keys.json --to-key-file app.keys.json\n\n"
        f"Run '{PROG} COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    demo_parser = commands.add_parser(
        "demo",
        formatter_class=formatter,
        help="encrypt a few rows in SQLite and show what is stored",
        description="Create (or reuse) a SQLite database and a local key file, store three "
        "patients\nwith encrypted columns, and show what the application reads beside what "
        "the\ndatabase holds. Prints key ids, never keys.",
        epilog=f"example:\n  {PROG} demo --db /tmp/demo.db",
    )
    demo_parser.add_argument(
        "--db",
        metavar="PATH",
        default="sqla-envelope-demo.db",
        help="SQLite database file (default: %(default)s)",
    )
    demo_parser.add_argument(
        "--key-file",
        metavar="PATH",
        help="local key file, created if missing (default: the database's name with "
        "the suffix .keys.json)",
    )
    demo_parser.set_defaults(handler=_cmd_demo)

    _add_keys_parser(commands, formatter)

    inspect_parser = commands.add_parser(
        "inspect",
        formatter_class=formatter,
        help="show the header of a stored value, without decrypting it",
        description="Parse one stored value and print its format version, the key each "
        "copy of its\ndata key is wrapped under, and its sizes. Needs no key and never "
        "decrypts.\nVALUE is hex (optionally prefixed with \\x, as psql shows bytea, or 0x) "
        "or base64.",
        epilog="examples:\n"
        f"  {PROG} inspect '\\x0201066131623263330030...'\n"
        f"  {PROG} inspect \"$(psql -Atc '{_ONE_SSN}')\"",
    )
    inspect_parser.add_argument("value", metavar="VALUE", help="the stored value, hex or base64")
    inspect_parser.set_defaults(handler=_cmd_inspect)
    add_commands(commands, formatter)
    add_index_commands(commands, formatter)
    add_secrets_commands(commands, formatter)
    add_kms_commands(commands, formatter)
    add_tenants_commands(commands, formatter)
    return parser


def _add_keys_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    formatter: type[argparse.HelpFormatter],
) -> None:
    keys_parser = commands.add_parser(
        "keys",
        formatter_class=formatter,
        help="create and rotate local key files",
        description="Manage LocalKeyring key files: JSON, readable by their owner only "
        "(mode 0600).\nLoad one in your application with LocalKeyring.from_file(PATH).",
        epilog=f"examples:\n  {PROG} keys generate app.keys.json --key-id 2025\n"
        f"  {PROG} keys add app.keys.json --key-id 2026\n  {PROG} keys list app.keys.json",
    )
    keys = keys_parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    generate = keys.add_parser(
        "generate",
        formatter_class=formatter,
        help="write a new key file with one fresh master key",
        description="Write a new key file holding one random 256-bit master key. Prints "
        "its key id,\nnever the key. Refuses to replace an existing file unless --force.",
        epilog=f"example:\n  {PROG} keys generate app.keys.json --key-id 2025",
    )
    generate.add_argument("path", metavar="PATH", help="the key file to write")
    generate.add_argument(
        "--key-id", metavar="ID", help="the key's id (default: random hex digits)"
    )
    generate.add_argument(
        "--force", action="store_true", help="replace PATH if it exists (its keys are lost)"
    )
    generate.set_defaults(handler=_cmd_keys_generate)

    add = keys.add_parser(
        "add",
        formatter_class=formatter,
        help="add a fresh primary key (first step of key rotation)",
        description="Add a fresh master key to a key file and make it the primary: new "
        "values are\nencrypted under it, older values still decrypt under their old key. "
        "This is the\nfirst step of a key rotation; then move the data with "
        f"'{PROG} rewrap'\nand remove the old key with '{PROG} keys remove'.",
        epilog=f"example:\n  {PROG} keys add app.keys.json --key-id 2026",
    )
    add.add_argument("path", metavar="PATH", help="an existing key file")
    add.add_argument("--key-id", metavar="ID", help="the new key's id (default: random hex digits)")
    add.add_argument(
        "--no-primary",
        action="store_true",
        help="add the key without making it the primary: deploy the file everywhere "
        "first, then run 'keys set-primary'",
    )
    add.set_defaults(handler=_cmd_keys_add)

    set_primary = keys.add_parser(
        "set-primary",
        formatter_class=formatter,
        help="make a key of the file the primary (new values are encrypted under it)",
        description="Make KEY_ID, a key the file already holds, the primary key: new values "
        "are\nencrypted under it. The second step of a key rollout (after 'keys add "
        "--no-primary'\nand deploying the file everywhere), or the way back from one.",
        epilog=f"example:\n  {PROG} keys set-primary app.keys.json 2026",
    )
    set_primary.add_argument("path", metavar="PATH", help="an existing key file")
    set_primary.add_argument("key_id", metavar="KEY_ID", help="the key to make primary")
    set_primary.set_defaults(handler=_cmd_keys_set_primary)

    list_parser = keys.add_parser(
        "list",
        formatter_class=formatter,
        help="list the key ids in a key file",
        description="Print the id of each key in a key file, one a line, marking the "
        "primary.\nNever prints key bytes.",
        epilog=f"example:\n  {PROG} keys list app.keys.json",
    )
    list_parser.add_argument("path", metavar="PATH", help="an existing key file")
    list_parser.set_defaults(handler=_cmd_keys_list)

    remove = keys.add_parser(
        "remove",
        formatter_class=formatter,
        help="remove a retired key (last step of key rotation)",
        description="Remove a key from a key file, once no stored value is under it (check "
        "with\n'verify', or count rows by key with plain SQL: docs/format.md). Values still "
        "under\nit can no longer be read. The primary key cannot be removed.",
        epilog=f"example:\n  {PROG} keys remove app.keys.json 2025",
    )
    remove.add_argument("path", metavar="PATH", help="an existing key file")
    remove.add_argument("key_id", metavar="KEY_ID", help="the key to remove")
    remove.set_defaults(handler=_cmd_keys_remove)
