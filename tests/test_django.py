"""sqla_envelope.django, driven through examples/django_app: settings, engines, views, commands.

Django can be set up once per process, so the whole module shares one
configuration: the example's own settings module, imported with its database and
key file moved to a temporary folder, plus a PostgreSQL alias (tests/conftest.py's
server) and an alias no engine can be built for.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest
import sqlalchemy as sa
from conftest import IN_CI, POSTGRES_URL
from django.apps import apps
from django.conf import settings
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.test import Client, override_settings
from django.test.utils import setup_test_environment, teardown_test_environment
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import sqla_envelope
from sqla_envelope import (
    ConfigurationError,
    DecryptionError,
    EncryptedType,
    Encryptor,
    KmsKeyring,
    LocalKeyring,
    get_default_encryptor,
    unpack_envelope,
)
from sqla_envelope.django.conf import parse
from sqla_envelope.django.engine import database_url, dispose_engines, get_engine, session

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "django_app"
ATTRIBUTE = "clinic.models:Patient.national_id"
PG = sa.make_url(POSTGRES_URL)
PG_DATABASE = {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": PG.database or "",
    "USER": PG.username or "",
    "PASSWORD": PG.password or "",
    "HOST": PG.host or "",
    "PORT": str(PG.port or ""),
    # passed to psycopg, less Django's own "pool"
    "OPTIONS": {"application_name": "sqla-envelope-django-test", "pool": False},
}
LEGACY_ROWS = [
    {"id": 1, "ssn": "078-05-1120"},
    {"id": 2, "ssn": None},
    {"id": 3, "ssn": "219-09-9999"},
]
ADA = {"name": "Ada Lovelace", "national_id": "QQ123456C", "birth_date": "1815-12-10"}
PATIENTS = [
    {**ADA, "notes": {"allergies": ["penicillin"]}},
    {"name": "Grace Hopper", "national_id": "078-05-1120"},
    {"name": "Alan Turing", "national_id": "AB987654D", "birth_date": "1912-06-23"},
]


@pytest.fixture(scope="module", autouse=True)
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Django set up with the example's settings; yields the key file."""
    if settings.configured:
        pytest.fail("Django is already configured in this process; test_django.py configures it")
    tmp = tmp_path_factory.mktemp("django_app")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLE))
        patch.setenv("DATABASE_URL", f"sqlite:///{tmp / 'clinic.sqlite3'}")
        patch.setenv("SQLA_ENVELOPE_KEY_FILE", str(tmp / "clinic.keys.json"))
        patch.delenv("KMS_KEY_ID", raising=False)
        example = importlib.import_module("project.settings")
        values = {name: getattr(example, name) for name in dir(example) if name.isupper()}
        del values["LOGGING"]  # the test run keeps pytest's logging
        values["DATABASES"] = {
            **values["DATABASES"],
            "pg": PG_DATABASE,
            "legacy": {"ENGINE": "django.db.backends.oracle", "NAME": "xe"},
        }
        settings.configure(**values)
        django.setup()
        setup_test_environment()
        try:
            call_command("init_db", stdout=io.StringIO())
            yield Path(values["SQLA_ENVELOPE"]["KEY_FILE"])
        finally:
            teardown_test_environment()
            dispose_engines()
            sqla_envelope.configure(None)
            logging.captureWarnings(False)  # django.setup() turned it on


def app() -> Any:
    return apps.get_app_config("sqla_envelope")


@pytest.fixture(autouse=True)
def _installed() -> Iterator[None]:
    """Each test starts with the app's encryptor installed and no patients."""
    sqla_envelope.configure(app().encryptor)
    with get_engine().begin() as conn:
        conn.execute(sa.text("DELETE FROM clinic_patient"))
    yield
    sqla_envelope.configure(None)


@pytest.fixture
def client() -> Client:
    return Client()


def add_patients(client: Client) -> list[int]:
    ids = []
    for patient in PATIENTS:
        response = client.post("/patients/", patient, content_type="application/json")
        assert response.status_code == 201, response.content
        ids.append(response.json()["id"])
    return ids


def stored(column: str) -> dict[int, Any]:
    """What the database holds in a column of clinic_patient, by id."""
    with get_engine().connect() as conn:
        rows = conn.execute(sa.text(f"SELECT id, {column} FROM clinic_patient")).all()
    return {id_: value for id_, value in rows}


