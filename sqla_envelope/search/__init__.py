"""Searchable encryption: blind indexes of encrypted columns.

``BlindIndex`` is the column type of a companion column holding a keyed hash of
the encrypted column's value; ``sync`` keeps it in step on every write, and the
encrypted type's comparator rewrites ``==``, ``!=``, ``in_`` and ``not_in`` on
the encrypted column to the index (comparisons.py).
"""

from __future__ import annotations

from .blind_index import BlindIndex as BlindIndex
from .blind_index import IndexDigest as IndexDigest
from .lookup import matching as matching
from .planning import plan_bits as plan_bits
from .reindex import reindex as reindex
from .reindex import reindex_column as reindex_column
from .sync import install as _install_sync

__all__ = ["BlindIndex", "IndexDigest", "matching", "plan_bits", "reindex", "reindex_column"]

_install_sync()
