"""rewrap, reencrypt and verify on every database: batched, idempotent, resumable, safe."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import sqla_envelope
from sqla_envelope import (
    ConfigurationError,
    DecryptionError,
    EncryptedType,
    Encryptor,
    KeyringError,
    LocalKeyring,
    rewrap,
    unpack_envelope,
)
from sqla_envelope.context import EncryptionContext
from sqla_envelope.keyrings.base import DataKey
from sqla_envelope.maintenance import Shard, reencrypt, rewrap_column, verify
from sqla_envelope.migrations import decrypt_column, encrypt_column

ROWS = 57  # not a multiple of the batch sizes used below


@pytest.fixture
def old_keys() -> LocalKeyring:
    return LocalKeyring.generate("old")


@pytest.fixture
def people(engine: sa.Engine, old_keys: LocalKeyring) -> Iterator[sa.Table]:
    sqla_envelope.configure(Encryptor(old_keys))
    md = sa.MetaData()
    table = sa.Table(
        "rot_people",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ssn", EncryptedType(sa.String(20))),
    )
    md.drop_all(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [{"id": i, "ssn": f"ssn-{i}"} for i in range(ROWS)] + [{"id": ROWS, "ssn": None}],
        )
    yield table
    md.drop_all(engine)


def _raw(engine: sa.Engine, table: sa.Table) -> dict[int, bytes | None]:
    view = sa.table(table.name, sa.column("id"), sa.column("ssn", sa.LargeBinary))
    with engine.connect() as conn:
        return {
            r.id: (bytes(r.ssn) if r.ssn is not None else None)
            for r in conn.execute(sa.select(view))
        }


def _values(engine: sa.Engine, table: sa.Table) -> dict[int, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(table.c.id, table.c.ssn)).all())


def test_rewrap_moves_every_value_to_the_new_key_under_a_fresh_data_key(
    engine: sa.Engine, people: sa.Table, old_keys: LocalKeyring
) -> None:
    before = _raw(engine, people)
    new_keys = old_keys.with_new_primary("new")
    assert rewrap(engine, people.c.ssn, new_keys, batch_size=10) == ROWS
    after = _raw(engine, people)
    for row_id, stored in after.items():
        if stored is None:
            assert before[row_id] is None
            continue
        old, new = unpack_envelope(before[row_id]), unpack_envelope(stored)  # type: ignore[arg-type]
        assert [k.key_ref for k in new.wrapped_keys] == ["new"]
        assert new.version == 2
        # v2 authenticates the wrapped keys with the value: sealed anew, new data key
        assert new.commitment != old.commitment
        assert new.nonce != old.nonce
    only_new = LocalKeyring({"new": new_keys._keys["new"]})
    sqla_envelope.configure(Encryptor(only_new))
    assert _values(engine, people) == {**{i: f"ssn-{i}" for i in range(ROWS)}, ROWS: None}


def test_rewrap_is_idempotent_and_takes_an_encryptor(
    engine: sa.Engine, people: sa.Table, old_keys: LocalKeyring
) -> None:
    new_keys = old_keys.with_new_primary("new")
    assert rewrap(engine, people.c.ssn, Encryptor(new_keys), batch_size=7) == ROWS
    report = rewrap_column(engine, people.c.ssn, new_keys, batch_size=7)
    assert (report.changed, report.skipped, report.examined) == (0, ROWS + 1, ROWS + 1)


def test_rewrap_resumes_after_an_interruption(
    engine: sa.Engine, people: sa.Table, old_keys: LocalKeyring
) -> None:
    new_keys = old_keys.with_new_primary("new")
    seen: list[int] = []

    def stop_after_two_batches(report: Any) -> None:
        seen.append(report.examined)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rewrap_column(
            engine, people.c.ssn, new_keys, batch_size=10, progress=stop_after_two_batches
        )
    refs = [unpack_envelope(v).wrapped_keys[0].key_ref for v in _raw(engine, people).values() if v]
    assert refs.count("new") == 20  # two batches committed, the rest untouched
    assert rewrap(engine, people.c.ssn, new_keys, batch_size=10) == ROWS - 20


def test_rewrap_keeps_writes_made_between_its_batches(
    engine: sa.Engine, people: sa.Table, old_keys: LocalKeyring
) -> None:
    new_keys = old_keys.with_new_primary("new")
    written: dict[int, str] = {}
    context = people.c.ssn.type.encryption_context()
    marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"

    def app_writes_between_read_and_update(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        # Just before the walker's guarded UPDATE of a batch, the application
        # changes a row of that batch, which the walker has already read.
        if not statement.lstrip().upper().startswith("UPDATE") or len(written) == 2:
            return
        row_id = 2 if not written else 7
        envelope = Encryptor(old_keys).encrypt(f"changed-{row_id}".encode(), context)
        cursor.connection.cursor().execute(
            f"UPDATE rot_people SET ssn = {marker} WHERE id = {marker}", (envelope, row_id)
        )
        written[row_id] = f"changed-{row_id}"

    sa.event.listen(engine, "before_cursor_execute", app_writes_between_read_and_update)
    try:
        report = rewrap_column(engine, people.c.ssn, new_keys, batch_size=5)
    finally:
        sa.event.remove(engine, "before_cursor_execute", app_writes_between_read_and_update)
    sqla_envelope.configure(Encryptor(new_keys))
    values = _values(engine, people)
    assert written == {2: "changed-2", 7: "changed-7"}
    for row_id, value in written.items():
        assert values[row_id] == value
    assert report.conflicts == 2  # both rows were left alone, not overwritten
    assert report.changed + report.skipped + report.conflicts == ROWS + 1
    assert rewrap(engine, people.c.ssn, new_keys) == 2  # a second run finishes the job
    assert all(
        unpack_envelope(v).wrapped_keys[0].key_ref == "new"
        for v in _raw(engine, people).values()
        if v
    )


def test_concurrent_writers_during_rewrap_lose_nothing(
    engine: sa.Engine, people: sa.Table, old_keys: LocalKeyring
) -> None:
    new_keys = old_keys.with_new_primary("new")
    stop = threading.Event()
    last: dict[int, str] = {}
    errors: list[BaseException] = []
    # The writer writes once for each value the rewrap seals, while it works on
    # its batch. Writing as fast as it could, it held SQLite's write lock nearly
    # all the time: on a loaded machine the rewrap's SELECT waited past SQLite's
    # 5 s busy timeout and failed with "database is locked".
    turns = threading.Semaphore(0)
    seal = new_keys.generate_data_key

    def generate_data_key(context: EncryptionContext) -> DataKey:
        turns.release()
        return seal(context)

    new_keys.generate_data_key = generate_data_key  # type: ignore[method-assign]

    def writer() -> None:
        n = 0
        try:
            while turns.acquire() and not stop.is_set():
                row_id = n % ROWS
                value = f"w{n}"
                with engine.begin() as conn:
                    conn.execute(people.update().where(people.c.id == row_id).values(ssn=value))
                last[row_id] = value
                n += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        rewrap(engine, people.c.ssn, new_keys, batch_size=3)
    finally:
        stop.set()
        turns.release()
        thread.join()
    assert not errors
    sqla_envelope.configure(Encryptor(new_keys))
    values = _values(engine, people)
    for row_id, value in last.items():
        assert values[row_id] == value


def test_rewrap_with_a_composite_primary_key(engine: sa.Engine, old_keys: LocalKeyring) -> None:
    sqla_envelope.configure(Encryptor(old_keys))
    md = sa.MetaData()
    table = sa.Table(
        "rot_tenants",
        md,
        sa.Column("tenant", sa.String(10), primary_key=True),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("token", EncryptedType(sa.String)),
    )
    md.drop_all(engine)
    md.create_all(engine)
    try:
        rows = [
            {"tenant": t, "id": i, "token": f"{t}-{i}"} for t in ("a", "b", "c") for i in range(9)
        ]
        with engine.begin() as conn:
            conn.execute(table.insert(), rows)
        new_keys = old_keys.with_new_primary("new")
        assert rewrap(engine, table.c.token, new_keys, batch_size=4) == 27
        sqla_envelope.configure(Encryptor(new_keys))
        with engine.connect() as conn:
            got = conn.execute(sa.select(table.c.tenant, table.c.id, table.c.token)).all()
        assert sorted(tuple(r) for r in got) == sorted(
            (r["tenant"], r["id"], r["token"]) for r in rows
        )
    finally:
        md.drop_all(engine)


def test_an_undecryptable_row_is_reported_or_stops_the_run(
    engine: sa.Engine, people: sa.Table, old_keys: LocalKeyring
) -> None:
    raw = _raw(engine, people)
    tampered = bytearray(raw[5])  # type: ignore[arg-type]
    tampered[12] ^= 1  # inside the wrapped key
    view = sa.table(people.name, sa.column("id"), sa.column("ssn", sa.LargeBinary))
    with engine.begin() as conn:
        conn.execute(sa.update(view).where(view.c.id == 5).values(ssn=bytes(tampered)))
    new_keys = old_keys.with_new_primary("new")
    with pytest.raises(DecryptionError):
        rewrap(engine, people.c.ssn, new_keys, batch_size=100)
    report = rewrap_column(engine, people.c.ssn, new_keys, batch_size=10, strict=False)
    assert [pk for pk, _ in report.failures] == [(5,)]
    assert report.changed == ROWS - 1
    assert "ssn-5" not in report.failures[0][1]


def test_dry_run_changes_nothing(
    engine: sa.Engine, people: sa.Table, old_keys: LocalKeyring
) -> None:
    before = _raw(engine, people)
    target = Encryptor(old_keys.with_new_primary("new"))
    report = rewrap_column(engine, people.c.ssn, target, dry_run=True)
    assert report.changed == ROWS and report.dry_run
    assert _raw(engine, people) == before
    assert target.stats()["wraps"] == 0  # no data key made only to be thrown away
    again = reencrypt(engine, people.c.ssn, to=target, dry_run=True)
    assert again.changed == ROWS and target.stats()["wraps"] == 0
    assert _raw(engine, people) == before


def test_shards_cover_every_row_once(
    engine: sa.Engine, people: sa.Table, old_keys: LocalKeyring
) -> None:
    new_keys = old_keys.with_new_primary("new")
    reports = [
        rewrap_column(engine, people.c.ssn, new_keys, shard=Shard(i, 3), batch_size=4)
        for i in range(3)
    ]
    assert sum(r.examined for r in reports) == ROWS + 1
    assert sum(r.changed for r in reports) == ROWS
    with pytest.raises(ConfigurationError):
        Shard.parse("3/3")


def test_keyring_outage_stops_cleanly_and_the_run_resumes(
    engine: sa.Engine, people: sa.Table, old_keys: LocalKeyring
) -> None:
    class FlakyKeyring(LocalKeyring):
        calls = 0

        def generate_data_key(self, context: Any) -> Any:
            FlakyKeyring.calls += 1
            if FlakyKeyring.calls == 25:
                raise ConnectionError("kms unreachable")
            return super().generate_data_key(context)

    new_keys = old_keys.with_new_primary("new")
    flaky = FlakyKeyring(new_keys._keys, primary="new")
    with pytest.raises(KeyringError):
        rewrap(engine, people.c.ssn, Encryptor(flaky), batch_size=10)
    sqla_envelope.configure(Encryptor(new_keys))
    assert _values(engine, people)[30] == "ssn-30"  # nothing lost
    assert rewrap(engine, people.c.ssn, new_keys, batch_size=10) == ROWS - 20


def test_unknown_and_plain_columns_are_refused(engine: sa.Engine, people: sa.Table) -> None:
    md = sa.MetaData()
    plain = sa.Table(
        "rot_plain", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String)
    )
    with pytest.raises(ConfigurationError, match="not an EncryptedType"):
        rewrap(engine, plain.c.name, LocalKeyring.generate())
    with pytest.raises(ConfigurationError):
        rewrap(engine, "ssn", LocalKeyring.generate())
    with pytest.raises(ConfigurationError):
        rewrap(engine, people.c.ssn, "not a keyring")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        reencrypt(engine, people.c.ssn, to="not a keyring")  # type: ignore[arg-type]
    # every column operation refuses the same way, before touching a row
    operations = (verify, reencrypt, encrypt_column, decrypt_column)
    for operation in operations:
        for column in (plain.c.name, "ssn"):
            with pytest.raises(ConfigurationError):
                operation(engine, column)  # type: ignore[operator]


def test_reencrypt_after_a_rename_and_again_is_a_no_op(
    engine: sa.Engine, old_keys: LocalKeyring
) -> None:
    sqla_envelope.configure(Encryptor(old_keys))
    md = sa.MetaData()
    old = sa.Table(
        "rot_old",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("v", EncryptedType(sa.String)),
    )
    md.drop_all(engine)
    md.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(old.insert(), [{"id": i, "v": f"v{i}"} for i in range(12)])
            conn.execute(sa.text("DROP TABLE IF EXISTS rot_new"))
            conn.execute(sa.text("ALTER TABLE rot_old RENAME TO rot_new"))
        new = sa.Table(
            "rot_new",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("v", EncryptedType(sa.String)),
        )
        with engine.connect() as conn, pytest.raises(DecryptionError):
            conn.execute(sa.select(new.c.v)).all()
        report = reencrypt(
            engine, new.c.v, from_context={"table": "rot_old", "column": "v"}, batch_size=5
        )
        assert report.changed == 12
        with engine.connect() as conn:
            assert sorted(conn.execute(sa.select(new.c.v)).scalars()) == sorted(
                f"v{i}" for i in range(12)
            )
        again = reencrypt(engine, new.c.v, from_context={"table": "rot_old", "column": "v"})
        assert (again.changed, again.skipped) == (0, 12)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS rot_new"))
            conn.execute(sa.text("DROP TABLE IF EXISTS rot_old"))


def test_reencrypt_gives_fresh_data_keys(engine: sa.Engine, people: sa.Table) -> None:
    before = _raw(engine, people)
    report = reencrypt(engine, people.c.ssn, batch_size=20)
    assert report.changed == ROWS
    after = _raw(engine, people)
    assert all(
        unpack_envelope(after[i]).wrapped_keys != unpack_envelope(before[i]).wrapped_keys  # type: ignore[arg-type]
        for i in range(ROWS)
    )
    assert _values(engine, people)[3] == "ssn-3"


@pytest.mark.parametrize("as_keyring", [True, False])
def test_reencrypt_under_other_keys_takes_a_keyring_or_an_encryptor(
    engine: sa.Engine, people: sa.Table, old_keys: LocalKeyring, as_keyring: bool
) -> None:
    new_keys = old_keys.with_new_primary("new")
    to = new_keys if as_keyring else Encryptor(new_keys)
    assert reencrypt(engine, people.c.ssn, to=to).changed == ROWS
    refs = {unpack_envelope(v).wrapped_keys[0].key_ref for v in _raw(engine, people).values() if v}
    assert refs == {"new"}
    sqla_envelope.configure(Encryptor(new_keys.without("old")))
    assert _values(engine, people)[3] == "ssn-3"


def test_reencrypt_reports_rows_it_cannot_decrypt_or_stops_on_them(
    engine: sa.Engine, people: sa.Table
) -> None:
    stranger = Encryptor(LocalKeyring.generate("stranger"))
    foreign = stranger.encrypt(b"ssn-x", people.c.ssn.type.encryption_context())
    raw = sa.table("rot_people", sa.column("id"), sa.column("ssn", sa.LargeBinary))
    with engine.begin() as conn:
        conn.execute(raw.update().where(raw.c.id == 5).values(ssn=foreign))
    with pytest.raises(DecryptionError, match="row id=5:"):
        reencrypt(engine, people.c.ssn, batch_size=10)  # strict by default
    report = reencrypt(engine, people.c.ssn, batch_size=10, strict=False)
    assert [pk for pk, _ in report.failures] == [(5,)]
    assert report.changed == ROWS - 1
    assert _raw(engine, people)[5] == foreign  # left as it was


def test_verify_reports_failing_primary_keys_without_values(
    engine: sa.Engine, people: sa.Table
) -> None:
    view = sa.table(people.name, sa.column("id"), sa.column("ssn", sa.LargeBinary))
    with engine.begin() as conn:
        conn.execute(sa.update(view).where(view.c.id == 7).values(ssn=b"\x01garbage"))
        conn.execute(
            sa.update(view).where(view.c.id == 9).values(ssn=_raw(engine, people)[8])
        )  # copied value: fine
    report = verify(engine, people.c.ssn, batch_size=10)
    assert [pk for pk, _ in report.failures] == [(7,)]
    assert report.examined == ROWS + 1
    assert all("ssn-" not in reason for _, reason in report.failures)


def test_failures_listed_are_capped_but_all_counted(
    engine: sa.Engine, people: sa.Table, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqla_envelope.maintenance import walk

    monkeypatch.setattr(walk, "MAX_LISTED", 3)
    sqla_envelope.configure(Encryptor(LocalKeyring.generate("stranger")))
    report = verify(engine, people.c.ssn, batch_size=10)
    assert report.failed == ROWS  # every value is under a key this keyring lacks
    assert len(report.failures) == 3