def key_refs(column: str = "national_id") -> set[str]:
    return {
        unpack_envelope(value).wrapped_keys[0].key_ref
        for value in stored(column).values()
        if value is not None
    }


def run(command: str, *args: str) -> str:
    out = io.StringIO()
    call_command(command, *args, stdout=out)
    return out.getvalue()


def pg_engine() -> sa.Engine:
    engine = get_engine("pg")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        message = f"PostgreSQL not reachable at {engine.url!r}: {type(exc).__name__}"
        if IN_CI:
            pytest.fail(message + " (CI=true: a missing server is a failure)")
        pytest.skip(message)
    return engine


# -- settings -> encryptor -------------------------------------------------------------


class TestSettings:
    def test_ready_installs_the_encryptor_of_the_key_file(self, project: Path) -> None:
        sqla_envelope.configure(None)
        app().ready()
        encryptor = get_default_encryptor()
        assert encryptor is app().encryptor
        assert isinstance(encryptor.keyring, LocalKeyring)
        assert encryptor.keyring.key_ids == LocalKeyring.from_file(project).key_ids
        assert app().options.database == "default"

    def test_example_creates_its_key_file_owner_only(self, project: Path) -> None:
        assert stat.S_IMODE(project.stat().st_mode) == 0o600

    def test_kms_settings_build_a_kms_keyring_in_bounded_reuse(self) -> None:
        options = parse(
            {
                "KMS_KEY_ID": "alias/clinic",
                "KMS_REGION": "eu-west-1",
                "KMS_ENDPOINT_URL": "http://127.0.0.1:1",
                "KMS_ADDITIONAL_KEY_IDS": ["arn:aws:kms:eu-central-1:111122223333:key/replica"],
                "MODE": "bounded_reuse",
                "MAX_ROWS": 50,
                "MAX_AGE": 60,
                "CACHE_TTL": 30,
                "CACHE_SIZE": 100,
                "CACHE_WRITTEN_KEYS": True,
            }
        )
        encryptor = options.encryptor()
        keyring = encryptor.keyring
        assert isinstance(keyring, KmsKeyring)
        try:
            assert keyring.mode == "bounded_reuse"
            assert (keyring.max_rows, keyring.max_age) == (50, 60.0)
            assert keyring.region_name == "eu-west-1"
            assert keyring.key_ids == (
                "alias/clinic",
                "arn:aws:kms:eu-central-1:111122223333:key/replica",
            )
            assert "cache_ttl=30.0, cache_size=100" in repr(encryptor)
            assert encryptor.cache_written_keys is True
        finally:
            keyring.close()

    def test_kms_key_defaults_to_direct_mode(self) -> None:
        keyring = parse({"KMS_KEY_ID": "alias/clinic", "KMS_REGION": "eu-west-1"}).keyring()
        assert isinstance(keyring, KmsKeyring)
        assert keyring.mode == "direct"
        keyring.close()

    def test_audit_log_writes_a_line_per_data_key(
        self, project: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        encryptor = parse({"KEY_FILE": project, "AUDIT_LOG": True}).encryptor()
        with caplog.at_level(logging.INFO, logger="sqla_envelope.audit"):
            encryptor.encrypt(b"QQ123456C", {"table": "clinic_patient", "column": "national_id"})
        assert [r.getMessage().split()[0] for r in caplog.records] == ["wrap"]
        assert "column=national_id table=clinic_patient" in caplog.records[0].getMessage()

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (None, r"settings\.SQLA_ENVELOPE is not set"),
            ("app.keys.json", r"must be a dict, got a str"),
            ({}, r"exactly one of .*KEY_FILE.* and .*KMS_KEY_ID.*neither is set"),
            ({"KEY_FILE": "k.json", "KMS_KEY_ID": "alias/a"}, r"both are set"),
            ({"KEYFILE": "k.json"}, r"unknown setting SQLA_ENVELOPE\['KEYFILE'\]"),
            ({"KEY_FILE": "k.json", "MODE": "fast"}, r"\['MODE'\] must be one of"),
            ({"KEY_FILE": "k.json", "MODE": "direct"}, r"'direct' is a KMS mode"),
            ({"KMS_KEY_ID": "alias/a", "MODE": "local"}, r"'local' needs .*KEY_FILE"),
            ({"KMS_KEY_ID": "alias/a", "MAX_ROWS": 5}, r"MAX_ROWS'\] only applies with"),
            ({"KEY_FILE": "k.json", "KMS_REGION": "eu-west-1"}, r"only applies with .*KMS_KEY"),
            ({"KEY_FILE": "k.json", "CACHE_TTL": "300"}, r"number of seconds, got a str"),
            ({"KEY_FILE": "k.json", "CACHE_SIZE": True}, r"an integer, got a bool"),
            ({"KEY_FILE": "k.json", "AUDIT_LOG": "yes"}, r"True or False"),
            ({"KEY_FILE": "", "AUDIT_LOG": False}, r"KEY_FILE'\] is empty"),
            ({"KEY_FILE": "k.json", "DATABASE": "replica"}, r"'replica'.*not in .*DATABASES"),
            (
                {"KMS_KEY_ID": "alias/a", "KMS_ADDITIONAL_KEY_IDS": "alias/b"},
                r"KMS_ADDITIONAL_KEY_IDS'\] must be a list of key ids",
            ),
        ],
    )
    def test_bad_settings_fail_at_start(self, value: object, message: str) -> None:
        before = get_default_encryptor()
        with (
            override_settings(SQLA_ENVELOPE=value),
            pytest.raises(ConfigurationError, match=message),
        ):
            app().ready()
        assert get_default_encryptor() is before

    def test_missing_setting_fails_at_start(self) -> None:
        with override_settings():
            del settings.SQLA_ENVELOPE
            with pytest.raises(ConfigurationError, match="is not set"):
                app().ready()

    def test_group_readable_key_file_fails_at_start(self, tmp_path: Path) -> None:
        key_file = tmp_path / "shared.keys.json"
        LocalKeyring.generate().to_file(key_file)
        key_file.chmod(0o644)
        with (
            override_settings(SQLA_ENVELOPE={"KEY_FILE": key_file}),
            pytest.raises(ConfigurationError, match="accessible by group or others"),
        ):
            app().ready()

    def test_missing_key_file_fails_at_start(self, tmp_path: Path) -> None:
        with (
            override_settings(SQLA_ENVELOPE={"KEY_FILE": tmp_path / "none.json"}),
            pytest.raises(ConfigurationError, match="cannot read key file"),
        ):
            app().ready()

    def test_check_passes_on_the_example(self) -> None:
        assert [e.id for e in run_checks() if e.id.startswith("sqla_envelope")] == []

    def test_check_reports_bad_settings(self) -> None:
        with override_settings(SQLA_ENVELOPE={"KEY_FILE": "k.json", "MODE": "direct"}):
            errors = [e for e in run_checks() if e.id.startswith("sqla_envelope")]
            with pytest.raises(SystemCheckError, match=r"sqla_envelope\.E001"):
                call_command("check", stdout=io.StringIO(), stderr=io.StringIO())
        assert [e.id for e in errors] == ["sqla_envelope.E001"]
        assert "is a KMS mode" in errors[0].msg

    def test_check_reports_a_database_without_an_engine(self, project: Path) -> None:
        with override_settings(SQLA_ENVELOPE={"KEY_FILE": project, "DATABASE": "legacy"}):
            errors = [e for e in run_checks() if e.id.startswith("sqla_envelope")]
        assert [e.id for e in errors] == ["sqla_envelope.E002"]
        assert "django.db.backends.oracle" in errors[0].msg


