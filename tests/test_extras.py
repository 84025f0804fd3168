"""Each optional integration names the extra to install when its framework is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [
        ("sqla_envelope.flask", "flask", "sqla-envelope[flask]"),
        ("sqla_envelope.django.apps", "django", "sqla-envelope[django]"),
    ],
)
def test_importing_an_integration_without_its_framework_names_the_extra(
    module: str, framework: str, extra: str
) -> None:
    # A None entry in sys.modules makes "import flask" fail as if it were not installed.
    script = (
        f"import sys; sys.modules[{framework!r}] = None\n"
        "try:\n"
        f"    import {module}\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert f"pip install '{extra}'" in out
