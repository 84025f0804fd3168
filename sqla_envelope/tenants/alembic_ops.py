"""Alembic operations for the branch key table: ``op.create_branch_key_table()`` and its drop.

Import this module once where migrations run (``env.py``, or the migration script)
to register the operations; it needs Alembic, which sqla-envelope itself does not::

    import sqla_envelope.tenants.alembic_ops  # noqa: F401

    def upgrade():
        op.create_branch_key_table()

    def downgrade():
        op.drop_branch_key_table()

The table is created with the columns of ``branch_key_table`` (sql_store.py), so
an offline migration (``alembic upgrade --sql``) renders it as DDL too.
"""

from __future__ import annotations

from typing import Any

from alembic.operations import MigrateOperation, Operations

from .sql_store import branch_key_columns
from .store import DEFAULT_TABLE

__all__ = ["CreateBranchKeyTableOp", "DropBranchKeyTableOp"]


@Operations.register_operation("create_branch_key_table")
class CreateBranchKeyTableOp(MigrateOperation):
    """Create the table TenantKeyring keeps branch keys in."""

    def __init__(self, table: str = DEFAULT_TABLE, schema: str | None = None) -> None:
        self.table = table
        self.schema = schema

    @classmethod
    def create_branch_key_table(
        cls, operations: Operations, table: str = DEFAULT_TABLE, schema: str | None = None
    ) -> Any:
        return operations.invoke(cls(table, schema))

    def reverse(self) -> DropBranchKeyTableOp:
        return DropBranchKeyTableOp(self.table, self.schema)


@Operations.register_operation("drop_branch_key_table")
class DropBranchKeyTableOp(MigrateOperation):
    """Drop the branch key table: every tenant's key, and so every tenant's data, is lost."""

    def __init__(self, table: str = DEFAULT_TABLE, schema: str | None = None) -> None:
        self.table = table
        self.schema = schema

    @classmethod
    def drop_branch_key_table(
        cls, operations: Operations, table: str = DEFAULT_TABLE, schema: str | None = None
    ) -> Any:
        return operations.invoke(cls(table, schema))

    def reverse(self) -> CreateBranchKeyTableOp:
        return CreateBranchKeyTableOp(self.table, self.schema)


@Operations.implementation_for(CreateBranchKeyTableOp)
def _create(operations: Operations, operation: CreateBranchKeyTableOp) -> None:
    operations.create_table(operation.table, *branch_key_columns(), schema=operation.schema)


@Operations.implementation_for(DropBranchKeyTableOp)
def _drop(operations: Operations, operation: DropBranchKeyTableOp) -> None:
    operations.drop_table(operation.table, schema=operation.schema)