# -- DATABASES -> engines ----------------------------------------------------------------


class TestEngine:
    def test_sqlite_engine_from_databases_is_cached(self) -> None:
        engine = get_engine()
        assert engine is get_engine("default")
        assert engine.url.database == str(settings.DATABASES["default"]["NAME"])
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM clinic_patient")).scalar() == 0

    def test_database_alias_setting_picks_the_default_engine(self, project: Path) -> None:
        with override_settings(SQLA_ENVELOPE={"KEY_FILE": project, "DATABASE": "pg"}):
            assert get_engine() is get_engine("pg")

    def test_postgresql_url_from_databases(self) -> None:
        url = database_url(PG_DATABASE)
        assert url.drivername == "postgresql+psycopg"
        assert url.render_as_string(hide_password=False) == PG.set(
            drivername="postgresql+psycopg"
        ).render_as_string(hide_password=False)

    def test_password_is_escaped_in_the_url(self) -> None:
        url = database_url(
            {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "clinic",
                "USER": "app",
                "PASSWORD": "p@ss:w/rd",
                "HOST": "db.internal",
                "PORT": "6432",
            }
        )
        rendered = url.render_as_string(hide_password=False)
        assert rendered == "postgresql+psycopg://app:p%40ss%3Aw%2Frd@db.internal:6432/clinic"
        assert sa.make_url(rendered).password == "p@ss:w/rd"

    def test_postgresql_without_host_uses_the_socket(self) -> None:
        url = database_url({"ENGINE": "django.db.backends.postgresql", "NAME": "clinic"})
        assert (url.host, url.port, url.username) == (None, None, None)

    def test_mysql_url_uses_pymysql_and_utf8mb4(self) -> None:
        entry: dict[str, Any] = {"ENGINE": "django.db.backends.mysql", "NAME": "clinic"}
        entry.update(USER="app", HOST="127.0.0.1", PORT=3306)
        url = "mysql+pymysql://app@127.0.0.1:3306/clinic?charset=utf8mb4"
        assert database_url(entry).render_as_string() == url
        entry["OPTIONS"] = {"charset": "utf8"}
        assert database_url(entry).query["charset"] == "utf8"

    def test_unsupported_engine_and_alias_are_configuration_errors(self) -> None:
        with pytest.raises(ConfigurationError, match=r"django\.db\.backends\.oracle"):
            get_engine("legacy")
        with pytest.raises(ConfigurationError, match="no database 'replica'"):
            get_engine("replica")

    @pytest.mark.server
    def test_postgresql_engine_from_databases(self) -> None:
        engine = pg_engine()
        with engine.connect() as conn:
            name = conn.execute(sa.text("SHOW application_name")).scalar()
        assert name == "sqla-envelope-django-test"

    @pytest.mark.server
    def test_clinic_models_on_postgresql(self) -> None:
        from clinic.models import Base, Patient

        engine = pg_engine()
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        try:
            with session("pg") as db, db.begin():
                db.add(Patient(name="Ada", national_id="QQ123456C"))
            with engine.connect() as conn:
                raw = conn.execute(sa.text("SELECT national_id FROM clinic_patient")).scalar()
            assert unpack_envelope(raw).wrapped_keys[0].key_ref == app().encryptor.keyring.primary
            with session("pg") as db:
                assert db.scalars(sa.select(Patient.national_id)).one() == "QQ123456C"
        finally:
            Base.metadata.drop_all(engine)


