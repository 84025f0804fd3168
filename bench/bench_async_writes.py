"""Asyncio write cost per value: a wrap on the event loop against a thread hop per value.

Under SQLAlchemy's asyncio, a keyring that may wait on a network is called off the
event loop, on a worker thread; the hop costs tens of microseconds of CPU per
call. ``TenantKeyring`` (under a cached branch key) and ``KmsKeyring`` in bounded
reuse (while a wrapping key is at hand) can make most data keys in memory, and
say so with ``generate_data_key_in_memory``: only the calls that must wait hop.

Each scenario inserts ``--rows`` (2,000) rows of a 40-character value, one
``INSERT`` executemany through an ``AsyncEngine`` (aiosqlite, a SQLite file in a
temporary folder), after a warm-up statement that loads every key it needs (so
the measure is the steady state, not the first key). Scenarios, in one run:

1. a plain ``String(40)`` column: the floor;
2. ``LocalKeyring``: its calls always stay on the loop;
3. ``KmsKeyring(mode="bounded_reuse")``, KMS answered in the client after 5 ms
   (``bench/fake_kms.py``), and 4. the same with every write forced off the loop,
   as before ``generate_data_key_in_memory``;
5. ``TenantKeyring`` (a local master, 10 tenants), and 6. forced off the loop.

Reported: microseconds of wall time per row (median of ``--repeats``, each repeat
running the scenarios in the opposite order to the one before), and each ratio to
the plain column. Run::

    .venv/bin/python bench/bench_async_writes.py [--rows 2000] [--repeats 9]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import machine
from fake_kms import FakeKms, fake_aws_environment

import sqla_envelope
from sqla_envelope import EncryptedType, Encryptor, KmsKeyring, LocalKeyring
from sqla_envelope.keyrings.base import DataKey
from sqla_envelope.tenants import TenantKeyring, create_branch_key_table

KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/5e1f0c2a-7b3d-4c8e-9a61-2f4d8b7e0c13"
TENANTS = 10


class HopEveryWrite:
    """A keyring as it was before generate_data_key_in_memory: every write hops."""

    def __init__(self, keyring: Any) -> None:
        self._keyring = keyring

    def generate_data_key_in_memory(self, context: Any) -> DataKey | None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._keyring, name)


def _table(encrypted: bool) -> sa.Table:
    value: Any = (
        EncryptedType(sa.String(40), context_columns=("tenant_id",)) if encrypted else sa.String(40)
    )
    return sa.Table(
        "bench_async_writes",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant_id", sa.Integer, nullable=False),
        sa.Column("value", value),
    )


async def _insert_cost(folder: Path, table: sa.Table, rows: int) -> float:
    engine = create_async_engine(f"sqlite+aiosqlite:///{folder / 'data.db'}")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.drop_all)
            await conn.run_sync(table.metadata.create_all)
            warm = [{"id": -1 - t, "tenant_id": t, "value": "w" * 40} for t in range(TENANTS)]
            await conn.execute(table.insert(), warm)  # every key loaded: the steady state
        batch = [{"id": i, "tenant_id": i % TENANTS, "value": f"{i:040d}"} for i in range(rows)]
        started = time.perf_counter()
        async with engine.begin() as conn:
            await conn.execute(table.insert(), batch)
        return (time.perf_counter() - started) / rows
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    fake_aws_environment()
    folder = Path(tempfile.mkdtemp(prefix="bench-async-writes-"))
    keys_engine = sa.create_engine(f"sqlite:///{folder / 'branch-keys.db'}")
    create_branch_key_table(keys_engine)
    fake = FakeKms(latency=0.005)
    session = fake.attach(__import__("boto3").session.Session())

    def reuse() -> Any:
        return KmsKeyring(KEY_ARN, session=session, region_name="us-east-1", mode="bounded_reuse")

    master = LocalKeyring.generate()  # the branch keys, made once, stay under it

    def tenants() -> Any:
        return TenantKeyring(master, keys_engine)

    scenarios: dict[str, Callable[[], Any] | None] = {
        "plain String(40)": None,
        "LocalKeyring": LocalKeyring.generate,
        "KMS bounded reuse": reuse,
        "KMS bounded reuse, hop every write": lambda: HopEveryWrite(reuse()),
        "TenantKeyring": tenants,
        "TenantKeyring, hop every write": lambda: HopEveryWrite(tenants()),
    }
    costs: dict[str, list[float]] = {name: [] for name in scenarios}
    order = list(scenarios)
    for _ in range(args.repeats):
        for name in order:
            make = scenarios[name]
            if make is not None:
                sqla_envelope.configure(Encryptor(make()))
            table = _table(encrypted=make is not None)
            costs[name].append(asyncio.run(_insert_cost(folder, table, args.rows)))
            sqla_envelope.configure(None)
        order.reverse()
    keys_engine.dispose()

    print(machine())
    print(f"asyncio INSERT of {args.rows} rows, median of {args.repeats} repeats\n")
    floor = statistics.median(costs["plain String(40)"])
    print(f"{'scenario':<38} {'us/row':>8} {'x plain':>8}")
    for name, values in costs.items():
        cost = statistics.median(values)
        print(f"{name:<38} {cost * 1e6:8.1f} {cost / floor:8.2f}")
    for name in ("KMS bounded reuse", "TenantKeyring"):
        gain = statistics.median(costs[f"{name}, hop every write"]) / statistics.median(costs[name])
        print(f"\n{name}: {gain:.2f}x the rows per second of a hop on every write")


if __name__ == "__main__":
    main()
