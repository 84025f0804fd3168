"""``sqla-envelope tenants`` and the Alembic operations of the branch key table."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations

from sqla_envelope import Encryptor, LocalKeyring
from sqla_envelope.cli import main
from sqla_envelope.tenants import SqlBranchKeyStore, TenantKeyring

MODELS = """
import sqlalchemy as sa
from sqla_envelope import EncryptedType

metadata = sa.MetaData()
notes = sa.Table(
    "notes", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.String(20)),
    sa.Column("body", EncryptedType(sa.String(50), context_columns=("tenant_id",))),
)
"""


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    db = tmp_path / "app.db"
    db.touch()
    key_file = tmp_path / "app.keys.json"
    LocalKeyring.generate("m1").to_file(key_file)
    (tmp_path / "tenant_models.py").write_text(textwrap.dedent(MODELS))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tenant_models", raising=False)
    return f"sqlite:///{db}", key_file


def test_create_rotate_list_and_shred(
    setup: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, key_file = setup
    assert main(["tenants", "create-table", "--url", url]) == 0
    assert main(["tenants", "create-table", "--url", url]) == 0
    assert capsys.readouterr().out == (
        "created table sqla_envelope_branch_keys\nfound table sqla_envelope_branch_keys\n"
    )
    rotate = ["tenants", "rotate", "--url", url, "--key-file", str(key_file)]
    assert main([*rotate, "acme", "globex"]) == 0
    assert main([*rotate, "--all"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-2:] == ["acme: version 2 is active", "globex: version 2 is active"]

    engine = sa.create_engine(url)
    from tenant_models import metadata  # type: ignore[import-not-found]

    metadata.create_all(engine)
    keyring = TenantKeyring(LocalKeyring.from_file(key_file), engine)
    encryptor = Encryptor(keyring)
    for i, tenant in enumerate(("acme", "acme", "globex")):
        sealed = encryptor.encrypt(b"x", {"tenant_id": tenant})
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO notes VALUES (:i, :t, :b)"), {"i": i, "t": tenant, "b": sealed}
            )

    shred = ["tenants", "shred", "acme", "--url", url]
    assert main(shred) == 2
    assert "cannot be undone" in capsys.readouterr().err
    assert main([*shred, "--dry-run", "--metadata", "tenant_models:metadata"]) == 0
    assert capsys.readouterr().out == (
        "tenant 'acme': would destroy branch key versions 1, 2\n"
        "  notes: 2 rows would become unreadable (columns body)\n"
    )
    assert main([*shred, "--yes"]) == 0
    assert main(["tenants", "list", "--url", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("acme\tshredded")
    assert lines[-1] == "globex\tactive version 2 under m1\tlive versions: 1, 2"
    assert main([*rotate, "acme"]) == 1
    assert "was crypto-shredded" in capsys.readouterr().err


def test_user_mistakes_are_one_line_and_exit_2(
    setup: tuple[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, key_file = setup
    monkeypatch.delenv("SQLA_ENVELOPE_URL", raising=False)
    assert main(["tenants", "list"]) == 2
    assert main(["tenants", "rotate", "--url", url, "--key-file", str(key_file)]) == 2
    assert main(["tenants", "shred", "a", "--dry-run", "--url", url, "--metadata", "nope:x"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        "sqla-envelope: error: --url (or SQLA_ENVELOPE_URL) names the database",
        "sqla-envelope: error: name the tenants to rotate, or pass --all",
        "sqla-envelope: error: --metadata: cannot import 'nope': No module named 'nope'",
    ]
    assert main(["tenants", "list", "--url", url, "--table", "missing"]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_alembic_operation_creates_and_drops_the_table(tmp_path: Path) -> None:
    import sqla_envelope.tenants.alembic_ops  # noqa: F401 - registers the operations

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)) as op:
        op.create_branch_key_table()  # type: ignore[attr-defined]
    store = SqlBranchKeyStore(engine)
    keyring = TenantKeyring(LocalKeyring.generate(), store=store)
    Encryptor(keyring).encrypt(b"v", {"tenant_id": "acme"})
    assert [r.tenant for r in store.records()] == ["acme"]
    with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)) as op:
        op.drop_branch_key_table()  # type: ignore[attr-defined]
    assert not sa.inspect(engine).has_table("sqla_envelope_branch_keys")
