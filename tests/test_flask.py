"""The Flask extension and the example app, through Flask's test client on three databases."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from flask_sqlalchemy import SQLAlchemy
from kms_server import (  # noqa: F401 - pytest fixtures
    REGION,
    Key,
    aws_env_fixture,
    kms_endpoint_fixture,
    make_key_fixture,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import sqla_envelope
from sqla_envelope import (
    ConfigurationError,
    EncryptedType,
    Encryptor,
    KmsKeyring,
    LocalKeyring,
    unpack_envelope,
)
from sqla_envelope.flask import SqlaEnvelope, get_encryptor

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flask_app" / "app.py"
ALICE = {
    "name": "Alice Martin",
    "national_id": "QQ123456C",
    "date_of_birth": "1985-04-12",
    "notes": {"allergies": ["penicillin"]},
}
KMS_ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"

# conftest's autouse fixture calls sqla_envelope.configure(None) after every test.


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    """examples/flask_app/app.py, imported once: its models are declared before any app."""
    name = "flask_app_example"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Flask finds its root path through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[name]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "app.keys.json"
    LocalKeyring.generate().to_file(path)
    return path


@pytest.fixture
def make_app(example: ModuleType, key_file: Path) -> Iterator[Callable[..., Flask]]:
    """create_app with a key file; every app's tables are dropped after the test."""
    apps: list[Flask] = []

    def make(url: str, **config: Any) -> Flask:
        settings = {"SQLALCHEMY_DATABASE_URI": url, "SQLA_ENVELOPE_KEY_FILE": str(key_file)}
        app: Flask = example.create_app({**settings, **config, "TESTING": True})
        apps.append(app)
        return app

    yield make
    for app in apps:
        with app.app_context():
            example.db.drop_all()
            example.db.engine.dispose()


@pytest.fixture
def app(make_app: Callable[..., Flask], engine: sa.Engine) -> Flask:
    return make_app(engine.url.render_as_string(hide_password=False))


@pytest.fixture
def sqlite_app(make_app: Callable[..., Flask], tmp_path: Path) -> Flask:
    return make_app(f"sqlite:///{tmp_path / 'app.db'}")


def create(client: FlaskClient, body: dict[str, Any] = ALICE) -> dict[str, Any]:
    response = client.post("/patients", json=body)
    assert response.status_code == 201, response.get_json()
    created: dict[str, Any] = response.get_json()
    assert response.headers["Location"] == f"/patients/{created['id']}"
    return created


def raw_row(app: Flask, example: ModuleType, patient_id: int) -> sa.Row[Any]:
    query = sa.text("SELECT name, national_id, date_of_birth, notes FROM patients WHERE id = :id")
    with app.app_context():
        return example.db.session.execute(query, {"id": patient_id}).one()


