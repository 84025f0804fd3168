"""SQL over an encrypted column: what is refused before it is sent or logged, and what still works.

The same on SQLite, PostgreSQL and MariaDB. Row 1 holds TERM in its encrypted column, so
a refused query that ran would have searched for a value that is there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, with_loader_criteria

from sqla_envelope import EncryptedType, Encryptor, LocalKeyring, UnsupportedComparisonError

TERM = "078-05-1120"
OTHER = "219-09-9999"
_ENCRYPTOR = Encryptor(LocalKeyring.generate())


class Base(DeclarativeBase):
    pass


class Person(Base):
    __tablename__ = "cmp_people"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(40))
    ssn: Mapped[str | None] = mapped_column(EncryptedType(sa.String(20), _ENCRYPTOR))
    visits: Mapped[int | None] = mapped_column(EncryptedType(sa.Integer, _ENCRYPTOR))


people = Base.metadata.tables["cmp_people"]
ROWS = [
    {"id": 1, "name": "Ada", "ssn": TERM, "visits": 3},
    {"id": 2, "name": "Alan", "ssn": None, "visits": None},
    {"id": 3, "name": "Grace", "ssn": OTHER, "visits": 8},
]


@pytest.fixture(scope="module")
def stored(engine: sa.Engine) -> Iterator[sa.Engine]:
    """The three rows, written once per database for the module's read-only tests."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(people.insert(), ROWS)
    yield engine
    Base.metadata.drop_all(engine)


@pytest.fixture
def writable(stored: sa.Engine) -> Iterator[sa.Engine]:
    """The same rows, written back as they were after a test that changes them."""
    yield stored
    with stored.begin() as conn:
        conn.execute(people.delete())
        conn.execute(people.insert(), ROWS)


