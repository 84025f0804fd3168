"""The ``sqla-envelope`` command line: one module per group of commands.

``main`` builds the parser; ``job`` runs a column's rotation or migration with
progress, resume and one-line errors; ``options`` holds what every group shares.
Nothing below this package prints: the library reports, the commands speak.
"""

from __future__ import annotations

from .main import main

__all__ = ["main"]
