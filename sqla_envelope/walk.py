"""The walk's report and shard, where 0.1 and the docs import them from.

The code lives in maintenance/walk.py; this module keeps
``from sqla_envelope.walk import ColumnReport, Shard`` working.
"""

from __future__ import annotations

from .maintenance.walk import ColumnReport as ColumnReport
from .maintenance.walk import Shard as Shard

__all__ = ["ColumnReport", "Shard"]