def _rows(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        query = sa.select(people.c.id, people.c.name, people.c.ssn).order_by(people.c.id)
        return [tuple(row) for row in conn.execute(query)]


# -- refused ------------------------------------------------------------------------------

c = people.c
_alias = people.alias("other")
_subquery = sa.select(people).subquery()
_cte = sa.select(c.id, c.ssn).cte("with_ssn")

# Each builds a statement that compares or transforms an encrypted value; the first four
# are the ones that used to run silently and find nothing.
REFUSED: dict[str, Callable[[], Any]] = {
    "literal_on_the_left": lambda: sa.select(c.id).where(sa.literal(TERM) == c.ssn),
    "cast": lambda: sa.select(c.id).where(sa.cast(c.ssn, sa.String) == TERM),
    "function": lambda: sa.select(c.id).where(sa.func.lower(c.ssn) == TERM),
    "tuple": lambda: sa.select(c.id).where(sa.tuple_(c.id, c.ssn).in_([(1, TERM)])),
    "equal_to_an_expression": lambda: sa.select(c.id).where(c.ssn == sa.literal(TERM)),
    "in_a_subquery": lambda: sa.select(c.id).where(sa.literal(TERM).in_(sa.select(c.ssn))),
    "between": lambda: sa.select(c.id).where(sa.between(sa.literal(TERM), c.ssn, c.ssn)),
    "like": lambda: sa.select(c.id).where(sa.func.upper(c.ssn).like(f"{TERM}%")),
    "contains": lambda: sa.select(c.id).where(sa.cast(c.ssn, sa.String).contains(TERM)),
    "startswith": lambda: sa.select(c.id).where(sa.func.trim(c.ssn).startswith(TERM)),
    "concatenation": lambda: sa.select(c.id).where(sa.literal(TERM) + c.ssn != ""),
    "arithmetic": lambda: sa.select(c.id).where(sa.literal(1) + c.visits > 2),
    "join_condition": lambda: sa.select(c.id).join(_alias, _alias.c.ssn == c.ssn),
    "scalar_subquery": lambda: sa.select(c.id).where(
        sa.select(c.ssn).where(c.id == 1).scalar_subquery() == sa.literal(TERM)
    ),
    "subquery_column": lambda: sa.select(_subquery.c.id).where(sa.literal(TERM) == _subquery.c.ssn),
    "cte_column": lambda: sa.select(_cte.c.id).where(sa.func.upper(_cte.c.ssn) == TERM),
    "exists": lambda: sa.select(sa.exists().where(sa.literal(TERM) == c.ssn)),
    "length": lambda: sa.select(sa.func.length(c.ssn)),
    "max": lambda: sa.select(sa.func.max(c.ssn)),
    "min": lambda: sa.select(sa.func.min(c.visits)),
    "count_distinct": lambda: sa.select(sa.func.count(sa.distinct(c.ssn))),
    "group_by": lambda: sa.select(sa.func.count()).select_from(people).group_by(c.ssn),
    "order_by": lambda: sa.select(c.id).order_by(c.ssn),
    "order_by_desc": lambda: sa.select(c.id).order_by(c.ssn.desc()),
    "order_by_name": lambda: sa.select(c.id, c.ssn).order_by("ssn"),
    "window": lambda: sa.select(c.id, sa.func.count().over(partition_by=c.ssn)),
    "update_where": lambda: sa.update(people).where(sa.literal(TERM) == c.ssn).values(name="x"),
    "delete_where": lambda: sa.delete(people).where(sa.func.lower(c.ssn) == TERM),
    "orm_where": lambda: sa.select(Person).where(sa.literal(TERM) == Person.ssn),
    "orm_order_by": lambda: sa.select(Person).order_by(Person.ssn),
    "orm_loader_criteria": lambda: sa.select(Person).options(
        with_loader_criteria(Person, sa.literal(TERM) == Person.ssn)
    ),
    # Not comparisons, but as silent: the database would store TERM unencrypted.
    "store_an_expression": lambda: sa.update(people).where(c.id == 2).values(ssn=sa.literal(TERM)),
    "store_a_function": lambda: sa.insert(people).values(id=9, name="x", ssn=sa.func.upper(TERM)),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_before_anything_is_sent_or_logged(
    stored: sa.Engine, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")  # as echo="debug" logs
    sa.event.listen(stored, "before_cursor_execute", record)
    try:
        with Session(stored) as session:
            with pytest.raises(UnsupportedComparisonError, match="encrypted column") as raised:
                session.execute(REFUSED[case]())
            assert sent == []
            assert TERM not in caplog.text
            assert TERM not in str(raised.value)
            assert "random" in str(raised.value) or "unencrypted" in str(raised.value)
            # The same log shows a search term that is sent: the capture works.
            session.execute(sa.select(c.id).where(c.name == TERM)).all()
            assert TERM in caplog.text
    finally:
        sa.event.remove(stored, "before_cursor_execute", record)
    assert _rows(stored) == [(1, "Ada", TERM), (2, "Alan", None), (3, "Grace", OTHER)]


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("literal_on_the_left", "blind index"),
        ("tuple", "blind index"),
        ("order_by", "sort after loading"),
        ("max", "order over it is random"),
        ("group_by", "treats every row as unique"),
        ("count_distinct", "treats every row as unique"),
        ("length", "compute on the envelope"),
        ("cast", "compute on the envelope"),
        ("store_an_expression", "unencrypted"),
    ],
)
def test_the_message_says_why(case: str, says: str) -> None:
    with pytest.raises(UnsupportedComparisonError, match=says) as raised:
        REFUSED[case]().compile()
    assert "cmp_people." in str(raised.value)  # names the column


def test_a_refused_statement_is_refused_on_every_execution(stored: sa.Engine) -> None:
    """SQLAlchemy caches compiled statements: a refused one is never cached."""
    with stored.connect() as conn:
        for _ in range(2):
            with pytest.raises(UnsupportedComparisonError):
                conn.execute(REFUSED["function"]())


# -- allowed ------------------------------------------------------------------------------

ALLOWED: dict[str, tuple[Callable[[], Any], list[tuple[Any, ...]]]] = {
    "is_null": (lambda: sa.select(c.id).where(c.ssn.is_(None)), [(2,)]),
    "is_not_null": (lambda: sa.select(c.id).where(c.ssn.is_not(None)).order_by(c.id), [(1,), (3,)]),
    "equals_none": (lambda: sa.select(c.id).where(c.ssn == None), [(2,)]),  # noqa: E711
    "not_equals_none": (
        lambda: sa.select(c.id).where(c.ssn != None).order_by(c.id),  # noqa: E711
        [(1,), (3,)],
    ),
    "select": (
        lambda: sa.select(c.id, c.ssn, c.visits).order_by(c.id),
        [(1, TERM, 3), (2, None, None), (3, OTHER, 8)],
    ),
    "label": (lambda: sa.select(c.ssn.label("n")).order_by(c.id), [(TERM,), (None,), (OTHER,)]),
    "count": (lambda: sa.select(sa.func.count(c.ssn)), [(2,)]),
    "distinct_rows": (
        lambda: sa.select(c.id, c.ssn).distinct().order_by(c.id),
        [(1, TERM), (2, None), (3, OTHER)],
    ),
    "subquery": (
        lambda: sa.select(_subquery.c.ssn).order_by(_subquery.c.id),
        [(TERM,), (None,), (OTHER,)],
    ),
    "cte": (lambda: sa.select(_cte.c.ssn).where(_cte.c.id == 3), [(OTHER,)]),
    "scalar_subquery": (
        lambda: sa.select(sa.select(c.ssn).where(c.id == 1).scalar_subquery()),
        [(TERM,)],
    ),
    "exists": (lambda: sa.select(sa.exists(sa.select(c.ssn).where(c.ssn.is_(None)))), [(True,)]),
    "case_result": (
        lambda: sa.select(sa.case((c.id == 1, c.ssn), else_=None)).order_by(c.id),
        [(TERM,), (None,), (None,)],
    ),
    "union": (
        lambda: sa.union(
            sa.select(c.id, c.ssn).where(c.id == 1), sa.select(c.id, c.ssn).where(c.id == 3)
        ).order_by("id"),
        [(1, TERM), (3, OTHER)],
    ),
    "stored_envelope": (
        lambda: sa.select(c.id).where(sa.type_coerce(c.ssn, sa.LargeBinary).is_not(None)),
        [(1,), (3,)],
    ),
    "textual": (
        lambda: sa.text("SELECT ssn FROM cmp_people ORDER BY id").columns(c.ssn),
        [(TERM,), (None,), (OTHER,)],
    ),
    "orm_null_test": (lambda: sa.select(Person.id).where(Person.ssn.is_(None)), [(2,)]),
}


@pytest.mark.parametrize("case", ALLOWED)
def test_allowed_forms_return_the_right_rows(stored: sa.Engine, case: str) -> None:
    statement, expected = ALLOWED[case]
    with Session(stored) as session:
        got = [tuple(row) for row in session.execute(statement())]
    assert sorted(got, key=repr) == sorted(expected, key=repr)


def test_orm_entities_load_decrypted(stored: sa.Engine) -> None:
    with Session(stored) as session:
        loaded = session.scalars(sa.select(Person).order_by(Person.id)).all()
        assert [(p.ssn, p.visits) for p in loaded] == [(TERM, 3), (None, None), (OTHER, 8)]


# -- writes -------------------------------------------------------------------------------


def test_insert_and_update_values_are_encrypted(writable: sa.Engine) -> None:
    with writable.begin() as conn:
        conn.execute(sa.insert(people).values(id=4, name="Edsger", ssn="4-4", visits=1))
        conn.execute(people.insert().values([{"id": 5, "name": "Barbara", "ssn": "5-5"}]))
        conn.execute(sa.update(people).where(c.id == 1).values(ssn="1-1", visits=None))
        conn.execute(
            sa.update(people).where(c.id == sa.bindparam("pid")).values(ssn=sa.bindparam("new")),
            [{"pid": 2, "new": "2-2"}, {"pid": 3, "new": None}],
        )
        copied = sa.select(c.ssn).where(c.id == 4).scalar_subquery()
        conn.execute(sa.update(people).where(c.id == 5).values(ssn=copied))  # an envelope
        raw = conn.execute(sa.text("SELECT ssn FROM cmp_people WHERE id = 4")).scalar_one()
    assert b"4-4" not in bytes(raw)
    assert [row[2] for row in _rows(writable)] == ["1-1", "2-2", None, "4-4", "4-4"]


MODES = ["auto", "evaluate", "fetch", False]


@pytest.mark.parametrize("mode", MODES)
def test_orm_bulk_update_of_an_encrypted_column(writable: sa.Engine, mode: Any) -> None:
    with Session(writable) as session:
        ada, alan = session.get(Person, 1), session.get(Person, 2)  # held by the session
        assert ada is not None and alan is not None
        options = {"synchronize_session": mode}
        session.execute(
            sa.update(Person).where(Person.name == "Ada").values(ssn="new", visits=4),
            execution_options=options,
        )
        session.execute(
            sa.update(Person).where(Person.ssn.is_(None)).values(ssn="was-null"),
            execution_options=options,
        )
        if mode is not False:  # the objects in the session follow
            assert (ada.ssn, ada.visits, alan.ssn) == ("new", 4, "was-null")
        session.commit()
    assert _rows(writable) == [(1, "Ada", "new"), (2, "Alan", "was-null"), (3, "Grace", OTHER)]


@pytest.mark.parametrize("mode", MODES)
def test_orm_bulk_delete_beside_an_encrypted_column(writable: sa.Engine, mode: Any) -> None:
    with Session(writable) as session:
        held = session.scalars(sa.select(Person)).all()
        assert len(held) == 3
        session.execute(
            sa.delete(Person).where(Person.name == "Alan"),
            execution_options={"synchronize_session": mode},
        )
        session.commit()
    assert _rows(writable) == [(1, "Ada", TERM), (3, "Grace", OTHER)]
