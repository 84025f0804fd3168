"""TenantKeyring over SQLite, PostgreSQL and MariaDB: a branch key per tenant, rotation, shredding.

The branch keys live in a table of the same database as the data, as they would
in an application; the master keyring is local here (KMS: test_tenants_kms.py).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sqla_envelope
from sqla_envelope import (
    ConfigurationError,
    DecryptionError,
    EncryptedType,
    EncryptionContext,
    Encryptor,
    KeyringError,
    LocalKeyring,
    WrappedKey,
    rewrap,
)
from sqla_envelope.envelope import unpack
from sqla_envelope.tenants import (
    BranchKeyRecord,
    SqlBranchKeyStore,
    TenantKeyring,
    TenantShreddedError,
    create_branch_key_table,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingKeyring(LocalKeyring):
    """A LocalKeyring that counts its unwraps: how often the master is asked for a branch key."""

    unwraps = 0

    def unwrap_data_key(self, wrapped_keys: Any, context: Any) -> bytes:
        self.unwraps += 1
        return super().unwrap_data_key(wrapped_keys, context)


@pytest.fixture
def branch_table(engine: sa.Engine) -> Iterator[str]:
    name = f"bk_{uuid.uuid4().hex[:10]}"
    create_branch_key_table(engine, table=name)
    yield name
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {name}"))


@pytest.fixture
def master() -> CountingKeyring:
    return CountingKeyring({"m1": bytes(range(32))})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tenants(
    engine: sa.Engine, branch_table: str, master: LocalKeyring, clock: Clock
) -> TenantKeyring:
    return TenantKeyring(master, engine, table=branch_table, cache_ttl=60, clock=clock)


@pytest.fixture
def patient(
    engine: sa.Engine, base: type[DeclarativeBase], tenants: TenantKeyring
) -> Iterator[type[Any]]:
    class Patient(base):  # type: ignore[valid-type, misc]
        __tablename__ = "tenant_patients"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        tenant_id: Mapped[str] = mapped_column(sa.String(40))
        ssn: Mapped[str] = mapped_column(
            EncryptedType(sa.String(20), context_columns=("tenant_id",))
        )

    base.metadata.drop_all(engine)
    base.metadata.create_all(engine)
    sqla_envelope.configure(Encryptor(tenants))
    yield Patient
    sqla_envelope.configure(None)


def _add(engine: sa.Engine, patient: Any, rows: dict[int, str]) -> None:
    # One flush per tenant: on SQLite a flush holds the database's one write lock,
    # and a tenant's first key is stored on a connection of the keyring's own.
    for tenant in sorted(set(rows.values())):
        with Session(engine) as session:
            session.add_all(
                patient(id=i, tenant_id=t, ssn=f"ssn-{i}") for i, t in rows.items() if t == tenant
            )
            session.commit()


def _refs(engine: sa.Engine, patient: Any) -> dict[int, str]:
    with engine.connect() as conn:  # the stored bytes, as plain SQL sees them
        rows = conn.execute(sa.text("SELECT id, ssn FROM tenant_patients")).all()
    return {row.id: unpack(row.ssn).wrapped_keys[0].key_ref for row in rows}


def _read_all(engine: sa.Engine, patient: Any, tenant: str | None = None) -> dict[int, str]:
    # A fresh Encryptor: no data key cached, the keyring's branch keys still are.
    sqla_envelope.configure(Encryptor(sqla_envelope.get_default_encryptor().keyring))
    query = sa.select(patient)
    if tenant is not None:
        query = query.where(patient.tenant_id == tenant)
    with Session(engine) as session:
        return {p.id: p.ssn for p in session.scalars(query)}


class TestBranchKeys:
    def test_each_tenant_gets_its_own_branch_key_on_first_write(
        self, engine: sa.Engine, patient: Any, tenants: TenantKeyring
    ) -> None:
        _add(engine, patient, {1: "acme", 2: "acme", 3: "globex"})
        assert [(r.tenant, r.version) for r in tenants.store.records()] == [
            ("acme", 1),
            ("globex", 1),
        ]
        assert _refs(engine, patient) == {1: "bk:acme:1", 2: "bk:acme:1", 3: "bk:globex:1"}
        assert _read_all(engine, patient) == {1: "ssn-1", 2: "ssn-2", 3: "ssn-3"}

    def test_master_is_asked_once_per_branch_key_per_ttl(
        self, engine: sa.Engine, patient: Any, master: CountingKeyring, clock: Clock
    ) -> None:
        _add(engine, patient, {i: ("a", "b")[i % 2] for i in range(20)})
        sqla_envelope.get_default_encryptor().clear_cache()  # the branch keys too
        master.unwraps = 0
        assert len(_read_all(engine, patient)) == 20
        assert master.unwraps == 2  # one per tenant's branch key, not one per row
        assert len(_read_all(engine, patient)) == 20
        assert master.unwraps == 2
        clock.now += 61  # past the TTL: each branch key is unwrapped again, once
        assert len(_read_all(engine, patient)) == 20
        assert master.unwraps == 4

    def test_a_data_key_is_made_in_memory_only_under_a_cached_branch_key(
        self, tenants: TenantKeyring, clock: Clock
    ) -> None:
        # What the Encryptor asks first under asyncio, to stay on the event loop.
        acme = EncryptionContext({"tenant_id": "acme"})
        assert tenants.generate_data_key_in_memory(acme) is None  # no key loaded yet
        tenants.generate_data_key(acme)
        made = tenants.generate_data_key_in_memory(acme)
        assert made is not None
        assert tenants.unwrap_data_key(made.wrapped_keys, acme) == made.plaintext
        assert tenants.generate_data_key_in_memory(EncryptionContext({"other": "x"})) is None
        clock.now += 61
        assert tenants.generate_data_key_in_memory(acme) is None  # past the TTL: a load
        tenants.generate_data_key(acme)
        tenants.shred("acme")
        assert tenants.generate_data_key_in_memory(acme) is None
        with pytest.raises(TenantShreddedError):
            tenants.generate_data_key(acme)

    def test_value_copied_to_another_tenants_row_fails(
        self, engine: sa.Engine, patient: Any
    ) -> None:
        _add(engine, patient, {1: "acme", 2: "globex"})
        with engine.begin() as conn:  # an attacker with write access, or a buggy script
            stolen = conn.execute(sa.text("SELECT ssn FROM tenant_patients WHERE id = 1"))
            conn.execute(
                sa.text("UPDATE tenant_patients SET ssn = :v WHERE id = 2"), {"v": stolen.scalar()}
            )
        with pytest.raises(DecryptionError, match="under its row's tenant_id='globex'"):
            _read_all(engine, patient, "globex")

    def test_encrypt_without_the_tenant_in_the_context_fails_closed(
        self, tenants: TenantKeyring
    ) -> None:
        encryptor = Encryptor(tenants)
        with pytest.raises(ConfigurationError, match=r"no 'tenant_id'.*context_columns"):
            encryptor.encrypt(b"secret", {"table": "t"})
        with pytest.raises(ConfigurationError, match="tenant_id is empty text"):
            encryptor.encrypt(b"secret", {"table": "t", "tenant_id": ""})
        assert list(tenants.store.records()) == []

    def test_static_context_naming_a_tenant_works_without_row_binding(
        self, tenants: TenantKeyring
    ) -> None:
        encryptor = Encryptor(tenants)
        sealed = encryptor.encrypt(b"secret", {"tenant_id": "t1", "table": "t"})
        assert unpack(sealed).wrapped_keys[0].key_ref == "bk:t1:1"
        assert Encryptor(tenants).decrypt(sealed, {"tenant_id": "t1", "table": "t"}) == b"secret"
        with pytest.raises(DecryptionError):
            Encryptor(tenants).decrypt(sealed, {"tenant_id": "t2", "table": "t"})

    def test_tenant_ids_of_any_text_round_trip_through_key_references(
        self, tenants: TenantKeyring
    ) -> None:
        encryptor = Encryptor(tenants)
        for tenant in ("a:b/c", "Zürich AG", "42", "ACME", "acme"):
            sealed = encryptor.encrypt(b"v", {"tenant_id": tenant})
            assert Encryptor(tenants).decrypt(sealed, {"tenant_id": tenant}) == b"v"
        assert len(tenants.tenants()) == 5  # "ACME" and "acme" are two tenants

    def test_tenants_that_differ_in_trailing_spaces_never_share_a_key(
        self, engine: sa.Engine, tenants: TenantKeyring
    ) -> None:
        # MySQL and MariaDB compare text ignoring trailing spaces, utf8mb4_bin too:
        # "acme " found acme's branch key, so its values were wrapped under it and
        # never read again, and shred("acme ") destroyed acme's keys.
        encryptor = Encryptor(tenants)
        sealed = encryptor.encrypt(b"v", {"tenant_id": "acme"})
        padded = engine.dialect.name in ("mysql", "mariadb")  # the table cannot hold both
        if padded:
            with pytest.raises(KeyringError, match="trailing spaces"):
                encryptor.encrypt(b"w", {"tenant_id": "acme "})
            with pytest.raises(KeyringError):
                tenants.shred("acme ")
        else:
            other = encryptor.encrypt(b"w", {"tenant_id": "acme "})
            assert Encryptor(tenants).decrypt(other, {"tenant_id": "acme "}) == b"w"
            tenants.shred("acme ")
        Encryptor(tenants).clear_cache()
        assert Encryptor(tenants).decrypt(sealed, {"tenant_id": "acme"}) == b"v"
        assert [(r.tenant, r.destroyed) for r in tenants.store.records("acme")] == [("acme", False)]

    def test_a_tenant_too_long_for_a_key_reference_stores_nothing(
        self, tenants: TenantKeyring
    ) -> None:
        with pytest.raises(ConfigurationError, match="too long for a key reference"):
            Encryptor(tenants).encrypt(b"v", {"tenant_id": "é" * 100})

    def test_branch_key_table_missing_raises_keyring_error_and_stores_nothing(
        self, engine: sa.Engine, patient: Any, master: LocalKeyring
    ) -> None:
        sqla_envelope.configure(Encryptor(TenantKeyring(master, engine, table="no_such_table")))
        with Session(engine) as session:
            session.add(patient(id=1, tenant_id="acme", ssn="123"))
            with pytest.raises(KeyringError, match="no_such_table"):
                session.commit()
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(patient)).scalar() == 0

    def test_two_writers_creating_a_tenants_first_key_end_with_one_version(
        self, engine: sa.Engine, branch_table: str, master: LocalKeyring
    ) -> None:
        writers = 4
        barrier = threading.Barrier(writers)

        class RacingStore(SqlBranchKeyStore):
            def insert(self, record: BranchKeyRecord) -> bool:
                barrier.wait(timeout=30)  # every writer has generated a key; now all insert
                return super().insert(record)

        # A keyring each, as separate processes would have: no cache in common.
        keyrings = [
            TenantKeyring(master, store=RacingStore(engine, branch_table)) for _ in range(writers)
        ]
        sealed: list[bytes] = []
        errors: list[BaseException] = []

        def write(keyring: TenantKeyring) -> None:
            try:
                sealed.append(Encryptor(keyring).encrypt(b"first", {"tenant_id": "new"}))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(k,)) for k in keyrings]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        records = list(keyrings[0].store.records("new"))
        assert [(r.version, r.destroyed) for r in records] == [(1, False)]
        reader = Encryptor(TenantKeyring(master, engine, table=branch_table))
        assert [reader.decrypt(s, {"tenant_id": "new"}) for s in sealed] == [b"first"] * writers


class TestRotation:
    def test_rotate_makes_a_new_active_version_and_old_values_still_read(
        self, engine: sa.Engine, patient: Any, tenants: TenantKeyring
    ) -> None:
        _add(engine, patient, {1: "acme", 2: "globex"})
        assert tenants.rotate("acme") == 2
        _add(engine, patient, {3: "acme"})
        assert _refs(engine, patient) == {1: "bk:acme:1", 2: "bk:globex:1", 3: "bk:acme:2"}
        assert _read_all(engine, patient) == {1: "ssn-1", 2: "ssn-2", 3: "ssn-3"}

    def test_rewrap_moves_only_rows_not_under_their_tenants_active_version(
        self, engine: sa.Engine, patient: Any, tenants: TenantKeyring
    ) -> None:
        _add(engine, patient, {1: "acme", 2: "acme", 3: "globex"})
        tenants.rotate("acme")
        encryptor = sqla_envelope.get_default_encryptor()
        assert rewrap(engine, patient.ssn, encryptor) == 2
        assert _refs(engine, patient) == {1: "bk:acme:2", 2: "bk:acme:2", 3: "bk:globex:1"}
        assert rewrap(engine, patient.ssn, encryptor) == 0  # done: a second run changes nothing
        assert _read_all(engine, patient) == {1: "ssn-1", 2: "ssn-2", 3: "ssn-3"}

    def test_rotate_all_skips_shredded_tenants(self, tenants: TenantKeyring) -> None:
        encryptor = Encryptor(tenants)
        for tenant in ("a", "b", "c"):
            encryptor.encrypt(b"v", {"tenant_id": tenant})
        tenants.shred("b")
        assert tenants.rotate_all() == {"a": 2, "c": 2}
        with pytest.raises(TenantShreddedError):
            tenants.rotate("b")

    def test_rewrap_tenant_keys_moves_each_branch_key_once_under_a_new_master(
        self, engine: sa.Engine, patient: Any, tenants: TenantKeyring, branch_table: str
    ) -> None:
        _add(engine, patient, {i: ("a", "b", "c")[i % 3] for i in range(30)})
        tenants.rotate("a")
        new_master = CountingKeyring({"m2": bytes(range(1, 33))})
        assert tenants.rewrap_tenant_keys(to=new_master) == 4  # a:1, a:2, b:1, c:1
        assert tenants.rewrap_tenant_keys(to=new_master) == 0
        with engine.connect() as conn:
            masters = conn.execute(sa.text(f"SELECT DISTINCT master_key FROM {branch_table}"))
            assert masters.scalars().all() == ["m2"]
        sqla_envelope.configure(Encryptor(TenantKeyring(new_master, engine, table=branch_table)))
        assert len(_read_all(engine, patient)) == 30
        assert new_master.unwraps == 3  # the versions in use: a:1, b:1, c:1


class TestShredding:
    def test_shredded_tenant_raises_its_error_while_others_read(
        self, engine: sa.Engine, patient: Any, tenants: TenantKeyring
    ) -> None:
        _add(engine, patient, {1: "acme", 2: "globex", 3: "acme"})
        assert _read_all(engine, patient, "acme") == {1: "ssn-1", 3: "ssn-3"}  # cached now
        report = tenants.shred("acme")
        assert (report.versions, report.dry_run) == ((1,), False)
        with pytest.raises(TenantShreddedError, match="'acme' was crypto-shredded") as raised:
            _read_all(engine, patient, "acme")
        assert raised.value.tenant == "acme"
        assert _read_all(engine, patient, "globex") == {2: "ssn-2"}

    def test_shred_leaves_a_tombstone_and_no_key_material(
        self, engine: sa.Engine, patient: Any, tenants: TenantKeyring, branch_table: str
    ) -> None:
        _add(engine, patient, {1: "acme"})
        tenants.rotate("acme")
        assert tenants.shred("acme").versions == (1, 2)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(f"SELECT version, wrapped, master_key FROM {branch_table} ORDER BY version")
            ).all()
        assert [tuple(r) for r in rows] == [(1, None, None), (2, None, None), (3, None, None)]
        assert tenants.shred("acme").versions == ()  # again: nothing left to destroy

    def test_writes_for_a_shredded_tenant_store_nothing_unless_allowed(
        self, engine: sa.Engine, patient: Any, tenants: TenantKeyring
    ) -> None:
        _add(engine, patient, {1: "acme"})
        tenants.shred("acme")
        with Session(engine) as session:
            session.add(patient(id=2, tenant_id="acme", ssn="new"))
            with pytest.raises(TenantShreddedError) as raised:
                session.commit()
            assert raised.value.tenant == "acme"
        with pytest.raises(TenantShreddedError):
            Encryptor(tenants).encrypt(b"v", {"tenant_id": "acme"})
        assert [r.version for r in tenants.store.records("acme") if not r.destroyed] == []
        with pytest.raises(TenantShreddedError):
            tenants.create("acme")
        assert tenants.create("acme", after_shred=True) == 3
        _add(engine, patient, {2: "acme"})
        with Session(engine) as session:
            assert session.scalars(sa.select(patient).where(patient.id == 2)).one().ssn == "ssn-2"
            with pytest.raises(TenantShreddedError):
                session.scalars(sa.select(patient).where(patient.id == 1)).one()

    def test_another_process_keeps_a_cached_key_until_its_ttl_then_fails(
        self,
        engine: sa.Engine,
        patient: Any,
        master: LocalKeyring,
        branch_table: str,
        clock: Clock,
    ) -> None:
        _add(engine, patient, {1: "acme"})
        other = TenantKeyring(master, engine, table=branch_table, cache_ttl=60, clock=clock)
        sealed = Encryptor(other).encrypt(b"v", {"tenant_id": "acme"})
        sqla_envelope.get_default_encryptor().keyring.shred("acme")  # type: ignore[attr-defined]
        assert Encryptor(other).decrypt(sealed, {"tenant_id": "acme"}) == b"v"  # within its TTL
        clock.now += 61
        with pytest.raises(TenantShreddedError):
            Encryptor(other).decrypt(sealed, {"tenant_id": "acme"})

    def test_dry_run_lists_what_would_become_unreadable_and_changes_nothing(
        self,
        engine: sa.Engine,
        patient: Any,
        tenants: TenantKeyring,
        base: type[DeclarativeBase],
    ) -> None:
        class Note(base):  # type: ignore[valid-type, misc]
            __tablename__ = "tenant_notes"
            id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
            tenant_id: Mapped[str] = mapped_column(sa.String(40))
            body: Mapped[str] = mapped_column(
                EncryptedType(sa.String(50), context_columns=("tenant_id",))
            )
            title: Mapped[str] = mapped_column(
                EncryptedType(sa.String(50), context_columns=("tenant_id",))
            )

        base.metadata.create_all(engine)
        _add(engine, patient, {1: "acme", 2: "acme", 3: "globex"})
        report = tenants.shred("acme", dry_run=True, metadata=base.metadata)
        assert report.dry_run and report.versions == (1,)
        assert {(e.table, e.columns, e.rows) for e in report.exposure} == {
            ("tenant_patients", ("ssn",), 2),
            ("tenant_notes", ("body", "title"), 0),
        }
        assert _read_all(engine, patient, "acme") == {1: "ssn-1", 2: "ssn-2"}

    def test_exposure_counts_only_rows_whose_tenant_text_is_the_tenants(
        self, engine: sa.Engine, metadata: sa.MetaData
    ) -> None:
        # A value's context holds its row's tenant as text: tenant "07" has no row
        # in an INTEGER column (7 reads as "7"), nor "acme " the rows of "acme".
        from sqla_envelope.tenants.exposure import tenant_exposure

        for name, tenant_type, stored in (
            ("by_int", sa.Integer, 7),
            ("by_text", sa.String(9), "acme"),
        ):
            table = sa.Table(
                f"tenant_exposure_{name}",
                metadata,
                sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                sa.Column("tenant_id", tenant_type),
                sa.Column("v", EncryptedType(sa.String(9), context_columns=("tenant_id",))),
            )
            metadata.create_all(engine)
            with engine.begin() as conn:
                conn.execute(table.insert(), {"id": 1, "tenant_id": stored, "v": None})

        def rows(tenant: str) -> dict[str, int]:
            found = tenant_exposure(engine, metadata, "tenant_id", tenant)
            return {exposure.table: exposure.rows for exposure in found}

        assert rows("7") == {"tenant_exposure_by_int": 1, "tenant_exposure_by_text": 0}
        assert rows("acme") == {"tenant_exposure_by_int": 0, "tenant_exposure_by_text": 1}
        for other in ("07", "-0", "+7", "acme ", "ACME"):
            assert set(rows(other).values()) == {0}, other


class TestOwnKeyringPerTenant:
    def test_factory_gives_each_tenant_its_keyring_and_names_it_in_the_key_reference(
        self, engine: sa.Engine, base: type[DeclarativeBase]
    ) -> None:
        own = {t: LocalKeyring.generate(f"{t}-key") for t in ("acme", "globex")}
        asked: list[str] = []

        def factory(tenant: str) -> LocalKeyring:
            asked.append(tenant)
            return own[tenant]

        keyring = TenantKeyring(factory=factory)
        encryptor = Encryptor(keyring)
        sealed = encryptor.encrypt(b"v", {"tenant_id": "acme"})
        assert unpack(sealed).wrapped_keys[0].key_ref == "tenant:acme:acme-key"
        inner = WrappedKey("acme-key", unpack(sealed).wrapped_keys[0].blob)
        context = EncryptionContext({"tenant_id": "acme"})
        assert len(own["acme"].unwrap_data_key([inner], context)) == 32  # the tenant's own key
        assert Encryptor(keyring).decrypt(sealed, {"tenant_id": "acme"}) == b"v"
        # each tenant's keyring may be a key service: under asyncio, always off the loop
        assert keyring.generate_data_key_in_memory(context) is None
        with pytest.raises(DecryptionError, match="written for tenant 'acme'"):
            Encryptor(keyring).decrypt(sealed, {"tenant_id": "globex"})
        assert keyring.is_primary(unpack(sealed).wrapped_keys[0])
        own["acme"] = own["acme"].with_new_primary("acme-2026")
        assert TenantKeyring(factory=factory).is_primary(unpack(sealed).wrapped_keys[0]) is False
        assert asked == ["acme", "acme"]
        with pytest.raises(ConfigurationError, match="keeps no branch keys"):
            keyring.shred("acme")


@pytest.mark.parametrize("module", ["keyring", "branch", "refs", "store", "routing"])
def test_keyring_modules_import_neither_sqlalchemy_nor_the_package_root(module: str) -> None:
    import ast
    from pathlib import Path

    path = Path(sqla_envelope.__file__).parent / "tenants" / f"{module}.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "sqlalchemy" for a in node.names)
            assert not any(a.name == "sqla_envelope" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.col_offset == 0:
            assert (node.module or "").split(".")[0] not in ("sqlalchemy", "sqla_envelope")
            assert not (node.level == 2 and node.module is None), "the package root"
