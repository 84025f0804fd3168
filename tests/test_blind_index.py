"""Blind indexes: lookups by an encrypted value, kept in step on every write, on three databases.

Issue 15, items 1 to 5 (the first slice: the type, the ORM and Core keeping it in
step, the comparator, unique constraints, index keys under the keyring).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    WriteOnlyMapped,
    aliased,
    mapped_column,
    relationship,
)

import sqla_envelope
from sqla_envelope import (
    BlindIndex,
    ConfigurationError,
    DecryptionError,
    EncryptedType,
    Encryptor,
    LocalKeyring,
    UnsupportedComparisonError,
)
from sqla_envelope.search.encoding import canonical


@pytest.fixture
def encryptor() -> Iterator[Encryptor]:
    keyring = LocalKeyring.generate()
    enc = Encryptor(keyring, index_key=Encryptor(keyring).new_index_key())
    sqla_envelope.configure(enc)
    yield enc
    sqla_envelope.configure(None)


@pytest.fixture
def users(engine: sa.Engine, encryptor: Encryptor) -> Iterator[type[Any]]:
    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = "bidx_users"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        email: Mapped[str | None] = mapped_column(EncryptedType(sa.String(100)))
        email_bidx: Mapped[bytes | None] = mapped_column(
            BlindIndex("email", normalize=str.lower), unique=True
        )
        phone: Mapped[str | None] = mapped_column(EncryptedType(sa.String(20)))
        phone_bidx: Mapped[bytes | None] = mapped_column(BlindIndex("phone", bits=16))

    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield User
    Base.metadata.drop_all(engine)


def found(session: Session, user: type[Any], where: Any) -> list[int]:
    return sorted(session.scalars(sa.select(user.id).where(where)).all())


def test_orm_writes_keep_the_index_and_lookups_use_it(engine: sa.Engine, users: Any) -> None:
    User = users
    with Session(engine) as session:
        session.add_all([User(id=1, email="Ada@Example.org"), User(id=2, email="bob@example.org")])
        session.merge(User(id=3, email="carol@example.org"))
        session.commit()
        assert found(session, User, User.email == "ada@example.ORG") == [1]
        assert found(session, User, User.email.in_(["bob@example.org", "carol@example.org"])) == [
            2,
            3,
        ]
        assert found(session, User, User.email != "bob@example.org") == [1, 3]
        assert found(session, User, User.email.not_in(["bob@example.org"])) == [1, 3]
        assert session.query(User).filter_by(email="CAROL@example.org").one().id == 3
        # an update moves the index with the value
        session.get(User, 1).email = "ada@new.example.org"  # type: ignore[union-attr]
        session.commit()
        assert found(session, User, User.email == "ada@example.org") == []
        assert found(session, User, User.email == "ada@new.example.org") == [1]
        # the index holds a hash, never the value
        stored = session.execute(sa.text("SELECT email_bidx FROM bidx_users WHERE id = 2"))
        digest = bytes(stored.scalar_one())
        assert len(digest) == 32 and b"bob" not in digest


def test_bulk_orm_and_core_writes_keep_the_index(engine: sa.Engine, users: Any) -> None:
    User = users
    table = User.__table__
    with Session(engine) as session:
        session.execute(
            sa.insert(User), [{"id": 1, "email": "a@x.org"}, {"id": 2, "email": "b@x.org"}]
        )
        session.execute(sa.update(User), [{"id": 2, "email": "c@x.org"}])  # bulk by primary key
        session.execute(sa.update(User).where(User.id == 1).values(email="d@x.org"))
        session.commit()
        assert found(session, User, User.email == "d@x.org") == [1]
        assert found(session, User, User.email == "c@x.org") == [2]
        assert found(session, User, User.email.in_(["a@x.org", "b@x.org"])) == []
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=3, email="e@x.org"))  # index filled
        conn.execute(table.insert().values(id=4, email="f@x.org", email_bidx="F@X.org"))
        conn.execute(table.update().where(table.c.id == 3).values(email="g@x.org"))
    with engine.connect() as conn:
        by_index = conn.execute(sa.select(table.c.id).where(table.c.email_bidx == "g@x.org"))
        assert by_index.scalars().all() == [3]
        by_value = conn.execute(sa.select(table.c.id).where(table.c.email == "F@x.org"))
        assert by_value.scalars().all() == [4]


def test_null_gives_a_null_index_and_is_none_still_works(engine: sa.Engine, users: Any) -> None:
    User = users
    with Session(engine) as session:
        session.add_all([User(id=1, email=None), User(id=2, email="x@x.org")])
        session.commit()
        assert found(session, User, User.email.is_(None)) == [1]
        assert found(session, User, User.email_bidx.is_(None)) == [1]
        assert found(session, User, User.email.is_not(None)) == [2]


def test_the_unique_index_refuses_a_duplicate_value(engine: sa.Engine, users: Any) -> None:
    User = users
    with Session(engine) as session:
        session.add(User(id=1, email="same@x.org"))
        session.commit()
        session.add(User(id=2, email="SAME@x.org"))  # equal after normalize
        with pytest.raises(sa.exc.IntegrityError):
            session.commit()


def test_a_truncated_index_returns_every_true_match(engine: sa.Engine, users: Any) -> None:
    User = users
    phones = [f"+44 20 7946 {i:04d}" for i in range(300)]
    with Session(engine) as session:
        session.add_all([User(id=i, phone=phone) for i, phone in enumerate(phones)])
        session.commit()
        for i in (0, 17, 299):
            rows = session.scalars(sa.select(User).where(User.phone == phones[i])).all()
            assert i in [row.id for row in rows]  # the true match, maybe with collisions
            assert [row.id for row in rows if row.phone == phones[i]] == [i]


def test_other_operators_and_expressions_are_refused_with_a_pointer(users: Any) -> None:
    User = users
    with pytest.raises(UnsupportedComparisonError, match="LIKE"):
        User.email.like("%@x.org")
    with pytest.raises(UnsupportedComparisonError, match="blind index"):
        User.__table__.c.email > "a"  # noqa: B015


def test_lookups_through_an_alias_use_the_alias_index(engine: sa.Engine, users: Any) -> None:
    User = users
    with Session(engine) as session:
        session.add_all([User(id=1, email="a@x.org"), User(id=2, email="b@x.org")])
        session.commit()
        other = aliased(User)
        query = sa.select(User.id, other.id).join(other, other.id != User.id)
        rows = session.execute(query.where(other.email == "b@x.org")).all()
        assert rows == [(1, 2)]


def test_a_compound_index(engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor) -> None:
    people = sa.Table(
        "bidx_people",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ssn", EncryptedType(sa.String(11))),
        sa.Column("born", EncryptedType(sa.Date)),
        sa.Column(
            "ssn_born_bidx",
            BlindIndex(("ssn", "born"), normalize=lambda ssn, born: (ssn[-4:], born.year)),
        ),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            people.insert(),
            [
                {"id": 1, "ssn": "123-45-6789", "born": dt.date(1990, 5, 1)},
                {"id": 2, "ssn": "987-65-6789", "born": dt.date(1991, 5, 1)},
            ],
        )
        with pytest.raises(ConfigurationError, match="compound blind index"):
            conn.execute(people.update().where(people.c.id == 1).values(ssn="000-00-0000"))
    with engine.connect() as conn:
        key = ("555-55-6789", dt.date(1990, 12, 31))
        query = sa.select(people.c.id).where(people.c.ssn_born_bidx == key)
        assert conn.execute(query).scalars().all() == [1]


def test_two_indexes_of_equal_values_hash_differently(engine: sa.Engine, users: Any) -> None:
    User = users
    with Session(engine) as session:
        session.add(User(id=1, email="x", phone="x"))
        session.commit()
        email_bidx, phone_bidx = session.execute(
            sa.text("SELECT email_bidx, phone_bidx FROM bidx_users")
        ).one()
    assert bytes(email_bidx)[:2] != bytes(phone_bidx)


def test_without_an_index_key_nothing_is_stored(engine: sa.Engine, users: Any) -> None:
    User = users
    sqla_envelope.configure(Encryptor(LocalKeyring.generate()))  # no index_key=
    with Session(engine) as session:
        session.add(User(id=1, email="a@x.org"))
        with pytest.raises(ConfigurationError, match="index_key"):
            session.commit()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM bidx_users")).scalar_one() == 0


def test_an_index_key_of_another_keyring_fails_closed() -> None:
    wrapped = Encryptor(LocalKeyring.generate()).new_index_key()
    stranger = Encryptor(LocalKeyring.generate(), index_key=wrapped)
    with pytest.raises(DecryptionError):
        stranger.unwrapped_index_key()
    with pytest.raises(ConfigurationError, match="index_key"):
        Encryptor(LocalKeyring.generate(), index_key="not a wrapped key")


def test_a_source_set_from_an_sql_expression_is_refused(engine: sa.Engine, users: Any) -> None:
    table = users.__table__
    with engine.begin() as conn, pytest.raises(ConfigurationError, match="SQL expression"):
        conn.execute(table.update().values(email=table.c.phone))


def test_a_source_set_from_a_parameter_of_another_name_is_refused(
    engine: sa.Engine, users: Any
) -> None:
    # SQLAlchemy's executemany UPDATE names its parameters: the index set NULL
    # for every row, so a lookup by the new value found nothing.
    table = users.__table__
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": 1, "email": "a@x.org"}])
    renamed = (
        table.update()
        .where(table.c.id == sa.bindparam("row_id"))
        .values(email=sa.bindparam("new_email"))
    )
    with engine.begin() as conn, pytest.raises(ConfigurationError, match="'new_email'"):
        conn.execute(renamed, [{"row_id": 1, "new_email": "b@x.org"}])
    with engine.begin() as conn:  # as the message says: the column's own name
        conn.execute(
            table.update().where(table.c.id == sa.bindparam("row_id")),
            [{"row_id": 1, "email": "b@x.org"}],
        )
    with Session(engine) as session:
        assert found(session, users, users.email == "b@x.org") == [1]


def test_the_index_renders_as_an_importable_expression() -> None:
    assert repr(BlindIndex("email", bits=64)) == "BlindIndex('email', bits=64)"
    assert BlindIndex.__module__ == "sqla_envelope"


scalars = st.one_of(
    st.none(),
    st.text(),
    st.binary(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.dates(),
    st.datetimes(),
    st.times(),
    st.timedeltas(),
    st.uuids(),
)
values = st.one_of(scalars, st.tuples(scalars, scalars), st.tuples(scalars, scalars, scalars))


@given(values, values)
def test_distinct_values_never_encode_alike(a: Any, b: Any) -> None:
    if canonical(a) == canonical(b):
        assert type(a) is type(b)
        assert a == b or (isinstance(a, tuple) and all(x == y for x, y in zip(a, b, strict=True)))


def test_the_encoding_tells_types_and_compound_boundaries_apart() -> None:
    assert canonical(1) != canonical("1") != canonical(b"1")
    assert canonical(True) != canonical(1)
    assert canonical(("ab", "c")) != canonical(("a", "bc"))
    assert canonical(0.0) == canonical(-0.0)
    assert canonical(Decimal("1.0")) == canonical(Decimal("1.00")) == canonical(Decimal("1"))
    utc = dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc)
    paris = utc.astimezone(dt.timezone(dt.timedelta(hours=1)))
    assert canonical(utc) == canonical(paris)


def test_reindex_fills_an_index_added_to_existing_rows_and_resumes(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    from sqla_envelope.search import reindex, reindex_column

    plain = sa.Table(
        "bidx_legacy",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", EncryptedType(sa.String(100))),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(plain.insert(), [{"id": i, "email": f"user{i}@x.org"} for i in range(25)])
        conn.execute(plain.insert().values(id=99, email=None))
        conn.exec_driver_sql(
            "ALTER TABLE bidx_legacy ADD COLUMN email_bidx "
            + ("BYTEA" if engine.dialect.name == "postgresql" else "BLOB")
        )
    indexed = sa.Table(
        "bidx_legacy",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", EncryptedType(sa.String(100))),
        sa.Column("email_bidx", BlindIndex("email", normalize=str.lower)),
    )

    # a first run dies after two batches; the rerun does only the rest
    class KilledError(Exception):
        pass

    def kill_after_two(report: Any) -> None:
        if report.examined >= 20:
            raise KilledError

    with pytest.raises(KilledError):
        reindex_column(engine, indexed.c.email_bidx, batch_size=10, progress=kill_after_two)
    assert reindex(engine, indexed.c.email_bidx, batch_size=10) == 5
    assert reindex(engine, indexed.c.email_bidx, batch_size=10) == 0  # idempotent
    with engine.connect() as conn:
        query = sa.select(indexed.c.id).where(indexed.c.email == "USER7@x.org")
        assert conn.execute(query).scalars().all() == [7]
        null_index = sa.select(indexed.c.email_bidx).where(indexed.c.id == 99)
        assert conn.execute(null_index).scalar_one() is None
    resumed = reindex_column(engine, indexed.c.email_bidx, start_after=(10,))
    assert (resumed.examined, resumed.changed) == (15, 0)  # ids 11-24 and 99


def test_plan_bits_keeps_the_expected_false_positives_under_the_bound() -> None:
    from sqla_envelope.search import plan_bits

    for rows in (0, 10, 1_000, 100_000, 10_000_000):
        for bound in (0.001, 0.5, 1.0, 10.0):
            bits = plan_bits(rows, false_positives=bound)
            assert bits % 8 == 0 and 16 <= bits <= 256
            assert rows / 2**bits <= bound or bits == 256
            if bits > 16:  # and the fewest such bits
                assert rows / 2 ** (bits - 8) > bound
    assert plan_bits(100_000) == 24  # about 0.006 unrelated rows per lookup
    with pytest.raises(ConfigurationError):
        plan_bits(10, false_positives=0)


def test_flask_and_django_settings_take_the_wrapped_index_key(tmp_path: Any) -> None:
    from sqla_envelope.settings import parse_settings

    key_file = tmp_path / "app.keys.json"
    LocalKeyring.generate().to_file(key_file)
    wrapped = Encryptor(LocalKeyring.from_file(key_file)).new_index_key()
    settings = parse_settings({"KEY_FILE": str(key_file), "INDEX_KEY": wrapped}, str)
    encryptor = settings.encryptor()
    assert encryptor.index_key == wrapped
    assert len(encryptor.unwrapped_index_key()) == 32
    with pytest.raises(ConfigurationError, match="INDEX_KEY"):
        parse_settings({"KEY_FILE": str(key_file), "INDEX_KEY": b"raw bytes"}, str)


MODEL_MODULE = """
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqla_envelope import BlindIndex, EncryptedType


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "cli_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(EncryptedType(sa.String(100)))
    email_bidx: Mapped[bytes | None] = mapped_column(BlindIndex("email", normalize=str.lower))
