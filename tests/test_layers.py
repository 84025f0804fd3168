"""The layers stay one way, checked on the source: an import that crosses one fails here.

The format and the crypto know no SQLAlchemy and no key service, so they can be
read, specified and tested alone; a keyring knows no SQLAlchemy and never imports
the package root (which would import every column type, and cycle); nothing below
the command line prints, because a library that writes to a terminal its caller
did not give it leaks what it writes.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sqla_envelope"

# The envelope format, its ciphers and the digests that blind indexes and
# credstash's format are made of.
FORMAT_AND_CRYPTO = (
    "aead",
    "cache",
    "context",
    "envelope",
    "search.encoding",
    "search.hashing",
    "secrets.credstash_format",
    "tenants.branch",
    "tenants.refs",
)
SQL_AND_SERVICES = {"sqlalchemy", "alembic", "boto3", "botocore", "django", "flask", "fastapi"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield _module_name(path), path


MODULES = dict(_modules())


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, relative ones resolved to absolute names in the package."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.add(node.module or "")
                continue
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(["sqla_envelope", *base, *(node.module or "").split(".")])
            found.add(target.rstrip("."))
    return found


def _outside(imports: set[str]) -> set[str]:
    return {m for m in imports if m.split(".")[0] in SQL_AND_SERVICES}


@pytest.mark.parametrize("name", FORMAT_AND_CRYPTO)
def test_the_format_and_crypto_know_no_sqlalchemy_and_no_key_service(name: str) -> None:
    imports = _imports(name, MODULES[name])
    assert _outside(imports) == set()
    ours = {m.removeprefix("sqla_envelope.") for m in imports if m.startswith("sqla_envelope")}
    allowed = {*FORMAT_AND_CRYPTO, "errors"}
    assert ours <= allowed, f"{name} imports {sorted(ours - allowed)}"


def test_the_errors_module_takes_one_marker_from_sqlalchemy() -> None:
    # Everything imports errors.py. Its one SQLAlchemy import is the marker that
    # keeps SQLAlchemy from wrapping our errors in a StatementError, which would
    # quote the statement's parameters: the plaintext.
    path = MODULES["errors"]
    assert _outside(_imports("errors", path)) == {"sqlalchemy.exc"}
    source = path.read_text(encoding="utf-8")
    assert "from sqlalchemy.exc import DontWrapMixin\n" in source
    assert source.count("sqlalchemy") == source.count("from sqlalchemy.exc import DontWrapMixin")


@pytest.mark.parametrize("name", [name for name in MODULES if name.split(".")[0] == "keyrings"])
def test_a_keyring_knows_no_sqlalchemy_and_not_the_package_root(name: str) -> None:
    imports = _imports(name, MODULES[name])
    assert {m for m in imports if m.split(".")[0] in ("sqlalchemy", "alembic")} == set()
    assert "sqla_envelope" not in imports, "the package root imports every column type"
    ours = {m.removeprefix("sqla_envelope.") for m in imports if m.startswith("sqla_envelope.")}
    columns_and_up = {
        m for m in ours if m.split(".")[0] not in ("keyrings", "errors", "_version")
    } - set(FORMAT_AND_CRYPTO)
    assert columns_and_up == set(), f"{name} imports {sorted(columns_and_up)}"


def _writes_to_the_terminal(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        called = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        if called and node.func.id in ("print", "input"):  # type: ignore[attr-defined]
            lines.append(node.lineno)
        on_sys = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        if on_sys and node.value.id == "sys" and node.attr in ("stdout", "stderr", "stdin"):  # type: ignore[attr-defined]
            lines.append(node.lineno)
    return lines


def test_nothing_below_the_command_line_prints() -> None:
    printing = {
        name: lines
        for name, path in MODULES.items()
        if name.split(".")[0] != "cli" and (lines := _writes_to_the_terminal(path))
    }
    assert printing == {}
    # and the check sees what it looks for: the command line does print
    assert _writes_to_the_terminal(PACKAGE / "cli" / "main.py")
