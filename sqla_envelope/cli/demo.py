"""The ``sqla-envelope demo`` walkthrough: an encrypted table, read back two ways.

Shows a new user, on SQLite and a local key file, what the application reads,
what the database holds, and what each envelope's header says. Prints key ids,
never key bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Date, String, create_engine, func, inspect, select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ..encryptor import Encryptor, configure, get_default_encryptor
from ..envelope import unpack
from ..errors import ConfigurationError, UnsupportedComparisonError
from ..keyrings.local import LocalKeyring
from ..search import BlindIndex, reindex
from ..types import EncryptedType

__all__ = ["Patient", "run"]

# Fictional people; QQ is the prefix the UK reserves for example NI numbers.
_SAMPLE_ROWS = (
    ("Alice Martin", "QQ123456C", dt.date(1985, 4, 12), {"allergies": ["penicillin"]}),
    ("Bruno Okafor", "QQ654321A", dt.date(1972, 11, 3), {"blood_type": "O-"}),
    ("Chen Wei", "QQ246810B", dt.date(1999, 1, 27), {"allergies": [], "smoker": False}),
)
_ENCRYPTED = ("national_id", "date_of_birth", "notes")
_ONE_VALUE_AS_HEX = "SELECT hex(national_id) FROM patients LIMIT 1"
_HEX_PREFIX = 16  # bytes: the fixed header plus a few random ones, so values differ
_STATS_NOTES = {
    "wraps": "data keys generated, one per value written",
    "unwraps": "data keys unwrapped by the keyring, one per value read here",
    "cache_hits": "reads that reused an already unwrapped data key",
    "cache_misses": "reads that had to ask the keyring",
    "cached_keys": "unwrapped data keys held in memory now",
}


class _Base(DeclarativeBase):
    pass


def national_id_key(value: str) -> str:
    """What the blind index of national_id hashes: spaces and case do not matter."""
    return value.replace(" ", "").upper()


class Patient(_Base):
    """The demo's model: ``name`` is a plain column, the other three are encrypted.

    ``national_id_bidx`` is a blind index of ``national_id``: lookups by national id
    work, through a keyed hash, without the database ever seeing the value.
    """

    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    national_id: Mapped[str] = mapped_column(EncryptedType(String(20)))
    national_id_bidx: Mapped[bytes | None] = mapped_column(
        BlindIndex("national_id", normalize=national_id_key)
    )
    date_of_birth: Mapped[dt.date] = mapped_column(EncryptedType(Date))
    notes: Mapped[dict[str, Any]] = mapped_column(EncryptedType(JSON))


class DemoSetting(_Base):
    """The wrapped blind index key: not secret (the key file's master key wraps it)."""

    __tablename__ = "demo_settings"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(1000))


def run(db_path: Path, key_path: Path) -> None:
    """Create or reuse the demo database and key file, then print the walkthrough.

    Raises ConfigurationError when the database holds rows but the key file that
    encrypted them is gone, or the key file is unreadable; OSError when a file
    cannot be written.
    """
    existed = db_path.exists()
    engine = create_engine(URL.create("sqlite", database=str(db_path)))
    try:
        _Base.metadata.create_all(engine)
        with Session(engine) as session:
            existing = session.scalar(select(func.count()).select_from(Patient)) or 0
        keyring, key_note = _load_or_create_keys(key_path, db_path, existing)
        previous = _current_default()
        encryptor = Encryptor(keyring, index_key=_index_key(engine, keyring))
        configure(encryptor)
        try:
            _add_index_to_an_older_demo(engine)
            if existing:
                db_note = f"reused, {existing} rows from an earlier run"
            else:
                with Session(engine) as session, session.begin():
                    session.add_all(
                        Patient(name=n, national_id=i, date_of_birth=d, notes=j)
                        for n, i, d, j in _SAMPLE_ROWS
                    )
                action = "reused" if existed else "created"
                db_note = f"{action}, {len(_SAMPLE_ROWS)} rows inserted into table patients"
            print("sqla-envelope demo: national_id, date_of_birth and notes are encrypted\n")
            print(
                _table([["Key file", str(key_path), key_note], ["Database", str(db_path), db_note]])
            )
            _show_rows(engine, keyring)
            _show_comparison(engine)
            _show_stats(encryptor)
        finally:
            configure(previous)
    finally:
        engine.dispose()
    print(
        "\nNext: look at one stored value with\n"
        f'  sqlite3 {db_path} "{_ONE_VALUE_AS_HEX}"\n'
        "  sqla-envelope inspect <that hex>\n"
        f"or start a key rotation with: sqla-envelope keys add {key_path}"
    )


