"""Blind index benchmark: what an index costs on insert, and a lookup through it.

One run, on a SQLite file, N rows (100,000) of random emails, through the ORM:

* insert: ``add_all`` + ``commit`` into a table with an encrypted email and no index,
  and into the same table with a ``BlindIndex`` of it (unique): the index's cost;
* lookup: L (1,000) lookups of random existing emails, one ``select ... where
  email == x`` each, against a plain ``String`` column with a unique index and
  against the encrypted column through its blind index.

Best and median of R repeats (5), ratios in the same run. The goals of issue 15:
an insert with an index costs at most 10% more than without; a lookup through the
index is within 2x of the plain indexed column.

Run::

    .venv/bin/python bench/bench_search.py [--rows 100000] [--lookups 1000] [--repeat 5] [--url URL]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqla_envelope import BlindIndex, EncryptedType, Encryptor, LocalKeyring, configure


class Base(DeclarativeBase):
    pass


class Plain(Base):
    __tablename__ = "plain"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(100), unique=True)


class Encrypted(Base):
    __tablename__ = "encrypted"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(EncryptedType(sa.String(100)))


class WithColumn(Base):
    """The floor: the same extra column and unique index, filled with random bytes."""

    __tablename__ = "with_column"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(EncryptedType(sa.String(100)))
    email_bidx: Mapped[bytes] = mapped_column(sa.LargeBinary(32), unique=True)


class Indexed(Base):
    __tablename__ = "indexed"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(EncryptedType(sa.String(100)))
    email_bidx: Mapped[bytes] = mapped_column(BlindIndex("email", normalize=str.lower), unique=True)


def timed(body: Callable[[], Any]) -> float:
    gc.collect()
    start = time.perf_counter()
    body()
    return time.perf_counter() - start


def insert(engine: sa.Engine, model: Any, emails: list[str]) -> float:
    Base.metadata.drop_all(engine, tables=[model.__table__])
    Base.metadata.create_all(engine, tables=[model.__table__])
    if model is WithColumn:
        rng = random.Random(3)
        objects = [
            model(id=i, email=email, email_bidx=rng.randbytes(32)) for i, email in enumerate(emails)
        ]
    else:
        objects = [model(id=i, email=email) for i, email in enumerate(emails)]
    with Session(engine) as session:
        session.add_all(objects)
        return timed(session.commit)


def lookups(engine: sa.Engine, model: Any, wanted: list[tuple[int, str]]) -> float:
    def body() -> None:
        with Session(engine) as session:
            for expected, email in wanted:
                found = session.scalars(sa.select(model.id).where(model.email == email)).one()
                if found != expected:
                    raise AssertionError("looked up the wrong row")

    return timed(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--url", help="a database URL instead of a SQLite file (tables dropped)")
    args = parser.parse_args(argv)
    keyring = LocalKeyring.generate()
    configure(Encryptor(keyring, index_key=Encryptor(keyring).new_index_key()))
    rng = random.Random(7)
    emails = [
        "".join(rng.choices(string.ascii_lowercase, k=12)) + f"{i}@example.org"
        for i in range(args.rows)
    ]
    wanted = [(i, emails[i]) for i in rng.sample(range(args.rows), args.lookups)]
    names = (
        "insert encrypted",
        "insert with a random unique column",
        "insert indexed",
        "lookup plain",
        "lookup indexed",
    )
    times: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as folder:
        engine = sa.create_engine(args.url or f"sqlite:///{folder}/search.db")
        for _ in range(args.repeat):
            times["insert encrypted"].append(insert(engine, Encrypted, emails))
            times["insert with a random unique column"].append(insert(engine, WithColumn, emails))
            times["insert indexed"].append(insert(engine, Indexed, emails))
            insert(engine, Plain, emails)
            times["lookup plain"].append(lookups(engine, Plain, wanted))
            times["lookup indexed"].append(lookups(engine, Indexed, wanted))
        Base.metadata.drop_all(engine)
        engine.dispose()
    where = engine.dialect.name if args.url else "SQLite file"
    print(f"rows: {args.rows}, lookups: {args.lookups}, repeats: {args.repeat}, {where}")
    for name, values in times.items():
        print(f"  {name}: best {min(values):.3f} s, median {statistics.median(values):.3f} s")

    def ratio(a: str, b: str, use: Callable[[list[float]], float]) -> float:
        return use(times[a]) / use(times[b])

    for a, b, bar, label in (
        ("insert indexed", "insert encrypted", 1.10, "an index costs at most 10% on insert"),
        ("insert with a random unique column", "insert encrypted", 0, "the column alone"),
        ("insert indexed", "insert with a random unique column", 0, "the hashing alone"),
        ("lookup indexed", "lookup plain", 2.0, "a lookup within 2x of a plain indexed column"),
    ):
        best, median = ratio(a, b, min), ratio(a, b, statistics.median)
        verdict = "" if not bar else "PASS" if best <= bar else "FAIL"
        print(f"  {a} / {b}: {best:.3f} (median {median:.3f}) {verdict} [{label}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
