"""The column commands of ``sqla-envelope``: rewrap, reencrypt, encrypt/decrypt-column, verify.

Each handler picks its keys and the logical type of its column, then hands the
rotation or migration function to a Job (job.py), which reflects the table,
shows progress and turns the report into the exit code: 0 when every row was
fine, 1 when a row failed or an error stopped the run, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from ..codecs import codec_for
from ..errors import EnvelopeError
from ..keyrings.base import Keyring
from ..maintenance.columns import IN_PLACE_TYPES, decrypt_column, encrypt_column
from ..maintenance.rotation import reencrypt, rewrap_column, verify
from .job import EXAMPLE_URL as _URL
from .job import LOGICAL, PROG, EitherKeyring, Job, UsageError, describe, fail, json_context

__all__ = [
    "ENV_ENDPOINT_URL",
    "ENV_KEY_FILE",
    "ENV_KMS_KEY_ID",
    "ENV_REGION",
    "ENV_URL",
    "add_commands",
    "run_options",
]

# The environment variables the column commands read their options from: the
# names of the Flask configuration keys, so one set of variables serves both.
ENV_URL = "SQLA_ENVELOPE_URL"
ENV_KEY_FILE = "SQLA_ENVELOPE_KEY_FILE"
ENV_KMS_KEY_ID = "SQLA_ENVELOPE_KMS_KEY_ID"
ENV_REGION = "SQLA_ENVELOPE_KMS_REGION"
ENV_ENDPOINT_URL = "SQLA_ENVELOPE_KMS_ENDPOINT_URL"


def _readers(job: Job, command: str) -> Keyring:
    keyring = job.keyring(job.args.key_file, job.args.kms_key_id)
    if keyring is None:
        raise UsageError(
            f"{command} needs the keys that read the values: pass --key-file PATH or "
            "--kms-key-id ID (or both)"
        )
    return keyring


def _target(job: Job, command: str, source: Keyring, *, required: bool) -> Keyring | None:
    target = job.keyring(job.args.to_key_file, job.args.to_kms_key_id)
    if target is None and required:
        raise UsageError(
            f"{command} needs the key to write under: pass --to-key-file PATH (after 'keys "
            "add', the same key file) or --to-kms-key-id ID"
        )
    if isinstance(target or source, EitherKeyring):
        raise UsageError(f"{command} writes under one key: pass --to-key-file or --to-kms-key-id")
    return target


def _logical(job: Job, plain: str | None, default: str) -> object:
    """--logical, else the reflected type of the plaintext column, else ``default``."""
    name = job.args.logical
    if plain is None and name is not None and codec_for(LOGICAL[name]()).name not in IN_PLACE_TYPES:
        raise UsageError(
            f"--logical {name} values cannot be changed in place: pass a plaintext column "
            "(--from-column, --to-column)"
        )
    if name is not None:
        return LOGICAL[name]
    return job.column(plain).type if plain is not None else LOGICAL[default]


# -- the commands -----------------------------------------------------------------------


def _cmd_rewrap(job: Job) -> int:
    source = _readers(job, "rewrap")
    target = _target(job, "rewrap", source, required=True)
    assert target is not None
    job.connect()
    table, col, _ = job.build(sa.LargeBinary, job.encryptor(source))
    return job.run(
        "rewrap", table, col, lambda d: rewrap_column(job.engine, col, target, **job.options(d))
    )


def _cmd_reencrypt(job: Job) -> int:
    source = _readers(job, "reencrypt")
    target = _target(job, "reencrypt", source, required=False)
    to = job.encryptor(target) if target is not None else None
    previous = json_context(job.args.from_context, "--from-context")
    job.connect()
    table, col, _ = job.build(sa.LargeBinary, job.encryptor(source))
    return job.run(
        "reencrypt", table, col,
        lambda d: reencrypt(job.engine, col, to=to, from_context=previous, **job.options(d)),
    )  # fmt: skip


def _cmd_encrypt_column(job: Job) -> int:
    writer = job.keyring(job.args.key_file, job.args.kms_key_id)
    if writer is None or isinstance(writer, EitherKeyring):
        raise UsageError("encrypt-column encrypts under one key: pass --key-file or --kms-key-id")
    old = _sqlalchemy_utils_type(job.args)  # before connecting: a usage error costs nothing
    job.connect()
    source = job.args.from_column
    if old is not None and source is not None:
        raise UsageError("--from-sqlalchemy-utils migrates in place: leave out --from-column")
    logical = _logical(job, source, "string")
    table, col, plain = job.build(logical, job.encryptor(writer), source)
    decode_with = old(logical) if old is not None else None
    return job.run(
        "encrypt-column", table, col,
        lambda d: encrypt_column(
            job.engine, col, source=plain, decode_with=decode_with, **job.options(d)
        ),
    )  # fmt: skip


_UTILS_ENGINES = {"aesgcm": "AesGcmEngine", "fernet": "FernetEngine", "aes": "AesEngine"}
_UTILS_PADDINGS = ("pkcs5", "oneandzeroes", "zeroes", "naive")


def _sqlalchemy_utils_type(args: argparse.Namespace) -> Callable[[Any], Any] | None:
    """--from-sqlalchemy-utils: logical type -> the StringEncryptedType that wrote the column."""
    engine_name = args.from_sqlalchemy_utils
    if engine_name is None:
        if args.old_key_env or args.padding:
            raise UsageError("--old-key-env and --padding go with --from-sqlalchemy-utils")
        return None
    if not args.old_key_env:
        raise UsageError(
            "--from-sqlalchemy-utils needs --old-key-env VAR: the old key is read from the "
            "environment variable VAR, never from the command line"
        )
    key = os.environ.get(args.old_key_env)
    if not key:
        raise UsageError(f"the environment variable {args.old_key_env} (--old-key-env) is not set")
    if (args.padding is None) != (engine_name != "aes"):
        raise UsageError("--padding goes with --from-sqlalchemy-utils aes, and only with it")
    try:
        from sqlalchemy_utils import StringEncryptedType  # type: ignore[import-untyped]
        from sqlalchemy_utils.types.encrypted import encrypted_type  # type: ignore[import-untyped]
    except ImportError:
        raise UsageError(
            "--from-sqlalchemy-utils needs sqlalchemy-utils: "
            "pip install 'sqla-envelope[sqlalchemy-utils]'"
        ) from None
    engine = getattr(encrypted_type, _UTILS_ENGINES[engine_name])
    return lambda logical: StringEncryptedType(logical, key, engine, args.padding)


def _cmd_decrypt_column(job: Job) -> int:
    reader = _readers(job, "decrypt-column")
    job.connect()
    target = job.args.to_column
    table, col, plain = job.build(_logical(job, target, "string"), job.encryptor(reader), target)
    return job.run(
        "decrypt-column", table, col,
        lambda d: decrypt_column(job.engine, col, target=plain, **job.options(d)),
    )  # fmt: skip


def _cmd_verify(job: Job) -> int:
    reader = _readers(job, "verify")
    job.connect()
    table, col, _ = job.build(LOGICAL[job.args.logical or "binary"], job.encryptor(reader))
    return job.run(
        "verify", table, col, lambda d: verify(job.engine, col, **job.options(d, writes=False))
    )


def _handler(command: Callable[[Job], int]) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        try:
            with contextlib.ExitStack() as stack:
                return command(Job(args, stack))
        except UsageError as exc:
            return fail(str(exc), 2)
        except (EnvelopeError, SQLAlchemyError) as exc:
            return fail(describe(exc), 1)

    return handle


# -- the parsers --------------------------------------------------------------------------

_ALL = "--url $URL --table patients --column ssn"
_EXIT = (
    "Exit code 0 when every row was fine, 1 when a row failed or an error stopped the\n"
    "run (the command to resume is printed), 2 for usage errors. Prints primary keys\n"
    "and reasons, never values or keys."
)
_BATCHES = (
    "Works in batches of --batch-size rows, one transaction each, and never overwrites\n"
    "a row the application changed meanwhile (it is counted, and left for the next\n"
    "run). --shard I/N splits the work between N processes; --start-after resumes\n"
    "after a primary key."
)


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    formatter: type[argparse.HelpFormatter],
) -> None:
    """Add the five column commands to the ``sqla-envelope`` parser."""

    def command(
        name: str, handler: Callable[[Job], int], help: str, description: str, epilog: str
    ) -> argparse.ArgumentParser:
        parser = commands.add_parser(
            name, formatter_class=formatter, help=help, description=description, epilog=epilog
        )
        parser.set_defaults(handler=_handler(handler))
        return parser

    rewrap = command(
        "rewrap",
        _cmd_rewrap,
        help="move every value under a new master key (key rotation; format v1 to v2)",
        description="Move every value of a column under the primary key of the target "
        "keyring: each\nis decrypted and sealed again under a fresh data key (format v2 "
        "authenticates the\nwrapped key with the value), and values still in format v1 move "
        "to v2. Safe on a\nlive table. Values already under the target in v2 are skipped, so "
        f"a stopped run\nis simply run again.\n\n{_BATCHES}\n\n{_EXIT}",
        epilog=f"examples:\n  URL={_URL}\n"
        f"  # after '{PROG} keys add app.keys.json': move every value to the new primary key\n"
        f"  {PROG} rewrap {_ALL} \\\n      --key-file app.keys.json --to-key-file app.keys.json\n"
        "  # from a key file to AWS KMS, two processes sharing the table\n"
        f"  {PROG} rewrap {_ALL} --key-file app.keys.json \\\n"
        "      --to-kms-key-id alias/app --region eu-west-1 --shard 0/2\n\n"
        "Once every row is rewrapped, remove the old key.",
    )
    _table_options(rewrap, "the keys that read the current values (the column's encryptor)")
    _target_options(rewrap, "required")
    run_options(rewrap.add_argument_group("the run"), writes=True)

    reencrypt_parser = command(
        "reencrypt",
        _cmd_reencrypt,
        help="decrypt and encrypt every value again, under a fresh data key",
        description="Decrypt every value and encrypt it again under a fresh data key: after a "
        "suspected\ndata-key exposure, or, with --from-context, to move values to the "
        "column's\ncontext after a table or column rename. With --from-context values "
        "already\nunder the current context are skipped; without it every value is "
        "re-encrypted\nagain on each run, so resume a stopped run with --start-after.\n\n"
        f"{_BATCHES}\n\n{_EXIT}",
        epilog=f"examples:\n  URL={_URL}\n"
        "  # the table was renamed from people to patients\n"
        f"  {PROG} reencrypt {_ALL} --key-file app.keys.json \\\n"
        '      --from-context \'{"table": "people", "column": "ssn"}\'\n'
        f"  {PROG} reencrypt {_ALL} --key-file app.keys.json --to-kms-key-id alias/app",
    )
    where = _table_options(reencrypt_parser, "the keys that read the current values")
    _target_options(reencrypt_parser, "default: the keys that read")
    where.add_argument(
        "--from-context",
        metavar="JSON",
        help="the context the values were written with, after a rename, e.g. "
        '\'{"table": "people", "column": "ssn"}\'',
    )
    run_options(reencrypt_parser.add_argument_group("the run"), writes=True)

    encrypt = command(
        "encrypt-column",
        _cmd_encrypt_column,
        help="encrypt the plaintext of a column, in place or from another column",
        description="Encrypt existing plaintext. In place: --column holds plaintext text (use "
        "--storage\nbase64 for a text column) or bytes (a bytea/BLOB column), read as "
        "--logical\n(default string); every value that is not yet an envelope is encrypted. "
        "From\n--from-column: each plaintext value is encrypted into --column (a binary "
        "column,\nor text with --storage base64), with the logical type of the plaintext "
        "column\n(VARCHAR -> String, INTEGER -> Integer, ...), as EncryptedType(that type) "
        f"reads it.\nA stopped run is simply run again.\n\n{_BATCHES}\n\n{_EXIT}",
        epilog=f"examples:\n  URL={_URL}\n"
        f"  {PROG} encrypt-column {_ALL} --storage base64 --key-file app.keys.json\n"
        f"  {PROG} encrypt-column --url $URL --table patients --column ssn_encrypted \\\n"
        "      --from-column ssn --key-file app.keys.json",
    )
    where = _table_options(encrypt, "the key that encrypts")
    where.add_argument(
        "--from-column", metavar="NAME", help="the plaintext column to encrypt into --column"
    )
    _logical_option(where, "string, or the type of --from-column")
    old = encrypt.add_argument_group(
        "from sqlalchemy-utils (in place: the column holds its StringEncryptedType values)"
    )
    old.add_argument(
        "--from-sqlalchemy-utils",
        choices=sorted(_UTILS_ENGINES),
        metavar="ENGINE",
        help="the engine the column was written with: aesgcm, fernet or aes",
    )
    old.add_argument("--padding", choices=_UTILS_PADDINGS, help="the padding of the aes engine")
    old.add_argument(
        "--old-key-env", metavar="VAR", help="the environment variable holding the old key"
    )
    run_options(encrypt.add_argument_group("the run"), writes=True)

    decrypt = command(
        "decrypt-column",
        _cmd_decrypt_column,
        help="decrypt a column back to plaintext, in place or into another column",
        description="The way back out. In place: each envelope in --column is replaced by its "
        "plaintext\n(UTF-8 bytes in a binary column, text with --storage base64); values that "
        "are not\nenvelopes are left alone. With --to-column: each value is decrypted into "
        "that\nplaintext column, read as its type (VARCHAR -> String, INTEGER -> Integer, "
        f"...),\nunless it already holds a value. A stopped run is simply run again.\n\n"
        f"{_BATCHES}\n\n{_EXIT}",
        epilog=f"examples:\n  URL={_URL}\n"
        f"  {PROG} decrypt-column --url $URL --table patients --column ssn_encrypted \\\n"
        "      --to-column ssn --key-file app.keys.json\n"
        f"  {PROG} decrypt-column {_ALL} --storage base64 --key-file app.keys.json --dry-run",
    )
    where = _table_options(decrypt, "the keys that read the values")
    where.add_argument("--to-column", metavar="NAME", help="the plaintext column to decrypt into")
    _logical_option(where, "string, or the type of --to-column")
    run_options(decrypt.add_argument_group("the run"), writes=True)

    check = command(
        "verify",
        _cmd_verify,
        help="decrypt every value and report the rows that fail",
        description="Decrypt every value of a column and list the primary key of each row "
        "that fails\nand why: tampered, wrong context, no key, not an envelope (plaintext), "
        "or, with\n--logical, not a valid value of that type. Reads only.\n\n" + _EXIT,
        epilog=f"examples:\n  URL={_URL}\n  {PROG} verify {_ALL} --key-file app.keys.json\n"
        f"  {PROG} verify --url $URL --table patients --column birth_year --logical integer \\\n"
        "      --kms-key-id alias/app --region eu-west-1",
    )
    where = _table_options(check, "the keys that read the values")
    _logical_option(where, "binary: decrypting is the check")
    run_options(check.add_argument_group("the run"), writes=False)


def _add(group: argparse._ArgumentGroup, flag: str, *, env: str, **options: Any) -> None:
    """An option that defaults to the environment variable ``env`` when it is set.

    So a database password or a key's location need not be on the command line,
    where ``ps`` and the shell history show it. A required option is required
    only when the variable is not set.
    """
    value = os.environ.get(env) or None
    required = options.pop("required", False) and value is None
    options["help"] = f"{options['help']} (or set {env})"
    group.add_argument(flag, default=value, required=required, **options)


def _table_options(parser: argparse.ArgumentParser, keys: str) -> argparse._ArgumentGroup:
    where = parser.add_argument_group("database and column")
    _add(where, "--url", env=ENV_URL, required=True, help=f"SQLAlchemy database URL, e.g. {_URL}")
    where.add_argument("--table", required=True, metavar="NAME", help="the table")
    where.add_argument("--column", required=True, metavar="NAME", help="the encrypted column")
    where.add_argument(
        "--schema",
        metavar="NAME",
        help="the table's schema (default: the connection's); the default context then "
        "names the table SCHEMA.TABLE, as Table(..., schema=) does",
    )
    where.add_argument(
        "--context",
        metavar="JSON",
        help="the column's context= if the application gives one, e.g. "
        '\'{"label": "patient.ssn"}\' (default: {"table": TABLE, "column": COLUMN})',
    )
    where.add_argument(
        "--storage",
        choices=("binary", "base64"),
        default="binary",
        help="the column's storage=: binary envelopes, or base64 text (default: %(default)s)",
    )
    group = parser.add_argument_group("keys", f"Keys: {keys}.")
    _add(group, "--key-file", env=ENV_KEY_FILE, metavar="PATH", help="a LocalKeyring key file")
    _add(
        group,
        "--kms-key-id",
        env=ENV_KMS_KEY_ID,
        metavar="ID",
        help="an AWS KMS key id, ARN or alias",
    )
    _add(group, "--region", env=ENV_REGION, help="the AWS region of KMS keys given without an ARN")
    _add(
        group,
        "--endpoint-url",
        env=ENV_ENDPOINT_URL,
        metavar="URL",
        help="a KMS endpoint (VPC, tests)",
    )
    return where


def _target_options(parser: argparse.ArgumentParser, default: str) -> None:
    group = parser.add_argument_group("target keys", f"The keys to write under ({default}).")
    group.add_argument("--to-key-file", metavar="PATH", help="a LocalKeyring key file")
    group.add_argument("--to-kms-key-id", metavar="ID", help="an AWS KMS key id, ARN or alias")


def _logical_option(group: argparse._ArgumentGroup, default: str) -> None:
    group.add_argument(
        "--logical",
        choices=tuple(LOGICAL),
        metavar="TYPE",
        help=f"the column's logical type, as in EncryptedType(TYPE): {', '.join(LOGICAL)} "
        f"(default: {default})",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, 0 or more")
    return value


def run_options(group: argparse._ArgumentGroup, *, writes: bool, resumable: bool = True) -> None:
    """The options of a run over a column, checked the same here and in manage.py.

    ``writes`` adds --dry-run and --strict; ``resumable`` adds --shard (and, with
    ``writes``, --start-after).
    """
    group.add_argument(
        "--batch-size",
        type=_positive,
        default=1000,
        metavar="N",
        help="rows per transaction (default: %(default)s)",
    )
    if resumable:
        group.add_argument(
            "--shard",
            metavar="I/N",
            help="walk part I of N of an integer primary key's range, so N processes share "
            "a table (0/4 .. 3/4)",
        )
    if writes and resumable:
        group.add_argument(
            "--start-after",
            metavar="PK",
            help="resume after this primary key (comma-separated for a composite key, or a "
            "JSON array), as printed when a run stops",
        )
    if writes:
        group.add_argument(
            "--dry-run", action="store_true", help="count what would change, write nothing"
        )
        group.add_argument(
            "--strict",
            action="store_true",
            help="stop at the first row that cannot be decrypted, instead of reporting it",
        )
    group.add_argument(
        "--progress-interval",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="when not on a terminal, a progress line this often (default: %(default)s)",
    )
