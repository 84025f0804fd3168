"""JSON views over the Patient model, through a SQLAlchemy session on Django's database."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods
from sqlalchemy import select

from sqla_envelope import InvalidValueError
from sqla_envelope.django.engine import session

from .models import Patient


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def _as_json(patient: Patient) -> dict[str, Any]:
    return {
        "id": patient.id,
        "name": patient.name,
        "national_id": patient.national_id,
        "birth_date": patient.birth_date.isoformat() if patient.birth_date else None,
        "notes": patient.notes,
    }


@csrf_exempt  # a JSON API for curl; a browser-facing form would keep CSRF protection
@require_http_methods(["GET", "POST"])
def patients(request: HttpRequest) -> JsonResponse:
    """GET: every patient's id and name. POST: add a patient from a JSON body."""
    if request.method == "POST":
        return _create(request)
    # Only plaintext columns are selected, so listing unwraps no data key.
    with session() as db:
        rows = db.execute(select(Patient.id, Patient.name).order_by(Patient.id)).all()
    return JsonResponse({"patients": [{"id": id_, "name": name} for id_, name in rows]})


def _create(request: HttpRequest) -> JsonResponse:
    try:
        body = json.loads(request.body)
    except ValueError:
        return _error(400, "the body must be JSON")
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
        return _error(400, 'give at least {"name": "..."}')
    national_id, notes = body.get("national_id"), body.get("notes")
    if national_id is not None and not isinstance(national_id, str):
        return _error(400, "national_id must be a string")
    if notes is not None and not isinstance(notes, dict):
        return _error(400, "notes must be a JSON object")
    try:
        birth_date = dt.date.fromisoformat(body["birth_date"]) if body.get("birth_date") else None
    except (TypeError, ValueError):
        return _error(400, "birth_date must be a date, YYYY-MM-DD")
    patient = Patient(
        name=body["name"], national_id=national_id, birth_date=birth_date, notes=notes
    )
    try:
        with session() as db, db.begin():
            db.add(patient)  # encrypted here, at flush: one data key per value
    except InvalidValueError as exc:
        return _error(400, str(exc))
    response = _as_json(patient)
    return JsonResponse(response, status=201, headers={"Location": f"/patients/{patient.id}/"})


@require_GET
def patient(request: HttpRequest, patient_id: int) -> JsonResponse:
    """One patient, decrypted."""
    with session() as db:
        found = db.get(Patient, patient_id)
    if found is None:
        return _error(404, f"no patient {patient_id}")
    return JsonResponse(_as_json(found))