# -- the example's views -----------------------------------------------------------------


class TestViews:
    def test_create_list_and_show(self, client: Client) -> None:
        response = client.post("/patients/", PATIENTS[0], content_type="application/json")
        assert response.status_code == 201
        created = response.json()
        assert response["Location"] == f"/patients/{created['id']}/"
        assert created == {"id": created["id"], **PATIENTS[0]}
        add_patients(client)
        listed = client.get("/patients/").json()["patients"]
        assert [p["name"] for p in listed] == [PATIENTS[0]["name"]] + [p["name"] for p in PATIENTS]
        shown = client.get(f"/patients/{created['id']}/").json()
        assert shown == created

    def test_database_holds_envelopes_only(self, client: Client) -> None:
        ids = add_patients(client)
        primary = app().encryptor.keyring.primary
        for column in ("national_id", "birth_date", "notes"):
            for value in stored(column).values():
                if value is not None:
                    assert unpack_envelope(value).wrapped_keys[0].key_ref == primary
        national_ids = stored("national_id")
        assert b"QQ123456C" not in national_ids[ids[0]]
        assert stored("name")[ids[0]] == "Ada Lovelace"  # not encrypted: listed and sorted

    def test_missing_patient_is_404(self, client: Client) -> None:
        response = client.get("/patients/999999/")
        assert response.status_code == 404
        assert response.json() == {"error": "no patient 999999"}

    @pytest.mark.parametrize(
        "body",
        [
            "not json",
            json.dumps({"national_id": "QQ123456C"}),
            json.dumps({"name": "Ada", "birth_date": "10/12/1815"}),
            json.dumps({"name": "Ada", "national_id": 123}),
        ],
    )
    def test_bad_body_is_400(self, client: Client, body: str) -> None:
        response = client.post("/patients/", body, content_type="application/json")
        assert response.status_code == 400
        assert "error" in response.json()
        assert stored("id") == {}


# -- management commands ---------------------------------------------------------------------