def _load_or_create_keys(key_path: Path, db_path: Path, existing: int) -> tuple[LocalKeyring, str]:
    if key_path.exists():
        keyring = LocalKeyring.from_file(key_path)
        if len(keyring.key_ids) == 1:
            return keyring, f"loaded, key id {keyring.primary}"
        ids = ", ".join(keyring.key_ids)
        return keyring, f"loaded, key ids {ids} (primary {keyring.primary})"
    if existing:
        raise ConfigurationError(
            f"{db_path} holds {existing} demo rows but their key file {key_path} is gone, "
            f"so they cannot be decrypted; delete {db_path} to start over"
        )
    keyring = LocalKeyring.generate()
    try:
        keyring.to_file(key_path)
    except OSError as exc:  # name the key file, not to_file's temporary file beside it
        raise OSError(exc.errno, f"cannot write key file: {exc.strerror}", str(key_path)) from exc
    return keyring, f"created, key id {keyring.primary} (mode 0600: keep it secret)"


def _index_key(engine: Any, keyring: LocalKeyring) -> str:
    """The demo database's wrapped blind index key, made on the first run."""
    with Session(engine) as session, session.begin():
        setting = session.get(DemoSetting, "index_key")
        if setting is None:
            setting = DemoSetting(name="index_key", value=Encryptor(keyring).new_index_key())
            session.add(setting)
        return setting.value


def _add_index_to_an_older_demo(engine: Any) -> None:
    """A demo database from before blind indexes: add the column, and fill it."""
    columns = {column["name"] for column in inspect(engine).get_columns("patients")}
    if "national_id_bidx" in columns:
        return
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE patients ADD COLUMN national_id_bidx BLOB"))
    reindex(engine, Patient.national_id_bidx)


def _current_default() -> Encryptor | None:
    try:
        return get_default_encryptor()
    except ConfigurationError:
        return None


def _show_rows(engine: Any, keyring: LocalKeyring) -> None:
    with Session(engine) as session:
        patients = session.scalars(select(Patient).order_by(Patient.id)).all()
    with engine.connect() as connection:
        raw = {
            row.id: row
            for row in connection.execute(
                text("SELECT id, name, national_id, date_of_birth, notes FROM patients")
            )
        }
    for patient in patients:
        stored = raw[patient.id]
        print(f"\nPatient {patient.id}")
        reads = [["column", "the application reads", "the database holds"]]
        reads.append(["name", repr(patient.name), f"{stored.name!r}  (plain String column)"])
        headers = [["envelope", "version", "key id", "envelope size", "plaintext size"]]
        for column in _ENCRYPTED:
            blob = bytes(getattr(stored, column))
            shown = blob[:_HEX_PREFIX].hex()
            reads.append([column, _show(getattr(patient, column)), f"{shown}…  {len(blob)} bytes"])
            envelope = unpack(blob)
            refs = ", ".join(
                f"{key.key_ref} ({'primary' if keyring.is_primary(key) else 'old key'})"
                for key in envelope.wrapped_keys
            )
            sizes = [f"{len(blob)} bytes", f"{envelope.plaintext_size} bytes"]
            headers.append([column, str(envelope.version), refs, *sizes])
        print(textwrap.indent(_table(reads), "  "))
        print()
        print(textwrap.indent(_table(headers), "  "))


def _show_comparison(engine: Any) -> None:
    print("\nLooking a patient up by an encrypted column, through its blind index")
    print("  select(Patient).where(Patient.national_id == 'qq 12 34 56 c')")
    with Session(engine) as session:
        found = session.scalars(select(Patient).where(Patient.national_id == "qq 12 34 56 c")).all()
        names = ", ".join(f"{patient.name} (id {patient.id})" for patient in found)
        digest = found[0].national_id_bidx if found else None
    print(f"  finds {names or 'nobody'}: the query compares national_id_bidx, which holds")
    shown = digest[:8].hex() if digest else "NULL"
    print(f"  HMAC-SHA256 of 'QQ123456C' under the index key ({shown}…), never the value")
    print("\nComparisons a hash cannot answer are refused")
    print("  select(Patient).where(Patient.national_id.like('QQ%'))")
    try:
        select(Patient).where(Patient.national_id.like("QQ%"))
    except UnsupportedComparisonError as exc:
        message = f"raises UnsupportedComparisonError: {exc}"
        print(textwrap.fill(message, width=96, initial_indent="  ", subsequent_indent="    "))
    else:  # pragma: no cover - EncryptedType always refuses
        raise AssertionError("LIKE on an encrypted column did not raise")


def _show_stats(encryptor: Encryptor) -> None:
    print("\nEncryptor.stats()")
    rows = [
        [name, str(count), _STATS_NOTES.get(name, "")] for name, count in encryptor.stats().items()
    ]
    print(textwrap.indent(_table(rows), "  "))


def _show(value: object) -> str:
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return repr(value)


def _table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, without trailing spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = (
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )
    return "\n".join(line.rstrip() for line in lines)
