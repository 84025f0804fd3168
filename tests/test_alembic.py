"""EncryptedType in Alembic autogenerate: rendered as an importable expression, no encryptor."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.migration import MigrationContext

from sqla_envelope import BlindIndex, EncryptedType, Encryptor, LocalKeyring


def _target_metadata() -> sa.MetaData:
    md = sa.MetaData()
    secret_encryptor = Encryptor(LocalKeyring.generate())
    sa.Table(
        "patients",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ssn", EncryptedType(sa.String(11), secret_encryptor)),
        sa.Column("dob", EncryptedType(sa.Date)),
        sa.Column("notes", EncryptedType(sa.JSON, context={"label": "patient.notes"})),
        sa.Column("token", EncryptedType(sa.Text, storage="base64")),
        sa.Column("amount", EncryptedType(sa.Numeric(10, 2))),
        sa.Column("ssn_bidx", BlindIndex("ssn", normalize=str.strip, bits=64), unique=True),
    )
    return md


def test_autogenerate_renders_an_importable_migration(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with engine.connect() as conn:
        context = MigrationContext.configure(conn)
        migrations = produce_migrations(context, _target_metadata())
    body = render_python_code(migrations.upgrade_ops)
    assert "sqla_envelope.EncryptedType(sa.String(length=11))" in body
    assert "context={'label': 'patient.notes'}" in body
    assert "storage='base64'" in body
    assert "sqla_envelope.BlindIndex('ssn', bits=64)" in body  # normalize= is the model's
    assert "sa.UniqueConstraint('ssn_bidx')" in body
    assert "Encryptor" not in body and "LocalKeyring" not in body

    # Write it out as a migration script would be, import it, and run it.
    script = tmp_path / "0001_patients.py"
    script.write_text(
        "import sqlalchemy as sa\nimport sqla_envelope\nfrom alembic import op\n\n\n"
        "def upgrade():\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\n"
    )
    spec = importlib.util.spec_from_file_location("migration_0001", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    from alembic.operations import Operations

    with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        module.upgrade()
    columns = {c["name"]: c["type"] for c in sa.inspect(engine).get_columns("patients")}
    assert type(columns["ssn"]).__name__ == "BLOB"
    assert type(columns["token"]).__name__ == "TEXT"
    assert type(columns["ssn_bidx"]).__name__ == "BLOB"


def test_rendered_type_rebuilds_an_equivalent_type() -> None:
    original = EncryptedType(sa.Numeric(10, 2), context={"label": "x"}, storage="base64")
    namespace = {"sa": sa, "EncryptedType": EncryptedType}
    rebuilt = eval(repr(original), namespace)  # our own repr, nothing external
    assert isinstance(rebuilt, EncryptedType)
    assert repr(rebuilt) == repr(original)
    assert rebuilt.storage == "base64"
    assert dict(rebuilt.context) == {"label": "x"}


def test_render_item_hook_adds_the_import(tmp_path: Path) -> None:
    from alembic.autogenerate.api import AutogenContext

    from sqla_envelope.migrations import render_item

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"render_item": render_item})
        migrations = produce_migrations(context, _target_metadata())
        autogen = AutogenContext(context, opts={"render_item": render_item})
    body = render_python_code(migrations.upgrade_ops, render_item=render_item)
    assert "sqla_envelope.EncryptedType(sa.Date())" in body
    assert (
        render_item("type", EncryptedType(sa.Date), autogen)
        == "sqla_envelope.EncryptedType(sa.Date())"
    )
    assert "import sqla_envelope" in autogen.imports
    assert render_item("type", sa.Integer(), autogen) is False


def test_render_item_imports_a_decorated_types_module(tmp_path: Path) -> None:
    from alembic.autogenerate.api import AutogenContext
    from sqlalchemy_utils import PhoneNumberType

    from sqla_envelope.migrations import render_item

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with engine.connect() as conn:
        autogen = AutogenContext(MigrationContext.configure(conn))
    rendered = render_item("type", EncryptedType(PhoneNumberType()), autogen)
    assert rendered == (
        "sqla_envelope.EncryptedType("
        "sqlalchemy_utils.types.phone_number.PhoneNumberType(length=20))"
    )
    assert autogen.imports == {"import sqla_envelope", "import sqlalchemy_utils.types.phone_number"}
    namespace: dict[str, object] = {}
    exec("\n".join(sorted(autogen.imports)), namespace)  # the migration's imports
    rebuilt = eval(str(rendered), namespace)
    assert rebuilt._static_cache_key == EncryptedType(PhoneNumberType())._static_cache_key
