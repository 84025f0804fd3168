"""Create customers: a table that already holds personal data in plaintext.

Where the example starts: an application stored customers, national id numbers
included, before it adopted sqla-envelope.

Revision ID: 0001
Revises:
Create Date: 2025-01-06 09:00:00

"""

from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqla_envelope  # noqa: F401  (script.py.mako imports it in every migration)


# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Fictitious people; customer 4 never gave a national id.
SAMPLE_CUSTOMERS = [
    {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "national_id": "QQ123456C"},
    {"id": 2, "name": "Grace Hopper", "email": "grace@example.com", "national_id": "078-05-1120"},
    {"id": 3, "name": "José Núñez", "email": "jose@example.com", "national_id": "12345678Z"},
    {"id": 4, "name": "Alan Turing", "email": "alan@example.com", "national_id": None},
]


def upgrade() -> None:
    customers = op.create_table(
        "customers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("email", sa.String(200), nullable=False),
        sa.Column("national_id", sa.String(20), nullable=True),
    )
    op.bulk_insert(customers, SAMPLE_CUSTOMERS)


def downgrade() -> None:
    op.drop_table("customers")
