"""What binding values to their row (``context_columns``) costs, against the same column unbound.

One run, through the ORM, N rows (20,000) spread over T tenants (100), each with a
tenant id and an encrypted 11-character value, into three tables: a plain String
column (the floor), an EncryptedType, and an EncryptedType bound to the tenant.

* insert: ``add_all`` + ``commit`` of the N rows;
* cold select: ``select(Model)`` of every row with the key cache cleared first;
* warm select: the same, right after (every data key cached).

Best and median of R repeats (5); ratios against the unbound column in the same run.
The binding adds, per value, the text of its row's tenant to the context (one small
dict and its canonical encoding), and per result, one pass that hands each value its
row's tenant.

Run::

    .venv/bin/python bench/bench_row_context.py [--rows 20000] [--tenants 100] \
        [--repeat 5] [--url URL]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqla_envelope import EncryptedType, Encryptor, LocalKeyring, configure


class Base(DeclarativeBase):
    pass


class Plain(Base):
    __tablename__ = "rc_plain"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    tenant_id: Mapped[int]
    ssn: Mapped[str] = mapped_column(sa.String(11))


class Unbound(Base):
    __tablename__ = "rc_unbound"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    tenant_id: Mapped[int]
    ssn: Mapped[str] = mapped_column(EncryptedType(sa.String(11)))


class Bound(Base):
    __tablename__ = "rc_bound"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    tenant_id: Mapped[int]
    ssn: Mapped[str] = mapped_column(EncryptedType(sa.String(11), context_columns=("tenant_id",)))


MODELS: dict[str, type[Any]] = {"plain": Plain, "unbound": Unbound, "bound": Bound}


def timed(action: Callable[[], Any]) -> float:
    gc.collect()
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--url", default=None, help="a database URL (default: a SQLite file)")
    args = parser.parse_args(argv)
    encryptor = Encryptor(LocalKeyring.generate())
    configure(encryptor)
    with tempfile.TemporaryDirectory() as folder:
        engine = sa.create_engine(args.url or f"sqlite:///{Path(folder) / 'bench.db'}")
        results: dict[str, dict[str, list[float]]] = {
            name: {"insert": [], "cold select": [], "warm select": []} for name in MODELS
        }
        for _ in range(args.repeat):
            for name, model in MODELS.items():  # interleaved: noise hits all alike
                Base.metadata.drop_all(engine)
                Base.metadata.create_all(engine)
                rows = [
                    {"id": i, "tenant_id": i % args.tenants, "ssn": f"{i:03d}-45-6789"[:11]}
                    for i in range(args.rows)
                ]

                def insert(model: type[Any] = model, rows: list[dict[str, Any]] = rows) -> None:
                    with Session(engine) as session:
                        session.add_all([model(**row) for row in rows])
                        session.commit()

                def select(model: type[Any] = model) -> None:
                    with Session(engine) as session:
                        assert len(session.scalars(sa.select(model)).all()) == args.rows

                results[name]["insert"].append(timed(insert))
                encryptor.clear_cache()
                results[name]["cold select"].append(timed(select))
                results[name]["warm select"].append(timed(select))
        Base.metadata.drop_all(engine)
    print(
        f"{args.rows:,} rows over {args.tenants} tenants, {engine.dialect.name}, "
        f"{args.repeat} repeats"
    )
    print(f"{'':12} {'plain':>10} {'unbound':>10} {'bound':>10}   bound/unbound (best, median)")
    for step in ("insert", "cold select", "warm select"):
        best = {name: min(results[name][step]) for name in MODELS}
        median = {name: statistics.median(results[name][step]) for name in MODELS}
        print(
            f"{step:12} {best['plain']:>9.3f}s {best['unbound']:>9.3f}s {best['bound']:>9.3f}s"
            f"   {best['bound'] / best['unbound']:.3f}, {median['bound'] / median['unbound']:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