class TestRewrap:
    def test_rewrap_after_keys_add_moves_values_to_the_new_primary(
        self, client: Client, project: Path
    ) -> None:
        ids = add_patients(client)
        old = LocalKeyring.from_file(project)
        rotated = old.with_new_primary()
        rotated.to_file(project)  # as 'sqla-envelope keys add' does
        app().ready()  # the process restarts and reads the key file again
        assert key_refs() == {old.primary}
        out = run("envelope_rewrap", "--attribute", ATTRIBUTE)
        assert "3 examined, 3 changed" in out
        assert key_refs() == {rotated.primary}
        assert key_refs("notes") == {old.primary}  # one column at a time
        assert client.get(f"/patients/{ids[0]}/").json()["national_id"] == "QQ123456C"
        assert "0 changed, 3 already done" in run("envelope_rewrap", "--attribute", ATTRIBUTE)

    def test_rewrap_table_column_to_another_key_file(self, client: Client, tmp_path: Path) -> None:
        add_patients(client)
        before = key_refs()
        target = LocalKeyring.generate("clinic-2026")
        target.to_file(tmp_path / "new.keys.json")
        args = ["--table", "clinic_patient", "--column", "national_id"]
        args += ["--to-key-file", str(tmp_path / "new.keys.json")]
        assert "3 would change" in run("envelope_rewrap", *args, "--dry-run")
        assert key_refs() == before
        assert "3 changed" in run("envelope_rewrap", *args, "--batch-size", "2")
        assert key_refs() == {"clinic-2026"}

    def test_row_under_an_unknown_key_is_reported_or_stops_a_strict_run(
        self, client: Client
    ) -> None:
        ids = add_patients(client)
        foreign = Encryptor(LocalKeyring.generate("foreign"))
        context = {"table": "clinic_patient", "column": "national_id"}
        with get_engine().begin() as conn:
            conn.execute(
                sa.text("UPDATE clinic_patient SET national_id = :v WHERE id = :id"),
                {"v": foreign.encrypt(b"QQ123456C", context), "id": ids[0]},
            )
        out = io.StringIO()
        with pytest.raises(CommandError, match=r"1 row\(s\) of clinic_patient\.national_id"):
            call_command("envelope_rewrap", "--attribute", ATTRIBUTE, stdout=out)
        assert f"failed: row id={ids[0]}: " in out.getvalue()
        assert "'foreign'" in out.getvalue()
        with pytest.raises(CommandError, match="--strict: a row cannot be decrypted"):
            run("envelope_rewrap", "--attribute", ATTRIBUTE, "--strict")

    def test_rewrap_takes_one_target(self) -> None:
        targets = ["--to-key-file", "a.json", "--to-kms-key-id", "alias/b"]
        with pytest.raises(CommandError, match="one key"):
            run("envelope_rewrap", "--attribute", ATTRIBUTE, *targets)


class TestVerify:
    def test_verify_passes_on_intact_rows(self, client: Client) -> None:
        add_patients(client)
        assert "3 examined" in run("envelope_verify", "--attribute", ATTRIBUTE)
        out = run("envelope_verify", "--table", "clinic_patient", "--column", "notes")
        assert "0 failed" in out

    def test_verify_reports_a_tampered_row(self, client: Client) -> None:
        ids = add_patients(client)
        envelope = bytearray(stored("national_id")[ids[1]])
        envelope[-1] ^= 1
        with get_engine().begin() as conn:
            conn.execute(
                sa.text("UPDATE clinic_patient SET national_id = :v WHERE id = :id"),
                {"v": bytes(envelope), "id": ids[1]},
            )
        table_form = ["--table", "clinic_patient", "--column", "national_id"]
        for how in (["--attribute", ATTRIBUTE], table_form):
            out = io.StringIO()
            with pytest.raises(CommandError, match=r"1 row\(s\) of clinic_patient.national_id"):
                call_command("envelope_verify", *how, stdout=out)
            assert "3 examined" in out.getvalue()
            assert f"failed: row id={ids[1]}: " in out.getvalue()
            assert "QQ123456C" not in out.getvalue()

    def test_column_must_be_named(self) -> None:
        with pytest.raises(CommandError, match="name the column"):
            run("envelope_verify")
        with pytest.raises(CommandError, match="'nope' not found"):
            run("envelope_verify", "--attribute", "clinic.models:Patient.nope")
        with pytest.raises(CommandError, match="not an EncryptedType column"):
            run("envelope_verify", "--attribute", "clinic.models:Patient.name")
        with pytest.raises(CommandError, match="drop --table"):
            run("envelope_verify", "--attribute", ATTRIBUTE, "--table", "clinic_patient")
        with pytest.raises(CommandError, match="no table 'nope'"):
            run("envelope_verify", "--table", "nope", "--column", "x")

    @pytest.mark.parametrize(
        ("option", "value"), [("--batch-size", "0"), ("--progress-interval", "-5")]
    )
    def test_bad_run_options_are_refused_before_any_work(self, option: str, value: str) -> None:
        # the same checks as the sqla-envelope command line (cli.maintenance.run_options)
        with pytest.raises(CommandError, match=f"argument {option}: '{value}' is not a"):
            run("envelope_rewrap", "--attribute", ATTRIBUTE, option, value)


