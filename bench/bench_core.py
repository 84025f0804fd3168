"""Core benchmark: format v1 and v2 against a plain column, the simplest envelope and a peer.

What it measures, in one run on a SQLite file database in a temporary folder, with
N rows of a 40-character random string (the same strings in every table; the
tables and their column types are described in core_models.py):

* insert: ``session.add_all(objects)`` + ``session.commit()``, one transaction
  into a freshly created table, for each of: a plain ``String(40)``; the
  simplest per-row envelope (a fresh AES-GCM data key per value, wrapped by
  AES-GCM under a local master key, no checks at all; written in the bench);
  sqla-envelope format v1 and format v2 (``EncryptedType(String(40))`` with
  ``Encryptor(LocalKeyring)`` on the defaults, v1 written under
  ``commitment_policy="forbid_encrypt_allow_decrypt"``); and sqlalchemy-utils'
  ``StringEncryptedType(String, key, AesGcmEngine)``, the peer;
* select: ``session.scalars(select(Model)).all()`` in a fresh session, then every
  row's value is read (and checked against what was inserted, outside the timer):
  - cold: v1 and v2 with ``clear_cache()`` right before, so one unwrap per row,
    through the default cache of 10,000 keys (a read of more rows evicts as it
    goes, as an application's first read of a big table would);
  - warm: the same tables through Encryptors whose cache holds every key, filled
    by an untimed read first, so every key is a cache hit;
  - the simple envelope and the peer, which have no key cache (cold = warm);
  - for information: the crypto floor of each format (``CryptoFloor``: per value
    only the unwrap, v2's derivation and commitment compare, and the AES-GCM
    decrypt, at fixed offsets), and a plain ``LargeBinary`` table of the v2
    envelopes (what the larger stored values cost with no decryption).

Each repeat runs every phase once; the order of the inserts, and of the selects,
flips from one repeat to the next. Before each timed phase the collector is run
and the heap frozen (``gc.collect(); gc.freeze()``), so a collection never
rescans the ORM heap mid-phase. The VM is shared and noisy: the table reports the
BEST and the median of R repeats, as µs a row and as throughput ratios against
the plain column and against the simple envelope measured in the same run. The
targets (verdict on best; exit status 1 if one fails or a counter is off):

* cold select v2 >= 0.85 x the simple envelope;
* insert v2 >= 0.75 x plain; warm select v2 >= 0.80 x plain;
* v2 takes at most 5% more time than v1, on insert and on cold select.

Run::

    .venv/bin/python bench/bench_core.py [--rows 20000] [--repeat 5] [--profile]

``--profile`` adds one v2 cold select under cProfile (after the timed repeats,
so it does not disturb them) and prints the top 15 functions by tottime.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session

# Run from a checkout without installing: make the package next to bench/ importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core_models import VALUE_LENGTH, Variants, build, random_values
from core_report import Results, Target, code_version, machine, print_table, print_targets

from sqla_envelope import Encryptor

# Other scripts import these from here.
__all__ = ["VALUE_LENGTH", "code_version", "machine", "random_values"]

INSERTS = {
    "insert plain": "plain",
    "insert simple envelope": "simple",
    "insert v1": "v1",
    "insert v2": "v2",
    "insert peer (utils)": "peer",
}
TARGETS = [
    Target("cold select v2 / simple envelope", "cold select v2", "select simple envelope", 0.85),
    Target("insert v2 / plain", "insert v2", "insert plain", 0.75),
    Target("warm select v2 / plain", "warm select v2", "select plain", 0.80),
    Target("v2 over v1, insert: extra time", "insert v2", "insert v1", 0.05, extra_cost=True),
    Target(
        "v2 over v1, cold select: extra time",
        "cold select v2",
        "cold select v1",
        0.05,
        extra_cost=True,
    ),
]


# -- timed phases -----------------------------------------------------------------


def timed(body: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``body`` with a collected, frozen heap; return (seconds, its result)."""
    gc.collect()
    gc.freeze()
    try:
        start = time.perf_counter()
        result = body()
        elapsed = time.perf_counter() - start
    finally:
        gc.unfreeze()
    return elapsed, result


