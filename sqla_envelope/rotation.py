"""Key rotation's public names, where 0.1 and the docs import them from.

The code lives in maintenance/rotation.py; this module keeps
``from sqla_envelope.rotation import verify`` working.
"""

from __future__ import annotations

from .maintenance.rotation import encrypted_column as encrypted_column
from .maintenance.rotation import reencrypt as reencrypt
from .maintenance.rotation import rewrap as rewrap
from .maintenance.rotation import rewrap_column as rewrap_column
from .maintenance.rotation import verify as verify

__all__ = ["encrypted_column", "reencrypt", "rewrap", "rewrap_column", "verify"]