class TestEncryptColumn:
    @pytest.fixture
    def legacy(self) -> Iterator[sa.Table]:
        """A table of plaintext to migrate: ssn in plaintext, ssn_encrypted to fill."""
        table = sa.Table(
            "legacy_patient",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("ssn", sa.String(20)),
            sa.Column("ssn_encrypted", sa.LargeBinary),
        )
        engine = get_engine()
        table.create(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), LEGACY_ROWS)
        yield table
        table.drop(engine)

    @staticmethod
    def read(column: str) -> dict[int, Any]:
        view = sa.Table(
            "legacy_patient",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column(column, EncryptedType(sa.String(20))),
        )
        with get_engine().connect() as conn:
            return {id_: value for id_, value in conn.execute(sa.select(view.c.id, view.c[column]))}

    def test_encrypt_from_a_plaintext_column(self, legacy: sa.Table) -> None:
        args = ["--table", "legacy_patient", "--column", "ssn_encrypted", "--from-column", "ssn"]
        assert "2 changed" in run("envelope_encrypt_column", *args)
        assert self.read("ssn_encrypted") == {1: "078-05-1120", 2: None, 3: "219-09-9999"}
        assert "0 changed, 3 already done" in run("envelope_encrypt_column", *args)

    def test_encrypt_in_place(self, legacy: sa.Table) -> None:
        args = ["--table", "legacy_patient", "--column", "ssn"]
        assert "2 would change" in run("envelope_encrypt_column", *args, "--dry-run")
        assert "2 changed" in run("envelope_encrypt_column", *args)
        assert self.read("ssn") == {1: "078-05-1120", 2: None, 3: "219-09-9999"}
        assert "0 failed" in run("envelope_verify", *args)

    def test_encrypted_attribute_is_already_done(self, client: Client) -> None:
        add_patients(client)
        out = run("envelope_encrypt_column", "--attribute", ATTRIBUTE)
        assert "0 changed, 3 already done" in out


# -- tenants: the tenant taken from the row ---------------------------------------------


class TestTenantsInOneTable:
    @pytest.mark.parametrize("alias", ["default", "pg"])
    def test_values_bound_to_their_rows_tenant_through_the_apps_sessions(self, alias: str) -> None:
        """Django's settings give the engine and the keys; the row gives the tenant."""
        if alias == "pg":
            pg_engine()

        class Base(DeclarativeBase):
            pass

        class Invoice(Base):
            __tablename__ = "django_tenant_invoices"
            id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
            tenant_id: Mapped[int]
            iban: Mapped[str] = mapped_column(
                EncryptedType(sa.String(34), context_columns=("tenant_id",))
            )

        engine = get_engine(alias)
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        try:
            with session(alias) as s:
                s.add_all(
                    [
                        Invoice(id=1, tenant_id=7, iban="GB33BUKB20201555555555"),
                        Invoice(id=2, tenant_id=8, iban="GB94BARC10201530093459"),
                    ]
                )
                s.commit()
            with engine.begin() as conn:  # behind the app's back: 2's value into 1's row
                value = conn.execute(
                    sa.text("SELECT iban FROM django_tenant_invoices WHERE id = 2")
                ).scalar()
                conn.execute(
                    sa.text("UPDATE django_tenant_invoices SET iban = :v WHERE id = 1"),
                    {"v": value},
                )
            with session(alias) as s:
                assert s.get(Invoice, 2).iban == "GB94BARC10201530093459"  # type: ignore[union-attr]
                with pytest.raises(DecryptionError, match="tenant_id='7'"):
                    s.get(Invoice, 1)
        finally:
            Base.metadata.drop_all(engine)