Measure = Callable[[Callable[[], Any]], tuple[float, Any]]


def insert_phase(
    engine: Engine,
    base: type[DeclarativeBase],
    model: type[Any],
    values: list[str],
    measure: Measure = timed,
) -> float:
    """Recreate the table, then time add_all + commit of one object per value.

    ``measure`` runs the part that counts and returns its cost (callgrind_read.py
    passes one that counts instructions).
    """
    table = model.__table__
    base.metadata.drop_all(engine, tables=[table])
    base.metadata.create_all(engine, tables=[table])
    objects = [model(id=i, value=v) for i, v in enumerate(values, 1)]
    session = Session(engine)

    def body() -> None:
        session.add_all(objects)
        session.commit()

    elapsed, _ = measure(body)
    session.close()
    return elapsed


def select_phase(
    engine: Engine,
    model: type[Any],
    values: list[str],
    *,
    check: bool = True,
    measure: Measure = timed,
) -> float:
    """Time a full ORM read in a fresh session, touching every row's value."""
    session = Session(engine)

    def body() -> tuple[list[Any], int]:
        rows = session.scalars(select(model)).all()
        total = 0
        for row in rows:
            total += len(row.value)
        return rows, total

    elapsed, (rows, total) = measure(body)
    # Outside the timer: the read returned exactly what was written.
    assert len(rows) == len(values)
    if check:
        assert total == VALUE_LENGTH * len(values)
        for row in rows:
            if row.value != values[row.id - 1]:
                raise AssertionError(f"row {row.id} read back wrong")
    session.close()
    return elapsed


def copy_envelopes(engine: Engine, variants: Variants) -> None:
    """Fill the blob table with the v2 table's stored bytes, as they are."""
    table = variants.blob.__table__
    variants.base.metadata.drop_all(engine, tables=[table])
    variants.base.metadata.create_all(engine, tables=[table])
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO blob (id, value) SELECT id, value FROM secret_v2")


def stats_delta(encryptor: Encryptor, run: Callable[[], float]) -> tuple[float, dict[str, int]]:
    """Run a phase; return its time and what it did to the Encryptor's counters."""
    before = encryptor.stats()
    elapsed = run()
    after = encryptor.stats()
    keys = ("wraps", "unwraps", "cache_hits", "cache_misses")
    return elapsed, {k: after[k] - before[k] for k in keys}


def check_counters(counters: dict[str, dict[str, int]], rows: int) -> bool:
    """One wrap per inserted row; one unwrap and miss per row cold; only hits warm."""
    print()
    print("Encryptor.stats() deltas, last repeat")
    for phase, counts in counters.items():
        print(f"  {phase:<26}{counts}")
    ok = True
    for version in ("v1", "v2"):
        expected = {
            f"insert {version}": {"wraps": rows, "unwraps": 0},
            f"cold select {version}": {"wraps": 0, "unwraps": rows, "cache_misses": rows},
            f"warm select {version}": {"unwraps": 0, "cache_hits": rows, "cache_misses": 0},
        }
        for phase, wanted in expected.items():
            for key, count in wanted.items():
                if counters[phase][key] != count:
                    print(f"  UNEXPECTED: {phase} {key} = {counters[phase][key]}, want {count}")
                    ok = False
    return ok


def stored_sizes(engine: Engine) -> None:
    print()
    print("stored bytes a value (SQLite length(); the peer's are base64 characters)")
    with engine.connect() as connection:
        for table in ("simple", "secret_v1", "secret_v2", "peer"):
            size = connection.exec_driver_sql(f"SELECT avg(length(value)) FROM {table}").scalar()
            print(f"  {table:<12}{size:.0f}")


