"""Every Python code block in README.md and docs/ runs, so the examples cannot rot."""

from __future__ import annotations

import re
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
