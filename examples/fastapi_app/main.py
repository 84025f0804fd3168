"""A FastAPI service whose patients' national IDs and notes are encrypted row by row.

Run it with ``uvicorn --app-dir examples/fastapi_app main:app`` (see README.md beside
this file). Settings come from the environment:

- ``DATABASE_URL``: an async SQLAlchemy URL, ``sqlite+aiosqlite:///./fastapi_example.db``
  by default (``postgresql+asyncpg://user@host/db`` works the same);
- ``SQLA_ENVELOPE_KEY_FILE``: the LocalKeyring key file, ``./fastapi_example.keys.json``
  by default, created with a fresh master key on first start if it is missing.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Date, String, Text, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import sqla_envelope
from sqla_envelope import EncryptedType, Encryptor, LocalKeyring

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///./fastapi_example.db")
KEY_FILE = Path(os.environ.get("SQLA_ENVELOPE_KEY_FILE", "fastapi_example.keys.json"))

log = logging.getLogger("fastapi_example")

engine = create_async_engine(DATABASE_URL)
# expire_on_commit=False: a committed object is returned as the response without
# another (implicit, and in asyncio forbidden) load of its attributes.
Session = async_sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    birth_date: Mapped[dt.date] = mapped_column(Date)
    # Encrypted: each value under its own data key. They cannot appear in a WHERE
    # clause; look patients up by id (or keep a blind index column).
    national_id: Mapped[str] = mapped_column(EncryptedType(String(20)))
    notes: Mapped[str | None] = mapped_column(EncryptedType(Text))


def load_keyring(path: Path) -> LocalKeyring:
    """The keyring in ``path``, written there first (mode 0600) if the file is missing.

    Losing this file loses every encrypted value: back it up, or use a KmsKeyring
    in production (docs/kms.md).
    """
    if not path.exists():
        LocalKeyring.generate().to_file(path)
        log.warning("created a new key file %s: back it up", path)
    return LocalKeyring.from_file(path)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """At startup: install the encryptor and create the tables; at shutdown: close."""
    encryptor = Encryptor(load_keyring(KEY_FILE))
    sqla_envelope.configure(encryptor)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield
    await engine.dispose()
    sqla_envelope.configure(None)
    encryptor.close()


app = FastAPI(title="sqla-envelope FastAPI example", lifespan=lifespan)


async def get_session() -> AsyncIterator[AsyncSession]:
    async with Session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


class PatientIn(BaseModel):
    name: str = Field(max_length=100)
    birth_date: dt.date
    national_id: str = Field(max_length=20)
    notes: str | None = None


class PatientOut(PatientIn):
    model_config = ConfigDict(from_attributes=True)

    id: int


@app.post("/patients", status_code=status.HTTP_201_CREATED)
async def create_patient(patient: PatientIn, session: SessionDep) -> PatientOut:
    row = Patient(**patient.model_dump())
    session.add(row)
    await session.commit()  # national_id and notes are encrypted here
    return PatientOut.model_validate(row)


@app.get("/patients")
async def list_patients(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[PatientOut]:
    rows = await session.scalars(select(Patient).order_by(Patient.id).limit(limit).offset(offset))
    return [PatientOut.model_validate(row) for row in rows]


@app.get("/patients/{patient_id}")
async def get_patient(patient_id: int, session: SessionDep) -> PatientOut:
    row = await session.get(Patient, patient_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such patient")
    return PatientOut.model_validate(row)