def profile_cold_select(engine: Engine, model: type[Any], encryptor: Encryptor, rows: int) -> None:
    session = Session(engine)
    encryptor.clear_cache()
    gc.collect()
    gc.freeze()
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        for row in session.scalars(select(model)).all():
            _ = row.value
        profiler.disable()
    finally:
        gc.unfreeze()
    session.close()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(15)
    print()
    print(f"cProfile of one v2 cold select ({rows:,} rows), top 15 by tottime")
    print("(cProfile adds a fixed cost per call: small, frequent functions look bigger)")
    print(out.getvalue().rstrip())


# -- main -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile one v2 cold select")
    args = parser.parse_args(argv)
    rows, repeat = args.rows, args.repeat

    print("machine")
    for key, value in machine():
        print(f"  {key:<15}{value}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")

    variants = build(rows)
    values = random_values(rows)
    print(f"rows: {rows:,} x {VALUE_LENGTH}-char str, repeats: {repeat}")
    print(f"encryptor v2: {variants.encryptors['v2']!r}")
    print(f"warm reads through: {variants.big_cache['v2']!r}")

    results: Results = {}
    counters: dict[str, dict[str, int]] = {}

    with tempfile.TemporaryDirectory(prefix="sqla-envelope-bench-") as folder:
        engine = create_engine(f"sqlite:///{folder}/bench.db")

        def record(phase: str, seconds: float) -> None:
            results.setdefault(phase, []).append(seconds)

        def insert(phase: str, name: str) -> Callable[[], None]:
            def run() -> None:
                model = variants.models[name]
                go = partial(insert_phase, engine, variants.base, model, values)
                if name in variants.encryptors:
                    seconds, counters[phase] = stats_delta(variants.encryptors[name], go)
                else:
                    seconds = go()
                record(phase, seconds)

            return run

        def read(phase: str, model: type[Any], *, check: bool = True) -> Callable[[], None]:
            return lambda: record(phase, select_phase(engine, model, values, check=check))

        def cold(version: str) -> Callable[[], None]:
            def run() -> None:
                encryptor = variants.encryptors[version]
                encryptor.clear_cache()
                go = partial(select_phase, engine, variants.models[version], values)
                seconds, counters[f"cold select {version}"] = stats_delta(encryptor, go)
                record(f"cold select {version}", seconds)

            return run

        def warm(version: str) -> Callable[[], None]:
            def run() -> None:
                encryptor, model = variants.big_cache[version], variants.warm[version]
                encryptor.clear_cache()
                select_phase(engine, model, values)  # untimed: fills the cache
                go = partial(select_phase, engine, model, values)
                seconds, counters[f"warm select {version}"] = stats_delta(encryptor, go)
                record(f"warm select {version}", seconds)
                encryptor.clear_cache()  # do not carry N cached ciphers into other phases

            return run

        inserts = [insert(phase, name) for phase, name in INSERTS.items()]
        selects = [
            read("select plain", variants.models["plain"]),
            read("select simple envelope", variants.models["simple"]),
            cold("v1"),
            cold("v2"),
            warm("v1"),
            warm("v2"),
            read("select peer (utils)", variants.models["peer"]),
            read("select floor v1 (info)", variants.floor["v1"]),
            read("select floor v2 (info)", variants.floor["v2"]),
            read("select blob v2 (info)", variants.blob, check=False),
        ]
        for r in range(repeat):
            started = time.perf_counter()
            flip = -1 if r % 2 else 1
            for phase in inserts[::flip]:
                phase()
            copy_envelopes(engine, variants)
            for phase in selects[::flip]:
                phase()
            print(f"  repeat {r + 1}/{repeat} done in {time.perf_counter() - started:.1f} s")

        # The first repeat ran every phase in the order listed: results keep it.
        plain = {p: "insert plain" if p.startswith("insert") else "select plain" for p in results}
        simple = {
            p: "insert simple envelope" if p.startswith("insert") else "select simple envelope"
            for p in results
        }
        print_table(results, rows, plain, simple)
        ok = print_targets(results, TARGETS)
        ok = check_counters(counters, rows) and ok
        stored_sizes(engine)

        if args.profile:
            profile_cold_select(engine, variants.models["v2"], variants.encryptors["v2"], rows)
        engine.dispose()

    print()
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:,.0f} MiB")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
