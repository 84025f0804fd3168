"""Encrypt national_id in place: the column keeps its name, its values become envelopes.

1. Widen the column to TEXT: a base64 envelope of a 20-character string is about
   150 characters. TEXT is what EncryptedType(..., storage="base64") stores on
   SQLite, PostgreSQL and MariaDB alike, and plaintext and envelopes can sit side
   by side in it while the migration runs.
2. encrypt_column() walks the table in primary-key order, a batch per savepoint,
   and replaces every value that is not an envelope yet. Running it again skips
   what is done, so an interrupted run is simply run again.

The column is declared here, not imported from the application's model: a
migration must not change meaning when the model changes later.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-06 09:10:00

"""

from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqla_envelope
from sqla_envelope.migrations import decrypt_column, encrypt_column


# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# The table as this migration sees it: the primary key and the column it encrypts.
# Its name and the column's are the encryption context ({"table": "customers",
# "column": "national_id"}), the same the application's model uses.
customers = sa.Table(
    "customers",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("national_id", sqla_envelope.EncryptedType(sa.String(20), storage="base64")),
)


def upgrade() -> None:
    # batch_alter_table: SQLite cannot ALTER a column's type, so Alembic copies the
    # table there; PostgreSQL and MariaDB get a plain ALTER TABLE.
    with op.batch_alter_table("customers") as batch:
        batch.alter_column(
            "national_id",
            existing_type=sa.String(20),
            type_=sa.Text(),
            existing_nullable=True,
        )
    encrypt_column(op.get_bind(), customers.c.national_id)


def downgrade() -> None:
    # Envelopes back to plaintext first, while the column is still wide enough...
    decrypt_column(op.get_bind(), customers.c.national_id)
    # ...then the original type, which plaintext fits again.
    with op.batch_alter_table("customers") as batch:
        batch.alter_column(
            "national_id",
            existing_type=sa.Text(),
            type_=sa.String(20),
            existing_nullable=True,
        )