"""


def test_the_cli_makes_an_index_key_and_reindexes_a_model(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sqla_envelope.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "bidx_cli_app.py").write_text(MODEL_MODULE)
    LocalKeyring.generate("k1").to_file("app.keys.json")
    assert main(["index-key", "new", "--key-file", "app.keys.json"]) == 0
    index_key = capsys.readouterr().out.strip()
    assert index_key.startswith("sqla-envelope-index-key:v1:")

    import bidx_cli_app

    engine = sa.create_engine("sqlite:///cli.db")
    bidx_cli_app.Base.metadata.create_all(engine)
    table = bidx_cli_app.User.__table__
    sqla_envelope.configure(Encryptor(LocalKeyring.from_file("app.keys.json"), index_key=index_key))
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": 1, "email": "A@x.org"}, {"id": 2, "email": "b@x.org"}])
        conn.execute(table.update().values(email_bidx=None))  # as if the index were new
    sqla_envelope.configure(None)
    argv = ["reindex", "--url", "sqlite:///cli.db", "--model", "bidx_cli_app:User.email_bidx"]
    argv += ["--key-file", "app.keys.json", "--index-key", index_key]
    assert main([*argv, "--shard", "1/2", "--dry-run"]) == 0  # ids 1..2: the upper half
    assert "would change" in capsys.readouterr().err
    assert main([*argv, "--shard", "2/2"]) == 2
    assert "--shard" in capsys.readouterr().err
    assert main(argv) == 0
    assert "2 changed" in capsys.readouterr().err
    sqla_envelope.configure(Encryptor(LocalKeyring.from_file("app.keys.json"), index_key=index_key))
    with engine.connect() as conn:
        found = conn.execute(sa.select(table.c.id).where(table.c.email == "a@X.org"))
        assert found.scalars().all() == [1]
    engine.dispose()

    plan = ["index", "plan", "--url", "sqlite:///cli.db", "--model", "bidx_cli_app:User.email_bidx"]
    assert main([*plan, "--key-file", "app.keys.json"]) == 0
    out = capsys.readouterr().out
    assert "2 rows, 2 distinct values" in out and "recommended: bits=16" in out

    assert main([*argv[:4], "no_such_module:User.email_bidx", *argv[5:]]) == 2
    err = capsys.readouterr().err
    assert "cannot import" in err and "Traceback" not in err


def _users_table(metadata: sa.MetaData, *indexes: sa.Column[Any]) -> sa.Table:
    return sa.Table(
        "bidx_rotating",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", EncryptedType(sa.String(100))),
        *indexes,
    )


def test_an_index_rotates_without_a_lookup_missing_a_row(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    from sqla_envelope.search import reindex_column

    old = _users_table(metadata, sa.Column("email_bidx", BlindIndex("email")))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(old.insert(), [{"id": i, "email": f"User{i}@x.org"} for i in range(6)])
        blob = "BYTEA" if engine.dialect.name == "postgresql" else "BLOB"
        conn.exec_driver_sql(f"ALTER TABLE bidx_rotating ADD COLUMN email_bidx_v2 {blob}")
    # the next version: case-blind, with a key of its own
    both = _users_table(
        sa.MetaData(),
        sa.Column("email_bidx", BlindIndex("email")),
        sa.Column(
            "email_bidx_v2",
            BlindIndex("email", normalize=str.lower, key=bytes(32), replaces="email_bidx"),
        ),
    )

    def ids(table: sa.Table, where: Any) -> list[int]:
        with engine.connect() as conn:
            return sorted(conn.execute(sa.select(table.c.id).where(where)).scalars())

    assert ids(both, both.c.email == "User1@x.org") == [1]  # the old index answers
    with engine.begin() as conn:  # a write during the rotation fills both
        conn.execute(both.insert().values(id=9, email="Carol@x.org"))

    class StopError(Exception):
        pass

    def stop_after_one_batch(report: Any) -> None:
        raise StopError

    with pytest.raises(StopError):
        reindex_column(engine, both.c.email_bidx_v2, batch_size=3, progress=stop_after_one_batch)
    # half filled: every row is still found, by one index or the other
    for i in range(6):
        assert ids(both, both.c.email == f"User{i}@x.org") == [i]
    assert ids(both, both.c.email.in_(["User2@x.org", "User4@x.org"])) == [2, 4]
    # the new normalization answers for the rows it has reached so far
    assert ids(both, both.c.email == "user1@X.ORG") == [1]
    assert ids(both, both.c.email == "user4@X.ORG") == []
    assert ids(both, both.c.email == "carol@x.org") == [9]  # the new index, case-blind
    assert ids(both, both.c.email != "User0@x.org") == [1, 2, 3, 4, 5, 9]
    assert ids(both, both.c.email.not_in(["User0@x.org", "User5@x.org"])) == [1, 2, 3, 4, 9]

    assert reindex_column(engine, both.c.email_bidx_v2).changed == 3
    new = _users_table(
        sa.MetaData(),
        sa.Column("email_bidx_v2", BlindIndex("email", normalize=str.lower, key=bytes(32))),
    )  # the old column dropped
    assert ids(new, new.c.email == "USER3@X.ORG") == [3]


def test_two_unrelated_indexes_of_one_column_must_be_named(metadata: sa.MetaData) -> None:
    table = _users_table(
        metadata,
        sa.Column("email_bidx", BlindIndex("email")),
        sa.Column("email_lower_bidx", BlindIndex("email", normalize=str.lower)),
    )
    with pytest.raises(UnsupportedComparisonError, match="several blind indexes"):
        table.c.email == "x"  # noqa: B015
    assert str(table.c.email_lower_bidx == "x")  # the index column itself works


def test_measure_counts_rows_and_distinct_normalized_values(engine: sa.Engine, users: Any) -> None:
    from sqla_envelope.search.planning import measure

    User = users
    with Session(engine) as session:
        emails = [f"user{i % 40}@x.org" for i in range(100)]
        emails += [f"USER{i % 40}@X.ORG" for i in range(100)]
        session.add_all([User(id=i, phone=email) for i, email in enumerate(emails)])
        session.add(User(id=999, phone=None))
        session.commit()
    plan = measure(engine, User.phone_bidx, false_positives=0.01)
    # phone_bidx does not normalize: case makes distinct values
    assert (plan.rows, plan.distinct) == (200, 80)
    assert plan.bits == 16  # 200 / 2**16 = 0.003 unrelated rows per lookup
    assert plan.values_per_hash < 2 and "shows which rows are equal" in plan.summary()


def test_update_delete_and_exists_filter_through_the_index(engine: sa.Engine, users: Any) -> None:
    User = users
    with Session(engine) as session:
        session.add_all([User(id=i, email=f"u{i}@x.org", phone=f"+1 {i}") for i in range(4)])
        session.commit()
        session.execute(sa.update(User).where(User.email == "U1@x.org").values(phone="+1 99"))
        session.execute(sa.delete(User).where(User.email.in_(["u2@x.org", "u3@x.org"])))
        session.commit()
        assert found(session, User, User.phone == "+1 99") == [1]
        assert found(session, User, sa.true()) == [0, 1]
        has_u0 = sa.exists().where(User.email == "u0@x.org")
        assert session.scalar(sa.select(has_u0)) is True


def test_a_unique_constraint_over_the_index_and_another_column(
    engine: sa.Engine, metadata: sa.MetaData, encryptor: Encryptor
) -> None:
    members = sa.Table(
        "bidx_members",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("tenant", sa.String(20), nullable=False),
        sa.Column("email", EncryptedType(sa.String(100))),
        sa.Column("email_bidx", BlindIndex("email", normalize=str.lower)),
        sa.UniqueConstraint("tenant", "email_bidx"),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(members.insert().values(id=1, tenant="acme", email="a@x.org"))
        conn.execute(members.insert().values(id=2, tenant="globex", email="A@x.org"))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(members.insert().values(id=3, tenant="acme", email="A@X.org"))


def test_a_relationship_filters_its_children_through_the_index(
    engine: sa.Engine, encryptor: Encryptor
) -> None:
    class Base(DeclarativeBase):
        pass

    class Clinic(Base):
        __tablename__ = "bidx_clinics"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        patients: WriteOnlyMapped[Patient] = relationship()

    class Patient(Base):
        __tablename__ = "bidx_patients"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        clinic_id: Mapped[int] = mapped_column(sa.ForeignKey("bidx_clinics.id"))
        ssn: Mapped[str] = mapped_column(EncryptedType(sa.String(11)))
        ssn_bidx: Mapped[bytes | None] = mapped_column(BlindIndex("ssn"))

    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            north, south = Clinic(id=1), Clinic(id=2)
            session.add_all([north, south])
            north.patients.add_all([Patient(id=1, ssn="123-45-6789"), Patient(id=2, ssn="987")])
            south.patients.add(Patient(id=3, ssn="123-45-6789"))
            session.commit()
            found = session.scalars(north.patients.select().filter_by(ssn="123-45-6789")).all()
            assert [p.id for p in found] == [1]
            joined = sa.select(Clinic.id).join(Clinic.patients).where(Patient.ssn == "987")
            assert session.scalars(joined).all() == [1]
    finally:
        Base.metadata.drop_all(engine)


def test_a_multi_row_values_clause_is_refused_rather_than_left_unindexed(
    engine: sa.Engine, users: Any
) -> None:
    table = users.__table__
    rows = [
        {"id": 1, "email": "a@x.org", "phone": "+1 1"},
        {"id": 2, "email": "b@x.org", "phone": "+1 2"},
    ]
    with engine.begin() as conn, pytest.raises(ConfigurationError, match="multi-row VALUES"):
        conn.execute(table.insert().values(rows))
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)  # the way that works
    copy = sa.select(table.c.id + 10, table.c.phone)
    with engine.begin() as conn, pytest.raises(ConfigurationError, match=r"INSERT \.\.\. SELECT"):
        conn.execute(table.insert().from_select(["id", "phone"], copy))
    with engine.begin() as conn:  # with the index selected too, rows copy as they are
        both = sa.select(table.c.id + 10, table.c.phone, table.c.phone_bidx)
        conn.execute(table.insert().from_select(["id", "phone", "phone_bidx"], both))
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.id).where(table.c.email == "b@x.org")).all() == [(2,)]
        found = conn.execute(sa.select(table.c.id).where(table.c.phone == "+1 2")).all()
        assert sorted(found) == [(2,), (12,)]
