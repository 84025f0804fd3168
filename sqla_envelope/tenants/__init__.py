"""Keys per tenant: a hierarchy of branch keys in SQL, rotation and crypto-shredding.

``TenantKeyring`` picks each value's key by its tenant (``context["tenant_id"]``,
which ``EncryptedType(..., context_columns=("tenant_id",))`` puts there);
docs/tenants.md walks through it, docs/format.md specifies the bytes.
"""

from ..errors import TenantShreddedError as TenantShreddedError
from .keyring import ShredReport as ShredReport
from .keyring import TenantKeyring as TenantKeyring
from .sql_store import SqlBranchKeyStore as SqlBranchKeyStore
from .sql_store import branch_key_table as branch_key_table
from .sql_store import create_branch_key_table as create_branch_key_table
from .store import DEFAULT_TABLE as DEFAULT_TABLE
from .store import BranchKeyRecord as BranchKeyRecord
from .store import BranchKeyStore as BranchKeyStore
from .store import Exposure as Exposure

__all__ = [
    "DEFAULT_TABLE",
    "BranchKeyRecord",
    "BranchKeyStore",
    "Exposure",
    "ShredReport",
    "SqlBranchKeyStore",
    "TenantKeyring",
    "TenantShreddedError",
    "branch_key_table",
    "create_branch_key_table",
]
