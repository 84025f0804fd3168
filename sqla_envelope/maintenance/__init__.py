"""The maintenance commands' engine: walk a table, and change each value safely.

walk.py walks a table in primary-key order, a batch per transaction, and writes
back only what nobody changed meanwhile; rotation.py moves values to other keys
(rewrap, reencrypt) or checks them (verify); columns.py moves a column between
plaintext and envelopes (encrypt_column, decrypt_column). The CLI's column
commands (cli/maintenance.py) and reindex (search/) run on it.
"""

from __future__ import annotations

from .columns import decrypt_column as decrypt_column
from .columns import encrypt_column as encrypt_column
from .rotation import reencrypt as reencrypt
from .rotation import rewrap as rewrap
from .rotation import rewrap_column as rewrap_column
from .rotation import verify as verify
from .walk import ColumnReport as ColumnReport
from .walk import Shard as Shard

__all__ = [
    "ColumnReport",
    "Shard",
    "decrypt_column",
    "encrypt_column",
    "reencrypt",
    "rewrap",
    "rewrap_column",
    "verify",
]
