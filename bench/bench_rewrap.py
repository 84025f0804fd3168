"""Rewrap benchmark: key rotation over a whole column, its scaling, memory and KMS concurrency.

Two parts, in one run:

1. LocalKeyring scaling. For each size N in ``--sizes``, on a SQLite file in a
   temporary folder and on PostgreSQL (``--pg-url``, a dedicated table dropped
   afterwards), a table ``(id integer primary key, value EncryptedType(String(40)))``
   is filled with N rows, not through the ORM and not timed: each envelope is made
   with ``Encryptor.seal`` under the column's context ``{"table": <name>, "column":
   "value"}`` and the raw bytes are bulk inserted (Core executemany in chunks on
   SQLite, ``COPY ... FROM STDIN (FORMAT BINARY)`` through psycopg on PostgreSQL,
   then ``VACUUM ANALYZE``). Then ``rewrap_column(engine, table.c.value, new_keyring,
   batch_size=...)`` moves every value from key A to a new primary key B (then B to
   C, C to B, ... for the repeats), each in a FRESH subprocess (``--child``) so that
   its memory is its own: the child sets up (imports, engine, first connection,
   keyrings), reads its baseline, collects and freezes the heap, times the rewrap,
   then reads ``ru_maxrss`` right after it. One more child rewraps once more under
   ``tracemalloc`` for the Python heap's peak (tracemalloc slows the run: its time is
   information only). Each child then checks, outside the
   timer: the report (changed == N, nothing skipped, failed or conflicting); a
   plain-SQL count of the rows whose envelope header (version 1, one key, the key
   reference's length byte, then the reference) names the new key == N; and a
   sample of 1,000 rows decrypted through a keyring holding ONLY the new key, read
   back equal to what was written. It also times each batch (the ``progress``
   callback), so a per-batch cost that grows along the table shows up as
   last-tenth / first-tenth of the batches, and EXPLAINs the statements the walk
   sent (captured with a ``before_cursor_execute`` listener). Besides wall and CPU
   time per row it reports the run-queue wait (``/proc/thread-self/schedstat``: time
   the process was ready to run and got no CPU), which is what a machine shared with
   other work adds to the wall time.

   Bars, per database, between consecutive sizes: time grows linearly (µs per row
   of the larger size / µs per row of the smaller within 0.80..1.25, i.e. time(1M) /
   time(100k) about 10), and peak memory stays flat (peak RSS and tracemalloc peak
   of the larger size within 20% of the smaller's).

2. KMS rewrap concurrency. On SQLite, ``--kms-rows`` values written under a KMS key
   in direct mode through a fake KMS: ``bench/fake_kms.py`` (a botocore
   ``before-send`` hook that sleeps ``--latency`` and answers in the client, so
   botocore still validates, serializes, signs and parses every request),
   extended here with ``ReEncrypt`` (decrypt under the source key and context,
   seal under the destination key and context, so the fake's own Decrypt opens the
   result under the destination key). Then ``rewrap_column(..., new_kms_keyring,
   workers=W)`` for W = 1 (one KMS call at a time), None (the default: 16 threads
   for a remote keyring) and 32, each on a fresh copy of the same table and with a
   fresh target keyring whose boto3 client is built outside the timer. Bar: the
   default and 32 workers reach >= 8x the rows/s of one at a time. Checked: one
   ReEncrypt per value and no Decrypt, Encrypt or GenerateDataKey during the
   rewrap, every row under the new key ARN (plain SQL), and a sample decrypted
   through a keyring holding only the new key. ``max_pool_connections`` on every
   keyring is 64, above every worker count (with the fake no connection is ever
   opened, so this is for form's sake). Every thread shares one GIL, so the client
   CPU of a KMS call bounds the speed-up: an untimed calibration measures it (300
   ReEncrypt calls, no latency), the fake's own CPU (AWS's work) is measured apart,
   and each run reports CPU per row, cores kept busy and the "CPU ceiling" (one-at-a-
   time µs/row over the run's CPU µs/row).

Run::

    .venv/bin/python bench/bench_rewrap.py [--sizes 100000,1000000] [--rows N]
        [--db sqlite|postgresql|both] [--batch-size 1000] [--kms-rows 5000]
        [--latency 0.005] [--repeat 2] [--only local|kms] [--profile]

The VM is shared and noisy: every timed case runs ``--repeat`` times (each rewrap of
a size in a fresh child, rotating B -> C -> B ...; the KMS cases in an order that
flips from one repeat to the next) and the tables report the BEST run, the median
and every run; memory is the highest peak of the runs. ``--rows N`` is short for
``--sizes N/10,N``. ``--profile`` adds, per database, one
more child that rewraps the smallest size under cProfile and prints the top
functions by tottime.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import itertools
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

# Run from a checkout without installing: the package next to bench/, and bench/ itself.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import machine

from sqla_envelope import EncryptedType, EncryptionContext, Encryptor, LocalKeyring
from sqla_envelope.maintenance import ColumnReport, rewrap_column

VALUE_LENGTH = 40
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# Three local keys of equal id length, so every envelope keeps its size across rotations.
KEY_IDS = ("key-000A", "key-000B", "key-000C")
FILL_CHUNK = 10_000
SAMPLE = 1_000
LINEAR_BAND = (0.80, 1.25)  # µs/row of the larger size over the smaller's
FLAT_MEMORY = 1.20  # peak memory of the larger size over the smaller's
REGION = "us-east-1"
KMS_OLD = "arn:aws:kms:us-east-1:111122223333:key/0b7c1e2a-4d3f-4a5b-8c6d-7e8f9a0b1c2d"
KMS_NEW = "arn:aws:kms:us-east-1:111122223333:key/9f8e7d6c-5b4a-4392-8172-6f5e4d3c2b1a"
POOL_CONNECTIONS = 64  # max_pool_connections of every KMS keyring: >= every worker count
KMS_WORKERS: tuple[int | None, ...] = (1, None, 32)
DEFAULT_REMOTE_WORKERS = 16  # what rewrap_column uses for workers=None with a remote keyring
SPEED_UP_BAR = 8.0
KMS_SAMPLE = 200
WARM_UP = EncryptionContext({"bench": "warm-up"})  # the untimed warm-up's own context


def value_of(row_id: int) -> str:
    """The plaintext of row ``row_id``: 40 hex characters, recomputable by any process."""
    return hashlib.blake2b(row_id.to_bytes(8, "big"), digest_size=20).hexdigest()


def build_table(name: str, encryptor: Encryptor) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("value", EncryptedType(sa.String(VALUE_LENGTH), encryptor)),
    )


def raw_view(name: str) -> sa.TableClause:
    """The same table, stored bytes in and out."""
    return sa.table(name, sa.column("id", sa.Integer), sa.column("value", sa.LargeBinary))


# -- filling (not timed) ----------------------------------------------------------------


def envelopes(table: sa.Table, encryptor: Encryptor, start: int, stop: int) -> Iterator[bytes]:
    type_ = table.c.value.type
    context = type_.encryption_context()
    assert dict(context) == {"table": table.name, "column": "value"}
    encode = type_.codec.encode
    for row_id in range(start, stop):
        yield encryptor.seal(encode(value_of(row_id)), context)


def fill(engine: Engine, table: sa.Table, encryptor: Encryptor, rows: int) -> None:
    """N rows of envelopes made with Encryptor.seal, bulk inserted as raw bytes."""
    table.metadata.drop_all(engine)
    table.metadata.create_all(engine)
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            pg = raw.driver_connection
            assert pg is not None
            with pg.cursor() as cursor:
                sql = f"COPY {table.name} (id, value) FROM STDIN (FORMAT BINARY)"
                with cursor.copy(sql) as copy:
                    copy.set_types(["int4", "bytea"])
                    sealed = envelopes(table, encryptor, 1, rows + 1)
                    for row_id, envelope in enumerate(sealed, 1):
                        copy.write_row((row_id, envelope))
            pg.commit()
        finally:
            raw.close()
        vacuum(engine, table.name)
        return
    insert = sa.insert(raw_view(table.name))
    with engine.begin() as conn:
        for start in range(1, rows + 1, FILL_CHUNK):
            stop = min(start + FILL_CHUNK, rows + 1)
            sealed = envelopes(table, encryptor, start, stop)
            conn.execute(insert, [{"id": i, "value": e} for i, e in enumerate(sealed, start)])


def vacuum(engine: Engine, name: str) -> None:
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM ANALYZE {name}")


# -- checks ---------------------------------------------------------------------------------


def count_under(conn: sa.Connection, name: str, key_ref: str) -> int:
    """Rows whose envelope's first (only) wrapped key is under ``key_ref``, in plain SQL.

    The header of a one-key v1 envelope: 0x01, 0x01, len(key_ref), key_ref.
    """
    head = bytes((1, 1, len(key_ref))) + key_ref.encode("ascii")
    view = raw_view(name)
    stmt = (
        sa.select(sa.func.count())
        .select_from(view)
        .where(sa.func.substr(view.c.value, 1, len(head)) == sa.literal(head, sa.LargeBinary))
    )
    return int(conn.execute(stmt).scalar_one())


def check_rewrap(
    engine: Engine,
    name: str,
    report: ColumnReport,
    rows: int,
    new_ref: str,
    old_ref: str,
    reader: Encryptor,
    sample: int,
) -> list[str]:
    """What is wrong after a rewrap of ``rows`` rows to ``new_ref`` (empty: all good)."""
    problems = []
    if (report.examined, report.changed) != (rows, rows):
        problems.append(f"examined {report.examined}, changed {report.changed}, want {rows}")
    if report.skipped or report.conflicts or report.failed:
        problems.append(
            f"skipped {report.skipped}, conflicts {report.conflicts}, failed {report.failed}"
        )
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(raw_view(name))).scalar_one()
        under_new = count_under(conn, name, new_ref)
        under_old = count_under(conn, name, old_ref)
        if (total, under_new, under_old) != (rows, rows, 0):
            problems.append(
                f"rows {total}, under the new key {under_new}, under the old {under_old}; "
                f"want {rows}, {rows}, 0"
            )
        table = build_table(name, reader)  # a keyring holding only the new key
        ids = sorted({1, rows, *random.Random(rows).sample(range(1, rows + 1), min(sample, rows))})
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            stmt = sa.select(table.c.id, table.c.value).where(table.c.id.in_(chunk))
            got = {row_id: value for row_id, value in conn.execute(stmt)}
            wrong = [i for i in chunk if got.get(i) != value_of(i)]
            if wrong:
                problems.append(f"{len(wrong)} sampled rows read back wrong, e.g. id {wrong[0]}")
                break
    return problems


# -- memory -----------------------------------------------------------------------------------


def run_queue_ns(threads: str = "thread-self") -> int:
    """Nanoseconds the thread(s) waited on a run queue, ready but given no CPU.

    From /proc/<thread>/schedstat; ``"self/task/*"`` sums every live thread of the
    process. On a machine shared with other work this is the wall time lost to it.
    """
    paths = Path("/proc").glob(threads) if "*" in threads else [Path("/proc") / threads]
    total = 0
    for path in paths:
        try:
            total += int((path / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total


def load_average() -> float:
    return os.getloadavg()[0]


def max_rss_kib() -> int:
    """ru_maxrss: the process's peak resident set since it started, KiB on Linux."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def current_rss_kib() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


