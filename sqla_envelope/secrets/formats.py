"""The output formats of secrets: json, yaml, csv, and dotenv or env that a shell reads back.

credstash's dotenv output quoted values naively, so a value holding ``'`` or a
newline broke the file; here every value is quoted for a POSIX shell, and names
become valid variable names. Pure functions, no printing: the CLI writes them.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import Mapping

__all__ = ["FORMATS", "UnprintableSecretError", "render", "shell_quote", "text_of", "variable_name"]

FORMATS = ("json", "yaml", "csv", "dotenv", "env")


class UnprintableSecretError(ValueError):
    """A secret that cannot be shown in the format asked for (binary in dotenv, say)."""


def shell_quote(value: str) -> str:
    """``value`` in single quotes, as a POSIX shell reads it back exactly (newlines too)."""
    return "'" + value.replace("'", "'\\''") + "'"


def variable_name(name: str) -> str:
    """A secret's name as an environment variable: upper case, other characters as ``_``."""
    variable = re.sub(r"[^A-Za-z0-9_]", "_", name).upper()
    return "_" + variable if variable[:1].isdigit() else variable


def text_of(name: str, value: str | bytes, *, binary_as_base64: bool) -> str:
    if isinstance(value, str):
        return value
    if binary_as_base64:
        return "base64:" + base64.b64encode(value).decode("ascii")
    raise UnprintableSecretError(
        f"secret {name!r} is binary: read it with -f raw, or as json, yaml or csv"
    )


def render(secrets: Mapping[str, str | bytes], fmt: str) -> str:
    """A map of secrets in one of the output formats, ending with a newline."""
    if fmt in ("dotenv", "env"):
        prefix = "export " if fmt == "env" else ""
        lines = [
            prefix + variable_name(name) + "="
            + shell_quote(text_of(name, value, binary_as_base64=False))
            for name, value in sorted(secrets.items())
        ]  # fmt: skip
        return "".join(line + "\n" for line in lines)
    texts = {name: text_of(name, value, binary_as_base64=True) for name, value in secrets.items()}
    if fmt == "json":
        return json.dumps(texts, sort_keys=True, indent=4, separators=(",", ": ")) + "\n"
    if fmt == "yaml":
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise UnprintableSecretError("-f yaml needs PyYAML: pip install pyyaml") from None
        return str(yaml.safe_dump(texts, default_flow_style=False))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for name in sorted(texts):
        writer.writerow([name, texts[name]])
    return out.getvalue()
