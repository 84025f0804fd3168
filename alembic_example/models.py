"""The application's model of ``customers`` once every migration has run.

This is what application code imports; migrations never import it (a migration
must keep working when the model changes later), they declare the few columns
they touch themselves. env.py hands its metadata to autogenerate.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqla_envelope import EncryptedType


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    email: Mapped[str] = mapped_column(sa.String(200))
    # Encrypted in place by 0002: envelopes as base64 text in the former plaintext
    # column. While 0002 runs on a live table, deploy with allow_plaintext=True so
    # rows not yet encrypted still read; remove it once the migration is done.
    national_id: Mapped[str | None] = mapped_column(EncryptedType(sa.String(20), storage="base64"))
    # Added by 0003: a binary column (BLOB / BYTEA) holding envelopes.
    phone: Mapped[str | None] = mapped_column(EncryptedType(sa.String(30)))

    def __repr__(self) -> str:  # never print personal data
        return f"Customer(id={self.id!r})"
