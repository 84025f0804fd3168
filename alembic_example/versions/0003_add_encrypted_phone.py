"""Add an encrypted phone column, filled from a plaintext column.

The "into a new column" path, for data that must move to a new encrypted column
(any logical type, not only strings; binary storage, BLOB / BYTEA):

1. add the encrypted column ``phone``;
2. the plaintext source: here a temporary ``phone_plain`` column filled with the
   sample customers' numbers, in a real application the existing plaintext column;
3. encrypt_column(..., source=phone_plain) encrypts every source value into
   ``phone`` (batched, resumable, skips rows already done);
4. drop the plaintext column.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-06 09:20:00

"""

from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqla_envelope
from sqla_envelope.migrations import encrypt_column


# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Customer 3 has no phone number: NULL stays NULL.
SAMPLE_PHONES = {1: "+44 20 7946 0018", 2: "+1 202 555 0143", 3: None, 4: "+44 161 496 0753"}

customers = sa.Table(
    "customers",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("phone", sqla_envelope.EncryptedType(sa.String(30))),
    sa.Column("phone_plain", sa.String(30)),
)


def upgrade() -> None:
    op.add_column(
        "customers",
        sa.Column("phone", sqla_envelope.EncryptedType(sa.String(30)), nullable=True),
    )
    op.add_column("customers", sa.Column("phone_plain", sa.String(30), nullable=True))
    bind = op.get_bind()
    bind.execute(
        sa.update(customers)
        .where(customers.c.id == sa.bindparam("customer_id"))
        .values(phone_plain=sa.bindparam("plain")),
        [{"customer_id": key, "plain": phone} for key, phone in SAMPLE_PHONES.items()],
    )
    encrypt_column(bind, customers.c.phone, source=customers.c.phone_plain)
    with op.batch_alter_table("customers") as batch:  # SQLite: table copy
        batch.drop_column("phone_plain")


def downgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("phone")