class TestExampleApp:
    def test_create_list_and_show(self, app: Flask) -> None:
        client = app.test_client()
        created = create(client)
        assert created == {**ALICE, "id": created["id"]}
        assert client.get("/patients").get_json() == [created]
        assert client.get(f"/patients/{created['id']}").get_json() == created

    def test_lookup_by_encrypted_national_id_and_no_duplicates(self, app: Flask) -> None:
        client = app.test_client()
        alice = create(client)
        bob = create(client, {**ALICE, "name": "Bob", "national_id": "QQ654321A"})
        assert client.get("/patients?national_id=qq 12 34 56 c").get_json() == [alice]
        assert client.get("/patients?national_id=QQ654321A").get_json() == [bob]
        assert client.get("/patients?national_id=QQ000000X").get_json() == []
        duplicate = client.post("/patients", json={**ALICE, "national_id": "qq123456c"})
        assert duplicate.status_code == 409
        assert len(client.get("/patients").get_json()) == 2

    def test_database_holds_envelopes_not_plaintext(
        self, app: Flask, example: ModuleType, key_file: Path
    ) -> None:
        created = create(app.test_client())
        row = raw_row(app, example, created["id"])
        assert row.name == "Alice Martin"  # the plain column, for contrast
        primary = LocalKeyring.from_file(key_file).primary
        for stored, plaintext in zip(
            row[1:], (b"QQ123456C", b"1985-04-12", b"penicillin"), strict=True
        ):
            stored = bytes(stored)
            assert plaintext not in stored
            assert unpack_envelope(stored).wrapped_keys[0].key_ref == primary

    def test_restarted_app_reads_earlier_rows(
        self, make_app: Callable[..., Flask], tmp_path: Path
    ) -> None:
        url = f"sqlite:///{tmp_path / 'app.db'}"
        created = create(make_app(url).test_client())
        sqla_envelope.configure(None)
        restarted = make_app(url)  # the same key file, a new Encryptor with a cold cache
        assert restarted.test_client().get(f"/patients/{created['id']}").get_json() == created

    def test_missing_patient_is_a_json_404(self, sqlite_app: Flask) -> None:
        response = sqlite_app.test_client().get("/patients/999")
        assert response.status_code == 404
        assert "error" in response.get_json()

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            pytest.param([ALICE], "JSON object", id="a-list"),
            pytest.param({**ALICE, "ssn": "1"}, "unknown fields: ssn", id="unknown-field"),
            pytest.param(
                {k: v for k, v in ALICE.items() if k != "name"}, "name must be", id="no-name"
            ),
            pytest.param({**ALICE, "national_id": 123}, "national_id must be", id="id-int"),
            pytest.param({**ALICE, "national_id": "Q" * 21}, "at most 20", id="id-too-long"),
            pytest.param({**ALICE, "date_of_birth": "12/04/1985"}, "YYYY-MM-DD", id="bad-date"),
            pytest.param({**ALICE, "date_of_birth": None}, "YYYY-MM-DD", id="no-date"),
            pytest.param({**ALICE, "notes": ["x"]}, "notes must be", id="notes-list"),
        ],
    )
    def test_bad_input_is_a_400(self, sqlite_app: Flask, body: object, message: str) -> None:
        client = sqlite_app.test_client()
        response = client.post("/patients", json=body)
        assert response.status_code == 400
        assert message in response.get_json()["error"]
        assert client.get("/patients").get_json() == []

    def test_body_that_is_not_json_is_a_400(self, sqlite_app: Flask) -> None:
        response = sqlite_app.test_client().post("/patients", data="name=Alice")
        assert response.status_code == 400
        assert "JSON object" in response.get_json()["error"]

    def test_audit_log_writes_a_line_per_key(
        self, make_app: Callable[..., Flask], tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        app = make_app(f"sqlite:///{tmp_path / 'app.db'}", SQLA_ENVELOPE_AUDIT_LOG=True)
        caplog.set_level(logging.INFO, logger="sqla_envelope.audit")
        create(app.test_client())
        lines = [r.getMessage() for r in caplog.records if r.name == "sqla_envelope.audit"]
        assert any(line.startswith("wrap column=national_id table=patients key=") for line in lines)
        assert "QQ123456C" not in caplog.text

    def test_no_audit_log_by_default(
        self, sqlite_app: Flask, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="sqla_envelope.audit")
        create(sqlite_app.test_client())
        assert not [r for r in caplog.records if r.name == "sqla_envelope.audit"]

    def test_configured_key_file_that_is_missing_is_not_created(
        self, example: ModuleType, tmp_path: Path
    ) -> None:
        missing = tmp_path / "missing.keys.json"
        config = {
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'app.db'}",
            "SQLA_ENVELOPE_KEY_FILE": str(missing),
        }
        with pytest.raises(ConfigurationError, match="cannot read key file"):
            example.create_app(config)
        assert not missing.exists()

    def test_default_key_file_is_created_once(
        self, example: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = tmp_path / "instance" / "keys.json"
        example.ensure_key_file(path, logging.getLogger("example"))
        created = LocalKeyring.from_file(path)  # also checks the owner-only mode
        assert "created the key file" in caplog.text
        example.ensure_key_file(path, logging.getLogger("example"))
        assert LocalKeyring.from_file(path).primary == created.primary
        assert list(path.parent.iterdir()) == [path]  # no draft left beside it

    @pytest.mark.usefixtures("aws_env")
    def test_kms_key_from_config(
        self,
        make_app: Callable[..., Flask],
        make_key: Callable[..., Key],
        kms_endpoint: str,
        example: ModuleType,
        tmp_path: Path,
    ) -> None:
        key = make_key()
        with KmsKeyring(key.alias_name, region_name=REGION, endpoint_url=kms_endpoint) as kms:
            index_key = Encryptor(kms).new_index_key()  # wrapped by KMS
        app = make_app(
            f"sqlite:///{tmp_path / 'app.db'}",
            SQLA_ENVELOPE_INDEX_KEY=index_key,
            SQLA_ENVELOPE_KEY_FILE=None,  # None means unset
            SQLA_ENVELOPE_KMS_KEY_ID=key.alias_name,
            SQLA_ENVELOPE_KMS_REGION=REGION,
            SQLA_ENVELOPE_KMS_ENDPOINT_URL=kms_endpoint,
            SQLA_ENVELOPE_MODE="bounded_reuse",
            SQLA_ENVELOPE_MAX_ROWS=100,
        )
        keyring = get_encryptor(app).keyring
        try:
            created = create(app.test_client())
            get_encryptor(app).clear_cache()
            assert app.test_client().get(f"/patients/{created['id']}").get_json() == created
            stored = bytes(raw_row(app, example, created["id"]).national_id)
            assert unpack_envelope(stored).wrapped_keys[0].key_ref == key.arn
            lookup = app.test_client().get("/patients?national_id=QQ123456C").get_json()
            assert lookup == [created]
        finally:
            assert isinstance(keyring, KmsKeyring)
            keyring.close()


def bare_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    return app


KEY_FILE = "<the test's key file>"


class TestConfiguration:
    def test_key_file_configures_the_default_encryptor(self, key_file: Path) -> None:
        app = bare_app(
            SQLA_ENVELOPE_KEY_FILE=str(key_file),
            SQLA_ENVELOPE_CACHE_TTL=60,
            SQLA_ENVELOPE_CACHE_SIZE=10,
            SQLA_ENVELOPE_CACHE_WRITTEN_KEYS=True,
            SQLA_ENVELOPE_KMS_KEY_ID=None,  # None means unset
        )
        ext = SqlaEnvelope(app)
        encryptor = app.extensions["sqla_envelope"]
        assert isinstance(encryptor, Encryptor)
        assert sqla_envelope.get_default_encryptor() is encryptor
        assert get_encryptor(app) is encryptor
        assert ext.encryptor is encryptor
        assert isinstance(encryptor.keyring, LocalKeyring)
        assert encryptor.keyring.primary == LocalKeyring.from_file(key_file).primary
        assert "cache_ttl=60" in repr(encryptor)
        assert "cache_size=10" in repr(encryptor)
        assert encryptor.cache_written_keys is True

    def test_kms_key_id_defaults_to_direct_mode(self) -> None:
        app = bare_app(
            SQLA_ENVELOPE_KMS_KEY_ID="alias/app",
            SQLA_ENVELOPE_KMS_REGION="eu-west-1",
            # A closed port: building the keyring makes no call.
            SQLA_ENVELOPE_KMS_ENDPOINT_URL="http://127.0.0.1:9",
            SQLA_ENVELOPE_KMS_ADDITIONAL_KEY_IDS=[KMS_ARN],
        )
        SqlaEnvelope().init_app(app)
        keyring = get_encryptor(app).keyring
        assert isinstance(keyring, KmsKeyring)
        assert keyring.mode == "direct"
        assert keyring.region_name == "eu-west-1"
        assert keyring.key_ids == ("alias/app", KMS_ARN)
        keyring.close()

    def test_bounded_reuse_takes_its_limits(self) -> None:
        app = bare_app(
            SQLA_ENVELOPE_KMS_KEY_ID=KMS_ARN,
            SQLA_ENVELOPE_MODE="bounded_reuse",
            SQLA_ENVELOPE_MAX_ROWS=50,
            SQLA_ENVELOPE_MAX_AGE=60,
        )
        SqlaEnvelope().init_app(app)
        keyring = get_encryptor(app).keyring
        assert isinstance(keyring, KmsKeyring)
        assert (keyring.mode, keyring.max_rows, keyring.max_age) == ("bounded_reuse", 50, 60.0)
        keyring.close()

    @pytest.mark.parametrize(
        ("config", "message"),
        [
            pytest.param({}, "neither is set", id="no-key"),
            pytest.param({"KEY_FILE": KEY_FILE, "KMS_KEY_ID": KMS_ARN}, "both are set", id="both"),
            pytest.param({"KEY_FILE": KEY_FILE, "MODE": "fast"}, "must be one of", id="bad-mode"),
            pytest.param({"KEY_FILE": KEY_FILE, "MODE": "direct"}, "is a KMS mode", id="file-kms"),
            pytest.param({"KMS_KEY_ID": KMS_ARN, "MODE": "local"}, "'local' needs", id="kms-local"),
            pytest.param(
                {"KEY_FILE": KEY_FILE, "MAX_ROWS": 10},
                "SQLA_ENVELOPE_MAX_ROWS only applies with SQLA_ENVELOPE_MODE 'bounded_reuse'",
                id="max-rows-local",
            ),
            pytest.param(
                {"KMS_KEY_ID": KMS_ARN, "MAX_AGE": 60}, "MAX_AGE only applies", id="age-direct"
            ),
            pytest.param(
                {"KEY_FILE": KEY_FILE, "KMS_REGION": "eu-west-1"},
                "SQLA_ENVELOPE_KMS_REGION only applies with SQLA_ENVELOPE_KMS_KEY_ID",
                id="region-local",
            ),
            pytest.param(
                {"KEY_FILE": KEY_FILE, "AUDITLOG": True},
                "unknown setting SQLA_ENVELOPE_AUDITLOG",
                id="typo",
            ),
            pytest.param(
                {"KEY_FILE": KEY_FILE, "CACHE_TTL": "300"},
                "CACHE_TTL must be a number of seconds, got a str",
                id="ttl-str",
            ),
            pytest.param(
                {"KEY_FILE": KEY_FILE, "CACHE_SIZE": True}, "must be an integer", id="size-bool"
            ),
            pytest.param(
                {"KEY_FILE": KEY_FILE, "CACHE_WRITTEN_KEYS": "yes"},
                "CACHE_WRITTEN_KEYS must be True or False, got a str",
                id="written-str",
            ),
            pytest.param(
                {"KEY_FILE": KEY_FILE, "CACHE_TTL": -1}, "must not be negative", id="ttl-neg"
            ),
            pytest.param(
                {"KEY_FILE": KEY_FILE, "AUDIT_LOG": "yes"}, "True or False", id="audit-str"
            ),
            pytest.param({"KEY_FILE": ""}, "KEY_FILE is empty", id="empty-path"),
            pytest.param(
                {"KEY_FILE": "/nonexistent/app.keys.json"}, "cannot read key file", id="missing"
            ),
            pytest.param(
                {"KMS_KEY_ID": KMS_ARN, "KMS_ADDITIONAL_KEY_IDS": KMS_ARN},
                "must be a list",
                id="additional-str",
            ),
            pytest.param(
                {"KMS_KEY_ID": KMS_ARN, "MODE": "bounded_reuse", "MAX_ROWS": 0},
                "max_rows must be >= 1",
                id="max-rows-0",
            ),
        ],
    )
    def test_bad_configuration_fails_at_init_app(
        self, key_file: Path, config: dict[str, Any], message: str
    ) -> None:
        app = bare_app(
            **{
                f"SQLA_ENVELOPE_{name}": str(key_file) if value == KEY_FILE else value
                for name, value in config.items()
            }
        )
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            SqlaEnvelope().init_app(app)
        assert "sqla_envelope" not in app.extensions
        with pytest.raises(ConfigurationError):
            sqla_envelope.get_default_encryptor()

    @pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
    def test_key_file_readable_by_others_fails(self, key_file: Path) -> None:
        key_file.chmod(0o644)
        with pytest.raises(ConfigurationError, match="accessible by group or others"):
            SqlaEnvelope(bare_app(SQLA_ENVELOPE_KEY_FILE=str(key_file)))

    def test_encryptor_before_init_app_fails(self) -> None:
        with pytest.raises(ConfigurationError, match="init_app"):
            SqlaEnvelope().encryptor  # noqa: B018
        with pytest.raises(ConfigurationError, match="init_app"):
            get_encryptor(bare_app())

    def test_each_init_app_replaces_the_process_default(self, tmp_path: Path) -> None:
        apps = []
        for name in ("first", "second"):
            path = tmp_path / f"{name}.keys.json"
            LocalKeyring.generate().to_file(path)
            apps.append(bare_app(SQLA_ENVELOPE_KEY_FILE=str(path)))
        first, second = apps
        ext = SqlaEnvelope()
        ext.init_app(first)
        assert sqla_envelope.get_default_encryptor() is get_encryptor(first)
        ext.init_app(second)
        assert sqla_envelope.get_default_encryptor() is get_encryptor(second)
        assert get_encryptor(first) is not get_encryptor(second)
        with first.app_context():
            assert ext.encryptor is get_encryptor(first)
        assert ext.encryptor is get_encryptor(second)  # no app context: the last one

    def test_import_sqla_envelope_does_not_import_flask(self) -> None:
        code = "import sys, sqla_envelope; sys.exit('flask' in sys.modules)"
        assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_models_declared_before_init_app_work(engine: sa.Engine, key_file: Path) -> None:
    class Base(DeclarativeBase):
        pass

    db = SQLAlchemy(model_class=Base)
    ext = SqlaEnvelope()

    class Note(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "flask_factory_notes"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str] = mapped_column(EncryptedType(sa.Text))

    def create_app() -> Flask:
        app = bare_app(
            SQLALCHEMY_DATABASE_URI=engine.url.render_as_string(hide_password=False),
            SQLA_ENVELOPE_KEY_FILE=str(key_file),
        )
        db.init_app(app)
        ext.init_app(app)
        return app

    app = create_app()
    with app.app_context():
        db.create_all()
        try:
            db.session.add(Note(body="remember the milk"))
            db.session.commit()
            db.session.expunge_all()
            assert db.session.scalars(db.select(Note)).one().body == "remember the milk"
            stored = db.session.execute(sa.text("SELECT body FROM flask_factory_notes")).scalar()
            assert b"milk" not in bytes(stored)
        finally:
            db.session.rollback()
            db.drop_all()
            db.engine.dispose()
