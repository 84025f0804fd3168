"""A Flask app whose patient records are encrypted value by value with sqla-envelope.

From the repository root (README.md beside this file has the curl examples):

    pip install -e ".[flask]"
    flask --app examples/flask_app/app.py run

SQLite in the instance folder by default, ``DATABASE_URL`` for another database.
Without other settings, a LocalKeyring key file is created in the instance folder
on first run. ``FLASK_``-prefixed environment variables become settings
(``FLASK_SQLA_ENVELOPE_KMS_KEY_ID=alias/app`` to use AWS KMS instead).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request, url_for
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import JSON, Date, String
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.exceptions import HTTPException

from sqla_envelope import BlindIndex, EncryptedType, Encryptor, LocalKeyring
from sqla_envelope.flask import SqlaEnvelope

FIELDS = ("name", "national_id", "date_of_birth", "notes")
MAX_LENGTH = {"name": 100, "national_id": 20}


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
# Created at import time like db; init_app in create_app supplies the keys.
envelope = SqlaEnvelope()


def national_id_key(value: str) -> str:
    """National ids compare without spaces or case: 'qq 12 34 56 c' is QQ123456C."""
    return value.replace(" ", "").upper()


class Patient(db.Model):  # type: ignore[name-defined,misc]
    """``name`` is plain; the other three are encrypted. ``national_id`` can still be
    looked up, and is unique, through its blind index (docs/searching.md)."""

    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_LENGTH["name"]))
    # Encrypted values are not checked by the database (it sees an envelope): the
    # length limit is enforced in parse_patient.
    national_id: Mapped[str] = mapped_column(EncryptedType(String(MAX_LENGTH["national_id"])))
    national_id_bidx: Mapped[bytes] = mapped_column(
        BlindIndex("national_id", normalize=national_id_key), unique=True
    )
    date_of_birth: Mapped[dt.date] = mapped_column(EncryptedType(Date))
    notes: Mapped[dict[str, Any]] = mapped_column(EncryptedType(JSON))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "national_id": self.national_id,
            "date_of_birth": self.date_of_birth.isoformat(),
            "notes": self.notes,
        }


def parse_patient(data: object) -> Patient:
    """A new Patient from a request body; ValueError says what is wrong with it."""
    if not isinstance(data, dict):
        raise ValueError("send a JSON object with Content-Type: application/json")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(unknown)}")
    for field in ("name", "national_id"):
        value = data.get(field)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{field} must be a non-empty string")
        if len(value) > MAX_LENGTH[field]:
            raise ValueError(f"{field} must be at most {MAX_LENGTH[field]} characters")
    born = data.get("date_of_birth")
    try:
        date_of_birth = dt.date.fromisoformat(born) if isinstance(born, str) else None
    except ValueError:
        date_of_birth = None
    if date_of_birth is None:
        raise ValueError("date_of_birth must be a date as YYYY-MM-DD")
    notes = data.get("notes", {})
    if not isinstance(notes, dict):
        raise ValueError("notes must be a JSON object")
    return Patient(
        name=data["name"],
        national_id=data["national_id"],
        date_of_birth=date_of_birth,
        notes=notes,
    )


patients = Blueprint("patients", __name__)


@patients.post("/patients")
def create_patient() -> tuple[Response, int, dict[str, str]] | tuple[Response, int]:
    try:
        patient = parse_patient(request.get_json(silent=True))
    except ValueError as exc:
        return jsonify(error=str(exc)), 400
    db.session.add(patient)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()  # the unique blind index: the database never saw the id
        return jsonify(error="a patient with this national_id exists"), 409
    location = url_for(".show_patient", patient_id=patient.id)
    return jsonify(patient.to_json()), 201, {"Location": location}


@patients.get("/patients")
def list_patients() -> Response:
    """Every patient, or ``?national_id=...``: a lookup through the blind index."""
    query = db.select(Patient).order_by(Patient.id)
    national_id = request.args.get("national_id")
    if national_id is not None:
        query = query.where(Patient.national_id == national_id)
    rows = db.session.scalars(query)
    return jsonify([patient.to_json() for patient in rows])


@patients.get("/patients/<int:patient_id>")
def show_patient(patient_id: int) -> Response:
    return jsonify(db.get_or_404(Patient, patient_id).to_json())


def json_error(exc: HTTPException) -> tuple[Response, int]:
    return jsonify(error=exc.description), exc.code or 500


def ensure_key_file(path: Path, logger: logging.Logger) -> None:
    """Create a key file at ``path`` unless one exists; two processes agree on one key.

    The new file is written aside and hard-linked into place, which fails if the
    file appeared meanwhile: every process then loads the same key, where a plain
    write would let the last of several starting workers replace the others' key.
    """
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    LocalKeyring.generate().to_file(draft)
    try:
        os.link(draft, path)
    except FileExistsError:
        return
    finally:
        draft.unlink()
    logger.warning(
        "created the key file %s: back it up, without it the encrypted columns cannot be read",
        path,
    )


def ensure_index_key(path: Path, key_file: Path) -> str:
    """The wrapped blind index key kept in ``path``, made under ``key_file`` if missing.

    A configured key file that does not exist is left for init_app to report.

    Not secret: the key file's master key wraps it. Written aside and linked into
    place, as the key file is, so starting workers agree on one.
    """
    if not key_file.exists():
        return ""
    if not path.exists():
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        draft.write_text(Encryptor(LocalKeyring.from_file(key_file)).new_index_key())
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The application factory ``flask --app`` finds; ``config`` overrides every default."""
    app = Flask(__name__)
    # A relative SQLite path is in the instance folder (Flask-SQLAlchemy's rule).
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("DATABASE_URL", "sqlite:///patients.db")
    app.config.from_prefixed_env()  # FLASK_SQLA_ENVELOPE_AUDIT_LOG=true and friends
    app.config.update(config or {})
    if not app.config.get("SQLA_ENVELOPE_KEY_FILE") and not app.config.get(
        "SQLA_ENVELOPE_KMS_KEY_ID"
    ):
        # Only this default path is created: a configured key file that is missing
        # is an error, never silently replaced by a new key.
        default = Path(app.instance_path) / "keys.json"
        ensure_key_file(default, app.logger)
        app.config["SQLA_ENVELOPE_KEY_FILE"] = str(default)
    key_file = app.config.get("SQLA_ENVELOPE_KEY_FILE")
    if key_file and not app.config.get("SQLA_ENVELOPE_INDEX_KEY"):
        # The blind index key, wrapped under the key file, kept beside it. With KMS,
        # set SQLA_ENVELOPE_INDEX_KEY (sqla-envelope index-key new --kms-key-id ...).
        key_path = Path(key_file)
        index_key_path = key_path.with_name(f"{key_path.stem}.index-key.txt")
        app.config["SQLA_ENVELOPE_INDEX_KEY"] = ensure_index_key(index_key_path, key_path)
    if app.config.get("SQLA_ENVELOPE_AUDIT_LOG"):
        # Audit lines are INFO records on the sqla_envelope.audit logger: show them.
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    db.init_app(app)
    envelope.init_app(app)
    app.register_blueprint(patients)
    app.register_error_handler(HTTPException, json_error)
    with app.app_context():
        db.create_all()  # a demo; a real app runs migrations
    return app
