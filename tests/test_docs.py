"""Every Python and shell code block in README.md and docs/ runs, so the examples cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import sqla_envelope

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_run(document: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of one document run in order in one namespace, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    # A real module, because SQLAlchemy resolves Mapped[...] annotations through it.
    module = types.ModuleType(f"doc_{document.stem.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for number, block in enumerate(BLOCK.findall(document.read_text()), start=1):
        code = compile(block, f"{document.name} block {number}", "exec")
        exec(code, module.__dict__)  # our own documentation
    sqla_envelope.configure(None)


FENCE = re.compile(
    r"^(?:<!-- shell: (?P<marker>[^>]*?) -->\n)?(?:<!-- [\w-]+ -->\n)?"
    r"```(?P<lang>python|sh)\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
SHELL_DOCUMENTS = [doc for doc in DOCUMENTS if "```sh\n" in doc.read_text()]
# Every skipped block says why; there are few, and each is run some other way.
MAX_SKIPPED = 18


def shell_blocks(document: Path) -> list[tuple[str, str]]:
    """(marker, body) of each sh block; marker is "", "skip: <reason>" or "env NAME=value"."""
    fences = FENCE.finditer(document.read_text())
    return [(m["marker"] or "", m["body"]) for m in fences if m["lang"] == "sh"]


def test_every_skipped_shell_block_says_why() -> None:
    skipped = [
        (doc.name, marker)
        for doc in SHELL_DOCUMENTS
        for marker, _ in shell_blocks(doc)
        if marker and not marker.startswith("env ")
    ]
    for name, marker in skipped:
        assert re.fullmatch(r"skip: \S.{9,}", marker), f"{name}: {marker!r} gives no reason"
    assert len(skipped) <= MAX_SKIPPED, skipped


@pytest.mark.parametrize("document", SHELL_DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shell_blocks_run(document: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's shell blocks run as written, in page order with its Python blocks.

    All in one empty folder, so a block can use the files (key files, databases)
    that the page made before it, the way a reader following the page would.
    """
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType(f"doc_{document.stem.replace('-', '_')}_sh")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SQLA_ENVELOPE_", "AWS_", "DATABASE_URL"))
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    ran = 0
    try:
        for number, fence in enumerate(FENCE.finditer(document.read_text()), start=1):
            if fence["lang"] == "python":
                exec(
                    compile(fence["body"], f"{document.name} block {number}", "exec"),
                    module.__dict__,
                )
                continue
            marker = fence["marker"] or ""
            if marker.startswith("env "):  # the value the page's own example uses
                name, _, value = marker[len("env ") :].partition("=")
                env[name] = value
            elif marker:
                continue
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", fence["body"]],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            where = f"{document.name} block {number}:\n{fence['body']}"
            assert result.returncode == 0, f"{where}\n{result.stdout}\n{result.stderr}"
            assert "Traceback" not in result.stderr, f"{where}\n{result.stderr}"
            ran += 1
    finally:
        sqla_envelope.configure(None)
    if not ran:
        pytest.skip("every shell block of this page is skipped, each with its reason")