# -- the child: one rewrap in a process of its own ----------------------------------------


def capture_statements(engine: Engine) -> tuple[dict[str, Any], Callable[..., None]]:
    """First parameters seen for each distinct SQL statement the engine sends, and the hook."""
    seen: dict[str, Any] = {}

    @event.listens_for(engine, "before_cursor_execute")
    def capture(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if statement not in seen:
            seen[statement] = parameters[0] if many else parameters

    return seen, capture


def explain(engine: Engine, statements: dict[str, Any]) -> list[str]:
    """The plan of each captured SELECT and UPDATE (nothing is executed)."""
    prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    lines = []
    with engine.connect() as conn:
        for statement, parameters in list(statements.items()):
            verb = statement.lstrip().split(None, 1)[0].upper()
            if verb not in ("SELECT", "UPDATE"):
                continue
            plan = conn.exec_driver_sql(prefix + statement, parameters).all()
            lines.append(_clip(" ".join(statement.split())))
            lines.extend(_clip("    -> " + str(row[-1])) for row in plan)
        conn.rollback()
    return lines


def _clip(line: str, width: int = 200) -> str:
    return line if len(line) <= width else line[: width - 3] + "..."


def batch_drift(starts: list[float]) -> dict[str, float]:
    """Median batch time of the first and last tenth of the batches, in ms."""
    durations = [b - a for a, b in itertools.pairwise(starts)]
    if len(durations) < 10:
        return {}
    tenth = max(1, len(durations) // 10)
    first = statistics.median(durations[:tenth]) * 1e3
    last = statistics.median(durations[-tenth:]) * 1e3
    return {"first_ms": first, "last_ms": last, "ratio": last / first, "batches": len(durations)}


def child(args: argparse.Namespace) -> int:
    """Rewrap one table once; print one line ``RESULT {json}``."""
    import tracemalloc

    engine = sa.create_engine(args.url)
    source = LocalKeyring.from_file(args.source_keys)
    target = LocalKeyring.from_file(args.target_keys)
    reader = Encryptor(LocalKeyring.from_file(args.check_keys))
    old_ref = args.old_key
    table = build_table(args.table, Encryptor(source))
    with engine.connect() as conn:  # connect, initialize the dialect
        rows = conn.execute(sa.select(sa.func.count()).select_from(raw_view(args.table)))
        assert rows.scalar_one() == args.rows
    statements, capture = capture_statements(engine)
    batch_starts: list[float] = []

    def progress(_: ColumnReport) -> None:
        batch_starts.append(time.perf_counter())

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    gc.collect()
    if args.trace:
        tracemalloc.start()
    baseline_max, baseline_now = max_rss_kib(), current_rss_kib()
    traced_base = tracemalloc.get_traced_memory()[0] if args.trace else 0
    gc.freeze()
    load = load_average()
    run_queue = run_queue_ns()
    cpu = time.process_time()
    start = time.perf_counter()
    batch_starts.append(start)
    if profiler is not None:
        profiler.enable()
    report = rewrap_column(
        engine, table.c.value, target, batch_size=args.batch_size, progress=progress
    )
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - start
    event.remove(engine, "before_cursor_execute", capture)
    cpu = time.process_time() - cpu
    run_queue = run_queue_ns() - run_queue
    peak_max, end_now = max_rss_kib(), current_rss_kib()
    traced_peak = 0
    if args.trace:
        traced_peak = tracemalloc.get_traced_memory()[1] - traced_base
        tracemalloc.stop()
    gc.unfreeze()

    problems = check_rewrap(
        engine, args.table, report, args.rows, target.primary, old_ref, reader, SAMPLE
    )
    result = {
        "seconds": elapsed,
        "cpu": cpu,
        "run_queue": run_queue / 1e9,
        "load": [load, load_average()],
        "baseline_max_kib": baseline_max,
        "baseline_rss_kib": baseline_now,
        "peak_rss_kib": peak_max,
        "end_rss_kib": end_now,
        "traced_peak_bytes": traced_peak,
        "report": report.summary(),
        "problems": problems,
        "drift": batch_drift(batch_starts),
        "plans": explain(engine, statements),
    }
    if profiler is not None:
        import io
        import pstats

        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        result["profile"] = out.getvalue()
    engine.dispose()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# -- the parent: part 1, LocalKeyring scaling -------------------------------------------------


def write_keyrings(folder: Path) -> dict[str, Path]:
    """Key files: A; A+B (primary B); A+B+C (primary C); B only; C only."""
    a, b, c = KEY_IDS
    keys = {key_id: os.urandom(32) for key_id in KEY_IDS}
    plan = {
        "A": ({a}, a),
        "AB": ({a, b}, b),
        "ABC": ({a, b, c}, c),
        "B": ({b}, b),
        "C": ({c}, c),
    }
    paths = {}
    for label, (ids, primary) in plan.items():
        path = folder / f"keys-{label}.json"
        LocalKeyring({k: keys[k] for k in sorted(ids)}, primary=primary).to_file(path)
        paths[label] = path
    return paths


def run_child(
    url: str,
    name: str,
    rows: int,
    batch_size: int,
    keys: dict[str, Path],
    step: tuple[str, str, str, str],
    *,
    trace: bool = False,
    profile: bool = False,
) -> dict[str, Any]:
    source, target, check, old_key = step
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--url",
        url,
        "--table",
        name,
        "--rows",
        str(rows),
        "--batch-size",
        str(batch_size),
        "--source-keys",
        str(keys[source]),
        "--target-keys",
        str(keys[target]),
        "--check-keys",
        str(keys[check]),
        "--old-key",
        old_key,
    ]
    if trace:
        command.append("--trace")
    if profile:
        command.append("--profile")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(
        f"child failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
    )


@contextmanager
def database(db: str, pg_url: str, size: int) -> Iterator[tuple[str, str, Path]]:
    """(url, table name, folder for key files) of a fresh place to hold ``size`` rows."""
    with tempfile.TemporaryDirectory(prefix="sqla-envelope-bench-rewrap-") as folder:
        name = f"bench_rewrap_{os.getpid()}_{size}"
        if db == "sqlite":
            yield f"sqlite:///{folder}/rewrap.db", name, Path(folder)
            return
        try:
            yield pg_url, name, Path(folder)
        finally:
            engine = sa.create_engine(pg_url)
            with engine.begin() as conn:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
            engine.dispose()


def reachable(url: str) -> str | None:
    try:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


def rotations() -> Iterator[tuple[str, str, str, str]]:
    """Successive rewraps of one table: A -> B, then B -> C, C -> B, B -> C, ...

    Each is (keyring file of the column, of the target, of the check, old key id):
    the column's keyring reads the current key, the target wraps under its primary,
    and the check keyring holds the new key alone.
    """
    a, b, c = KEY_IDS
    yield ("A", "AB", "B", a)
    while True:
        yield ("AB", "ABC", "C", b)
        yield ("ABC", "AB", "B", c)


def scale_one(db: str, size: int, args: argparse.Namespace, *, profile: bool) -> dict[str, Any]:
    """Fill a table of ``size`` rows, then rewrap it ``--repeat`` times, once traced."""
    with database(db, args.pg_url, size) as (url, name, folder):
        keys = write_keyrings(folder)
        engine = sa.create_engine(url)
        table = build_table(name, Encryptor(LocalKeyring.from_file(keys["A"])))
        started = time.perf_counter()
        fill(engine, table, Encryptor(LocalKeyring.from_file(keys["A"])), size)
        engine.dispose()
        print(
            f"    {db} {size:>9,} rows filled in {time.perf_counter() - started:.1f} s", flush=True
        )
        steps = rotations()

        def run(what: str, **options: bool) -> dict[str, Any]:
            step = next(steps)
            if db == "postgresql":  # clear the dead rows the previous rewrap left
                engine = sa.create_engine(url)
                vacuum(engine, name)
                engine.dispose()
            result = run_child(url, name, size, args.batch_size, keys, step, **options)
            arrow = f"{step[3][-1]}->{keys[step[1]].stem[-1]}"
            print(f"    {db} {size:>9,} {what} {arrow}: {result['seconds']:.2f} s", flush=True)
            return result

        runs: dict[str, Any] = {
            "timed": [run(f"rewrap {i + 1}/{args.repeat}") for i in range(args.repeat)]
        }
        runs["traced"] = run("rewrap under tracemalloc", trace=True)
        if profile:
            runs["profile"] = run("rewrap under cProfile", profile=True)
        return runs


def mib(kib: float) -> str:
    return f"{kib / 1024:,.1f}"


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of the timed rewraps, with the worst memory peak of them all."""
    best = dict(min(runs, key=lambda run: run["seconds"]))
    worst = max(runs, key=lambda run: run["peak_rss_kib"])
    best["peak_rss_kib"] = worst["peak_rss_kib"]
    best["growth_kib"] = max(run["peak_rss_kib"] - run["baseline_rss_kib"] for run in runs)
    best["median"] = statistics.median(run["seconds"] for run in runs)
    best["all"] = [run["seconds"] for run in runs]
    return best


def print_scaling(db: str, results: dict[int, dict[str, Any]]) -> bool:
    ok = True
    best = {size: best_of(runs["timed"]) for size, runs in results.items()}
    repeat = len(next(iter(results.values()))["timed"])
    print()
    print(
        f"LocalKeyring rewrap on {db}: one fresh process per rewrap; best of {repeat} "
        "(its CPU, run-queue wait, load and batch times), then every run's seconds"
    )
    print(
        f"{'rows':>10}{'seconds':>9}{'rows/s':>9}{'µs/row':>9}{'median':>9}{'CPU µs/row':>11}"
        f"{'runq µs/row':>12}{'load 1m':>11}{'batch ms 1st/last 10%':>24}  all (s)"
    )
    for size, run in best.items():
        seconds = run["seconds"]
        drift = run["drift"]
        drift_text = (
            f"{drift['first_ms']:.1f}/{drift['last_ms']:.1f} ({drift['ratio']:.2f})"
            if drift
            else "-"
        )
        load = "{:.1f}->{:.1f}".format(*run["load"])
        runs_text = " ".join(f"{t:.2f}" for t in run["all"])
        print(
            f"{size:>10,}{seconds:>9.2f}{size / seconds:>9,.0f}{seconds / size * 1e6:>9.2f}"
            f"{run['median'] / size * 1e6:>9.2f}{run['cpu'] / size * 1e6:>11.2f}"
            f"{run['run_queue'] / size * 1e6:>12.2f}{load:>11}{drift_text:>24}  {runs_text}"
        )
    print(
        "  µs/row and median: wall time per row, best and median run. runq: time the process "
        "was ready to run but got no CPU\n  (other work on the machine). batch ms: median "
        "batch time in the first and last tenth of the batches"
    )
    print()
    print(
        f"{'rows':>10}{'base RSS':>10}{'peak RSS':>10}{'growth':>8}"
        f"{'traced peak':>13}{'traced run s':>14}   (MiB; peak RSS = ru_maxrss right after the "
        "rewrap, the highest of the timed runs; growth = peak - RSS before it)"
    )
    for size, runs in results.items():
        run, traced = best[size], runs["traced"]
        print(
            f"{size:>10,}{mib(run['baseline_rss_kib']):>10}{mib(run['peak_rss_kib']):>10}"
            f"{mib(run['growth_kib']):>8}{mib(traced['traced_peak_bytes'] / 1024):>13}"
            f"{traced['seconds']:>14.2f}"
        )
    for size, runs in results.items():
        labelled = [(f"timed {i + 1}", run) for i, run in enumerate(runs["timed"])]
        labelled += [(label, run) for label, run in runs.items() if label != "timed"]
        for label, run in labelled:
            verdict = "OK" if not run["problems"] else "WRONG: " + "; ".join(run["problems"])
            print(f"  check {size:,} {label:<8} {run['report']}  -> {verdict}")
            ok = ok and not run["problems"]
    sizes = list(results)
    pairs = list(itertools.pairwise(sizes))
    if len(sizes) > 2:
        pairs.append((sizes[0], sizes[-1]))
    if pairs:
        print()
        print(
            f"{'sizes':<22}{'rows x':>7}{'time x':>8}{'µs/row x':>10}{'median x':>10}"
            f"{'CPU/row x':>11}{'-runq x':>9}{'peak RSS x':>12}{'growth x':>10}{'traced x':>10}"
            "  verdict"
        )
    for small, big in pairs:
        a, b = best[small], best[big]
        rows_x = big / small
        time_x = b["seconds"] / a["seconds"]
        per_row_x = time_x / rows_x
        median_x = b["median"] / a["median"] / rows_x
        cpu_x = b["cpu"] / a["cpu"] / rows_x
        busy_x = (b["seconds"] - b["run_queue"]) / (a["seconds"] - a["run_queue"]) / rows_x
        rss_x = b["peak_rss_kib"] / a["peak_rss_kib"]
        growth_x = b["growth_kib"] / max(1, a["growth_kib"])
        traced_x = results[big]["traced"]["traced_peak_bytes"] / max(
            1, results[small]["traced"]["traced_peak_bytes"]
        )
        linear = LINEAR_BAND[0] <= per_row_x <= LINEAR_BAND[1]
        flat = rss_x <= FLAT_MEMORY and traced_x <= FLAT_MEMORY
        verdicts = [
            "linear" if linear else "NOT LINEAR",
            "memory flat" if flat else "MEMORY GROWS",
        ]
        if not linear and LINEAR_BAND[0] <= busy_x <= LINEAR_BAND[1]:
            verdicts[0] += " (linear once run-queue wait is taken out: machine busy)"
        ok = ok and linear and flat
        print(
            f"{f'{small:,} -> {big:,}':<22}{rows_x:>7.1f}{time_x:>8.2f}{per_row_x:>10.2f}"
            f"{median_x:>10.2f}{cpu_x:>11.2f}{busy_x:>9.2f}{rss_x:>12.2f}{growth_x:>10.2f}"
            f"{traced_x:>10.2f}  {', '.join(verdicts)}"
        )
    if pairs:
        print(
            f"  bars (on the best wall times and the peaks): µs/row x within {LINEAR_BAND[0]:.2f}"
            f"..{LINEAR_BAND[1]:.2f}; peak RSS x and tracemalloc peak x <= {FLAT_MEMORY:.2f}."
            "\n  -runq x: (wall - run-queue wait) per row of the best runs, larger over smaller"
        )
    first = next(iter(results.values()))["timed"][0]
    print()
    print(f"statements the walk sent on {db}, and their plans:")
    for line in first["plans"]:
        print(f"  {line}")
    for size, runs in results.items():
        if "profile" in runs:
            print()
            print(f"cProfile of a rewrap of {size:,} rows on {db}, top 20 by tottime:")
            print(runs["profile"]["profile"].rstrip())
    return ok


def scaling(args: argparse.Namespace, sizes: list[int], dbs: list[str]) -> bool:
    ok = True
    for db in dbs:
        if db == "postgresql":
            problem = reachable(args.pg_url)
            if problem is not None:
                print(f"\nPostgreSQL at {args.pg_url} is not reachable, skipped: {problem}")
                ok = ok and args.db != "postgresql"
                continue
        results = {}
        for i, size in enumerate(sizes):
            results[size] = scale_one(db, size, args, profile=args.profile and i == 0)
        ok = print_scaling(db, results) and ok
    return ok


# -- part 2: KMS rewrap concurrency -------------------------------------------------------------


def make_fake_kms(latency: float) -> Any:
    """bench/fake_kms.py's FakeKms, answering ReEncrypt as well, and timing its own CPU.

    ReEncrypt opens the blob as the fake's Decrypt does (the source key, when named,
    must match; the source context must be the one it was sealed with), then seals
    the data key under the destination key and context, so a later Decrypt under the
    destination key opens it. Counted as one ReEncrypt call, after one latency.
    """
    import base64

    import fake_kms

    class ReEncryptingFakeKms(fake_kms.FakeKms):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.cpu = 0.0  # CPU seconds spent answering (AWS's work, not the client's)
            self._cpu_lock = threading.Lock()

        def on_send(self, request: Any, event_name: str, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return super().on_send(request, event_name, **kwargs)
            finally:
                spent = time.thread_time() - started
                with self._cpu_lock:
                    self.cpu += spent

        def _ReEncrypt(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
            source = {
                "CiphertextBlob": params["CiphertextBlob"],
                "EncryptionContext": params.get("SourceEncryptionContext"),
            }
            if "SourceKeyId" in params:
                source["KeyId"] = params["SourceKeyId"]
            opened = self._Decrypt(source)
            destination = self._arn(params["DestinationKeyId"])
            blob = self._seal(
                destination,
                base64.b64decode(opened["Plaintext"]),
                params.get("DestinationEncryptionContext"),
            )
            return {
                "CiphertextBlob": base64.b64encode(blob).decode("ascii"),
                "SourceKeyId": opened["KeyId"],
                "KeyId": destination,
                "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                "SourceKeyMaterialId": opened["KeyMaterialId"],
                "DestinationKeyMaterialId": self._master(destination)[1],
            }

    return ReEncryptingFakeKms(latency=latency, region=REGION)


def timed(body: Callable[[], Any]) -> tuple[float, float, Any]:
    """Run ``body`` with a collected, frozen heap; (wall s, CPU s of all threads, result)."""
    gc.collect()
    gc.freeze()
    try:
        cpu = time.process_time()
        start = time.perf_counter()
        result = body()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
    finally:
        gc.unfreeze()
    return elapsed, cpu, result


def kms_concurrency(args: argparse.Namespace) -> bool:
    import boto3
    from fake_kms import fake_aws_environment

    from sqla_envelope import KmsKeyring

    fake_aws_environment(REGION)
    fake = make_fake_kms(args.latency)
    session = fake.attach(boto3.session.Session())
    rows = args.kms_rows
    assert max(w or DEFAULT_REMOTE_WORKERS for w in KMS_WORKERS) <= POOL_CONNECTIONS

    def keyring(key_arn: str, **options: Any) -> KmsKeyring:
        return KmsKeyring(
            key_arn,
            session=session,
            region_name=REGION,
            max_pool_connections=POOL_CONNECTIONS,
            **options,
        )

    print()
    print(
        f"KMS rewrap: {rows:,} values in direct mode on SQLite, KMS answered in the client "
        f"after {args.latency * 1e3:g} ms (fake_kms.py + ReEncrypt), "
        f"max_pool_connections={POOL_CONNECTIONS}, batch_size={args.batch_size}"
    )
    results: dict[str, list[KmsRun]] = {}
    with tempfile.TemporaryDirectory(prefix="sqla-envelope-bench-rewrap-kms-") as folder:
        engine = sa.create_engine(f"sqlite:///{folder}/kms.db")
        writer = Encryptor(keyring(KMS_OLD, prefetch=32, prefetch_workers=16))
        table = build_table("kms_values", writer)
        started = time.perf_counter()
        writer.reserve(table.c.value.type.encryption_context(), rows)
        fill(engine, table, writer, rows)
        writer.close()
        getattr(writer.keyring, "close", lambda: None)()
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE kms_pristine AS SELECT id, value FROM kms_values")
        print(f"  filled under {KMS_OLD} in {time.perf_counter() - started:.1f} s")
        calibrate(fake, keyring, args.latency)

        # Each repeat runs every case once; the order flips from one repeat to the next.
        plan = [
            workers
            for r in range(args.repeat)
            for workers in (KMS_WORKERS if r % 2 == 0 else KMS_WORKERS[::-1])
        ]
        for workers in plan:
            label = f"workers={workers}" + (
                f" ({DEFAULT_REMOTE_WORKERS} threads)" if workers is None else ""
            )
            with engine.begin() as conn:
                conn.exec_driver_sql("DELETE FROM kms_values")
                conn.exec_driver_sql("INSERT INTO kms_values SELECT id, value FROM kms_pristine")
            target = keyring(KMS_NEW, prefetch=0)
            # Outside the timer: build the boto3 client (one Encrypt, under another context).
            target.wrap_data_key(os.urandom(32), WARM_UP)
            before = fake.calls()
            fake.take_peak()
            fake_cpu = fake.cpu
            load = load_average()
            seconds, cpu, report = timed(
                lambda target=target, workers=workers: rewrap_column(
                    engine, table.c.value, target, batch_size=args.batch_size, workers=workers
                )
            )
            run = KmsRun(
                label, seconds, cpu, fake.cpu - fake_cpu, (load, load_average()), fake.take_peak()
            )
            after = fake.calls()
            run.calls = {
                op: n - before.get(op, 0) for op, n in after.items() if n - before.get(op, 0)
            }
            reader = Encryptor(keyring(KMS_NEW, prefetch=0))
            run.problems = check_rewrap(
                engine, "kms_values", report, rows, KMS_NEW, KMS_OLD, reader, KMS_SAMPLE
            )
            reader.close()
            target.close()
            wanted = {"ReEncrypt": rows}
            if run.calls != wanted:
                run.problems.append(f"KMS calls {run.calls}, want {wanted}")
            results.setdefault(label, []).append(run)
            print(f"    {label:<28} {seconds:7.2f} s", flush=True)
        engine.dispose()
    ok = print_kms(results, rows)
    print(f"  KMS calls in all (fill, warm-ups, checks included): {fake.calls()}")
    return ok


def calibrate(fake: Any, keyring: Callable[..., Any], latency: float, calls: int = 300) -> None:
    """CPU of one KMS call in this process, one at a time and with no latency, untimed run."""
    context = EncryptionContext({"bench": "calibration"})
    source, target = keyring(KMS_OLD, prefetch=0), keyring(KMS_NEW, prefetch=0)
    target.wrap_data_key(os.urandom(32), context)  # build the client
    saved, fake.latency = fake.latency, 0.0
    try:
        copies = [source.generate_data_key(context).wrapped_keys for _ in range(calls)]
        gc.collect()
        fake_cpu, cpu = fake.cpu, time.process_time()
        for wrapped in copies:
            target.reencrypt_data_key(wrapped, context)
        cpu, fake_cpu = time.process_time() - cpu, fake.cpu - fake_cpu
    finally:
        fake.latency = saved
    per_call = cpu / calls
    client = per_call - fake_cpu / calls
    print(
        f"  one ReEncrypt call, no latency, one at a time: {per_call * 1e6:.0f} µs of CPU in this "
        f"process, {fake_cpu / calls * 1e6:.0f} µs of it in the fake's answer, so "
        f"{client * 1e6:.0f} µs in botocore and the keyring;\n  a process holding the GIL that "
        f"long per call makes at most {1 / client:,.0f} calls/s, "
        f"{(latency + client) / client:.1f}x one at a time at {latency * 1e3:g} ms"
    )


@dataclass
class KmsRun:
    label: str
    seconds: float
    cpu: float  # all threads
    fake_cpu: float  # of which answering KMS requests in the fake
    load: tuple[float, float]
    in_flight: int  # most KMS requests held at once
    calls: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def print_kms(results: dict[str, list[KmsRun]], rows: int) -> bool:
    ok = True
    best = {label: min(runs, key=lambda run: run.seconds) for label, runs in results.items()}
    serial = next(iter(best.values())).seconds / rows
    repeat = len(next(iter(results.values())))
    print()
    print(f"best of {repeat} per case (and its CPU, load and calls); every run's seconds last")
    print(
        f"{'rewrap_column':<28}{'seconds':>8}{'rows/s':>8}{'µs/row':>8}{'CPU µs/row':>11}"
        f"{'fake µs/row':>12}{'CPU/wall':>9}{'load 1m':>10}{'speed-up':>10}{'bar':>5}"
        f"  {'verdict':<10}{'CPU ceiling':>12}{'in flight':>10}  KMS calls / all (s)"
    )
    for i, (label, run) in enumerate(best.items()):
        per_row = run.seconds / rows
        cpu_per_row = run.cpu / rows
        speed_up = serial / per_row
        if i == 0:
            bar_text, verdict = "-", "-"
        else:
            passed = speed_up >= SPEED_UP_BAR
            ok = ok and passed
            bar_text, verdict = f"{SPEED_UP_BAR:g}x", "PASS" if passed else "BELOW BAR"
        load = "{:.1f}->{:.1f}".format(*run.load)
        runs_text = " ".join(f"{r.seconds:.2f}" for r in results[label])
        print(
            f"{label:<28}{run.seconds:>8.2f}{rows / run.seconds:>8,.0f}{per_row * 1e6:>8.0f}"
            f"{cpu_per_row * 1e6:>11.0f}{run.fake_cpu / rows * 1e6:>12.0f}"
            f"{run.cpu / run.seconds:>9.2f}{load:>10}"
            f"{speed_up:>9.2f}x{bar_text:>5}  {verdict:<10}{serial / cpu_per_row:>11.1f}x"
            f"{run.in_flight:>10}  {run.calls} / {runs_text}"
        )
    for label, runs in results.items():
        problems = [p for run in runs for p in run.problems]
        verdict = "OK" if not problems else "WRONG: " + "; ".join(problems)
        print(f"  check {label:<28} ({len(runs)} runs) -> {verdict}")
        ok = ok and not problems
    print(
        f"  expected per run: ReEncrypt = {rows:,} (one per value), no Decrypt, Encrypt or "
        "GenerateDataKey.\n  fake µs/row: the part of CPU µs/row spent in the fake's answers "
        "(AWS's work, counted here because it runs in this process).\n"
        "  in flight: the most KMS requests held at once. CPU/wall: cores "
        "kept busy (the GIL allows about 1).\n  CPU ceiling: the most speed-up a process "
        "spending CPU µs/row under the GIL can reach (one-at-a-time µs/row / this CPU µs/row)"
    )
    return ok


# -- main ----------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default=None, help="comma-separated row counts")
    parser.add_argument("--rows", type=int, default=None, help="short for --sizes N/10,N")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg-url", default=PG_URL)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--kms-rows", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per case (best)")
    parser.add_argument("--latency", type=float, default=0.005)
    parser.add_argument("--only", choices=("local", "kms"), default=None)
    parser.add_argument("--profile", action="store_true", help="cProfile one rewrap per db")
    # The child: one rewrap in a fresh process (used by the parent, not by hand).
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--source-keys", help=argparse.SUPPRESS)
    parser.add_argument("--target-keys", help=argparse.SUPPRESS)
    parser.add_argument("--check-keys", help=argparse.SUPPRESS)
    parser.add_argument("--old-key", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # A SIGTERM unwinds like Ctrl-C: temporary folders go, PostgreSQL tables are dropped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.child:
        return child(args)
    if args.sizes is not None:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s]
    elif args.rows is not None:
        sizes = [max(1, args.rows // 10), args.rows]
    else:
        sizes = [100_000, 1_000_000]
    dbs = ["sqlite", "postgresql"] if args.db == "both" else [args.db]

    print("machine")
    extra = [("psycopg", _version("psycopg")), ("boto3", _version("boto3"))]
    for key, value in [*machine(), *extra]:
        print(f"  {key:<15}{value}")
    print(f"  {'memory':<15}{_memory()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"sizes: {', '.join(f'{s:,}' for s in sizes)} rows x {VALUE_LENGTH}-char str; "
        f"db: {', '.join(dbs)}; batch_size: {args.batch_size}; repeats: {args.repeat}"
    )

    started = time.perf_counter()
    ok = True
    if args.only in (None, "local"):
        print()
        print("LocalKeyring scaling (fill not timed; each rewrap in a fresh child process)")
        ok = scaling(args, sizes, dbs) and ok
    if args.only in (None, "kms"):
        ok = kms_concurrency(args) and ok

    print()
    print(f"total {time.perf_counter() - started:.0f} s; load average at the end: ", end="")
    print(" ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"parent peak RSS: {mib(max_rss_kib())} MiB")
    print("ALL CHECKS AND BARS PASS" if ok else "SOME CHECK OR BAR FAILED")
    return 0 if ok else 1


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
