"""A Flask app with tenants in one table: each value bound to the tenant of its own row.

Through Flask-SQLAlchemy's session and the SqlaEnvelope extension, on SQLite,
PostgreSQL and MariaDB: the views never name the tenant to the encryption; it is
taken from the row written or read. A row copied across tenants behind the app's
back answers with an error, never with the other tenant's value.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqla_envelope import DecryptionError, EncryptedType, LocalKeyring
from sqla_envelope.flask import SqlaEnvelope


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Invoice(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "tenant_flask_invoices"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    tenant_id: Mapped[int]
    iban: Mapped[str] = mapped_column(EncryptedType(sa.String(34), context_columns=("tenant_id",)))


def create_app(url: str, key_file: Path) -> Flask:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=url, SQLA_ENVELOPE_KEY_FILE=str(key_file))
    db.init_app(app)
    SqlaEnvelope(app)

    @app.post("/invoices")
    def add() -> Any:
        body = request.get_json()
        db.session.add(Invoice(id=body["id"], tenant_id=body["tenant_id"], iban=body["iban"]))
        db.session.commit()
        return jsonify(ok=True), 201

    @app.get("/tenants/<int:tenant>/invoices")
    def listing(tenant: int) -> Any:
        try:
            rows = db.session.scalars(sa.select(Invoice).where(Invoice.tenant_id == tenant)).all()
        except DecryptionError as exc:
            return jsonify(error=str(exc)), 409
        return jsonify([{"id": r.id, "iban": r.iban} for r in rows])

    return app


@pytest.fixture
def app(engine: sa.Engine, tmp_path: Path) -> Iterator[Flask]:
    key_file = tmp_path / "keys.json"
    LocalKeyring.generate().to_file(key_file)
    built = create_app(engine.url.render_as_string(hide_password=False), key_file)
    with built.app_context():
        db.drop_all()
        db.create_all()
    yield built
    with built.app_context():
        db.drop_all()
        db.engine.dispose()


def test_each_tenants_values_are_bound_to_its_rows(app: Flask) -> None:
    client = app.test_client()
    for body in (
        {"id": 1, "tenant_id": 7, "iban": "GB33BUKB20201555555555"},
        {"id": 2, "tenant_id": 8, "iban": "GB94BARC10201530093459"},
    ):
        assert client.post("/invoices", json=body).status_code == 201
    assert client.get("/tenants/7/invoices").get_json() == [
        {"id": 1, "iban": "GB33BUKB20201555555555"}
    ]
    with app.app_context():
        db.session.execute(
            sa.text(
                "UPDATE tenant_flask_invoices SET iban = (SELECT iban FROM "
                "(SELECT iban FROM tenant_flask_invoices WHERE id = 2) AS other) WHERE id = 1"
            )
        )
        db.session.commit()
    answer = client.get("/tenants/7/invoices")
    assert answer.status_code == 409
    assert "tenant_id='7'" in answer.get_json()["error"]
    assert "GB94" not in answer.get_data(as_text=True)
    assert client.get("/tenants/8/invoices").get_json() == [
        {"id": 2, "iban": "GB94BARC10201530093459"}
    ]
