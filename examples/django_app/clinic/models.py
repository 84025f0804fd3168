"""The clinic's tables as SQLAlchemy models: EncryptedType is a SQLAlchemy type, not a Django field.

Django imports this module at start, before sqla_envelope.django builds the
encryptor; that is fine, because columns look the encryptor up at first use.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Date, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqla_envelope import EncryptedType


class Base(DeclarativeBase):
    pass


class Patient(Base):
    """A patient: the name in plaintext (to list and sort), the rest encrypted per value."""

    __tablename__ = "clinic_patient"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # Each value under its own data key, bound to clinic_patient.<column>:
    # a value copied into another column or table does not decrypt.
    national_id: Mapped[str | None] = mapped_column(EncryptedType(String(20)))
    birth_date: Mapped[dt.date | None] = mapped_column(EncryptedType(Date))
    notes: Mapped[dict[str, object] | None] = mapped_column(EncryptedType(JSON))
