"""What every group of ``sqla-envelope`` commands shares: the keyring options, the
import of an application's object, and the handling of a user's mistake.

A keyring comes from ``--key-file`` or ``--kms-key-id`` (or their environment
variables), never both: a command must not guess which key protects the rows.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from ..keyrings.base import Keyring
from ..keyrings.kms import KmsKeyring
from ..keyrings.local import LocalKeyring
from .job import UsageError, fail

__all__ = ["handled", "import_attribute", "key_options", "keyring_of"]

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
