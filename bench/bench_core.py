"""Core benchmark: an encrypted column against a plain one, ORM insert and select.

What it measures, in one run on a SQLite file database in a temporary folder, with
N rows of a 40-character random string (the same strings for both columns):

* insert: ``session.add_all(objects)`` + ``session.commit()``, one transaction, into
  a freshly created table, for a plain ``String(40)`` column and for
  ``EncryptedType(String(40))`` with ``Encryptor(LocalKeyring.generate())``;
* select: ``session.scalars(select(Model)).all()`` in a fresh session, then every
  row's value is read (and checked against what was inserted, outside the timer):
  - the plain column;
  - the encrypted column with a COLD key cache (``clear_cache()`` right before, so
    one unwrap per row) under the Encryptor defaults (cache_size=10,000, so a read
    of more rows evicts as it goes): this is the bar;
  - for information: the same table through a second Encryptor whose cache holds
    all N keys, read cold, then read again WARM (every key a cache hit); and a
    plain ``LargeBinary`` table holding copies of the envelopes, which shows what
    the larger stored values cost without any decryption.

Each repeat runs every phase once, plain and encrypted alternating, and which of
the two goes first flips from one repeat to the next. Before each timed phase the
collector is run and the heap frozen (``gc.collect(); gc.freeze()``), so a
collection never rescans the ORM heap mid-phase. The VM is shared and noisy: the
table reports the BEST of R repeats (and the median), and the two bars, as
throughput ratios against the plain column measured in the same run:

* insert: encrypted / plain >= 0.80
* cold select: encrypted / plain >= 0.65

Run::

    .venv/bin/python bench/bench_core.py [--rows N] [--repeat R] [--profile]

``--profile`` adds one encrypted cold select under cProfile (after the timed
repeats, so it does not disturb them) and prints the top 15 functions by tottime.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import platform
import pstats
import random
import resource
import sqlite3
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cryptography
import sqlalchemy
from sqlalchemy import Integer, LargeBinary, String, create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

# Run from a checkout without installing: make the package next to bench/ importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.types import TypeDecorator

from sqla_envelope import EncryptedType, Encryptor, LocalKeyring
from sqla_envelope.context import EncryptionContext

VALUE_LENGTH = 40
DEFAULT_CACHE_SIZE = 10_000  # Encryptor's default


# -- the two models ---------------------------------------------------------------


class CryptoFloor(TypeDecorator[str]):
    """What decrypting the v1 format costs at the least: the crypto and three slices.

    A read-only column type over the ``secret`` table that does, per value, only
    what no implementation of the format can skip: unwrap the data key (AES-SIV
    under the HKDF-derived local wrapping key, as docs/format.md specifies), build
    its AES-GCM cipher and decrypt. No key cache, no header checks, no error
    handling, offsets fixed for one known key id: a floor to compare the real
    column with, not something to ship.
    """

    impl = LargeBinary
    cache_ok = False

    def __init__(self, master_key: bytes, key_id: str, context: dict[str, str]) -> None:
        super().__init__()
        siv_key = HKDF(
            algorithm=hashes.SHA256(), length=64, salt=None, info=b"sqla-envelope/local-wrap/v1"
        ).derive(master_key)
        self.siv = AESSIV(siv_key)
        self.canonical = EncryptionContext(context).canonical
        self.wrap_at = 3 + len(key_id) + 2

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        siv, aad = self.siv, [self.canonical]
        value_aad = bytes((1,)) + self.canonical
        start = self.wrap_at
        nonce_at = start + 48
        sealed_at = nonce_at + 12

        def process(value: bytes) -> str:
            data_key = siv.decrypt(value[start:nonce_at], aad)
            return (
                AESGCM(data_key)
                .decrypt(value[nonce_at:sealed_at], value[sealed_at:], value_aad)
                .decode()
            )

        return process


def build_models(
    encryptor: Encryptor, big_cache: Encryptor, floor: CryptoFloor
) -> tuple[type[Any], type[Any], type[Any], type[Any], type[Any], type[DeclarativeBase]]:
    """Tables of the same shape: an integer key and one 40-character string.

    ``Blob`` holds copies of the envelopes as plain bytes: reading it costs what the
    larger stored values cost without any decryption (a diagnostic, not a bar).

    ``SecretBig`` maps the same ``secret`` table through an Encryptor whose cache
    holds every key of the table, with the column's default context spelled out,
    so it reads exactly what ``Secret`` wrote: that is how the warm read is done
    without changing the default configuration of the column being measured.
    """

    class Base(DeclarativeBase):
        pass

    class Plain(Base):
        __tablename__ = "plain"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        value: Mapped[str] = mapped_column(String(VALUE_LENGTH))

    class Secret(Base):
        __tablename__ = "secret"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        value: Mapped[str] = mapped_column(EncryptedType(String(VALUE_LENGTH), encryptor))

    class ReadOnlyBase(DeclarativeBase):
        pass

    class SecretBig(ReadOnlyBase):
        __tablename__ = "secret"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        value: Mapped[str] = mapped_column(
            EncryptedType(
                String(VALUE_LENGTH), big_cache, context={"table": "secret", "column": "value"}
            )
        )

    class FloorBase(DeclarativeBase):
        pass

    class SecretFloor(FloorBase):
        __tablename__ = "secret"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        value: Mapped[str] = mapped_column(floor)

    class Blob(Base):
        """The encrypted table's stored bytes in a plain LargeBinary column."""

        __tablename__ = "blob"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        value: Mapped[bytes] = mapped_column(LargeBinary)

    return Plain, Secret, SecretBig, SecretFloor, Blob, Base


def random_values(rows: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    return ["".join(rng.choices(alphabet, k=VALUE_LENGTH)) for _ in range(rows)]


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


def insert_phase(
    engine: Engine, base: type[DeclarativeBase], model: type[Any], values: list[str]
) -> float:
    """Recreate the table, then time add_all + commit of one object per value."""
    table = model.__table__
    base.metadata.drop_all(engine, tables=[table])
    base.metadata.create_all(engine, tables=[table])
    objects = [model(id=i, value=v) for i, v in enumerate(values, 1)]
    session = Session(engine)

    def body() -> None:
        session.add_all(objects)
        session.commit()

    elapsed, _ = timed(body)
    session.close()
    return elapsed


def select_phase(
    engine: Engine, model: type[Any], values: list[str], *, check: bool = True
) -> float:
    """Time a full ORM read in a fresh session, touching every row's value."""
    session = Session(engine)

    def body() -> tuple[list[Any], int]:
        rows = session.scalars(select(model)).all()
        total = 0
        for row in rows:
            total += len(row.value)
        return rows, total

    elapsed, (rows, total) = timed(body)
    # Outside the timer: the read returned exactly what was written.
    assert len(rows) == len(values)
    if check:
        assert total == VALUE_LENGTH * len(values)
        for row in rows:
            if row.value != values[row.id - 1]:
                raise AssertionError(f"row {row.id} read back wrong")
    session.close()
    return elapsed


def copy_envelopes(engine: Engine, base: type[DeclarativeBase], blob_model: type[Any]) -> None:
    """Fill the blob table with the encrypted table's stored bytes, as they are."""
    table = blob_model.__table__
    base.metadata.drop_all(engine, tables=[table])
    base.metadata.create_all(engine, tables=[table])
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO blob (id, value) SELECT id, value FROM secret")


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in ("wraps", "unwraps", "cache_hits", "cache_misses")}


# -- reporting --------------------------------------------------------------------


def machine() -> list[tuple[str, str]]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        nproc = str(os.cpu_count())
    return [
        ("platform", platform.platform()),
        ("python", sys.version.split()[0] + f" ({platform.python_implementation()})"),
        ("sqlalchemy", sqlalchemy.__version__),
        ("cryptography", cryptography.__version__),
        ("sqlite", sqlite3.sqlite_version),
        ("nproc", nproc.strip()),
        ("cpu", cpu),
        ("sqla-envelope", code_version()),
        ("load average", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]


def code_version() -> str:
    """The commit of the checkout, with '+dirty' if sqla_envelope/ has local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "sqla_envelope"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def print_table(results: dict[str, list[float]], rows: int) -> None:
    print()
    print(f"{'phase':<29}{'best µs/row':>12}{'median µs/row':>15}{'best rows/s':>13}  all (s)")
    for phase, times in results.items():
        best, median = min(times), statistics.median(times)
        runs = " ".join(f"{t:.3f}" for t in times)
        print(
            f"{phase:<29}{best / rows * 1e6:>12.2f}{median / rows * 1e6:>15.2f}"
            f"{rows / best:>13,.0f}  {runs}"
        )


def print_ratios(results: dict[str, list[float]]) -> bool:
    """Encrypted throughput / plain throughput: best, median, and paired.

    best = best plain time / best encrypted time (the verdict); median = the same
    with medians; paired = the median over repeats of each repeat's own ratio, whose
    two phases ran seconds apart, so slow drifts in the VM's load cancel out.
    """
    bars = [
        ("insert", "insert plain", "insert encrypted", 0.80),
        ("cold select", "select plain", "select encrypted cold", 0.65),
        ("blob, no crypto (info)", "select plain", "select blob, no crypto", None),
        ("cold, big cache (info)", "select plain", "select enc. cold, big cache", None),
        ("warm, big cache (info)", "select plain", "select enc. warm, big cache", None),
        ("crypto floor (info)", "select plain", "select, crypto floor", None),
    ]
    print()
    print(
        f"{'ratio enc/plain':<24}{'best':>7}{'median':>8}{'paired':>8}{'bar':>7}"
        "  verdict (on best)  per repeat"
    )
    ok = True
    for name, plain, enc, bar in bars:
        best = min(results[plain]) / min(results[enc])
        median = statistics.median(results[plain]) / statistics.median(results[enc])
        each = [p / e for p, e in zip(results[plain], results[enc], strict=True)]
        paired = statistics.median(each)
        if bar is None:
            verdict, bar_text = "-", "-"
        else:
            passed = best >= bar
            ok = ok and passed
            verdict, bar_text = ("PASS" if passed else "BELOW BAR"), f"{bar:.2f}"
        runs = " ".join(f"{r:.2f}" for r in each)
        print(
            f"{name:<24}{best:>7.3f}{median:>8.3f}{paired:>8.3f}{bar_text:>7}"
            f"  {verdict:<17}  {runs}"
        )
    return ok


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
    print(f"cProfile of one encrypted cold select ({rows:,} rows), top 15 by tottime")
    print("(cProfile adds a fixed cost per call: small, frequent functions look bigger)")
    print(out.getvalue().rstrip())


# -- main -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile one cold select")
    args = parser.parse_args(argv)
    rows, repeat = args.rows, args.repeat

    print("machine")
    for key, value in machine():
        print(f"  {key:<15}{value}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")

    # The measured column uses the Encryptor defaults (cache_size=10,000): reading
    # N > 10,000 rows cold evicts as it goes, as it would in an application. A
    # second Encryptor on the same keyring with cache_size >= N reads the same
    # table cold (for information: its cache keeps N ciphers alive) and then warm.
    master_key, key_id = os.urandom(32), os.urandom(4).hex()
    keyring = LocalKeyring({key_id: master_key})
    encryptor = Encryptor(keyring)
    big_size = max(rows, DEFAULT_CACHE_SIZE)
    big_cache = Encryptor(keyring, cache_size=big_size)
    floor = CryptoFloor(master_key, key_id, {"table": "secret", "column": "value"})
    plain_model, secret_model, secret_big_model, floor_model, blob_model, base = build_models(
        encryptor, big_cache, floor
    )
    values = random_values(rows)
    print(f"rows: {rows:,} x {VALUE_LENGTH}-char str, repeats: {repeat}")
    print(f"encryptor: {encryptor!r}")
    print(f"big-cache: {big_cache!r} (warm read, information only)")

    results: dict[str, list[float]] = {
        name: []
        for name in (
            "insert plain",
            "insert encrypted",
            "select plain",
            "select blob, no crypto",
            "select encrypted cold",
            "select enc. cold, big cache",
            "select enc. warm, big cache",
            "select, crypto floor",
        )
    }
    counters: dict[str, dict[str, int]] = {}

    with tempfile.TemporaryDirectory(prefix="sqla-envelope-bench-") as folder:
        engine = create_engine(f"sqlite:///{folder}/bench.db")

        def measure(phase: str, enc: Encryptor, run: Callable[[], float]) -> None:
            before = enc.stats()
            results[phase].append(run())
            counters[phase] = delta(enc.stats(), before)

        def insert_plain() -> None:
            results["insert plain"].append(insert_phase(engine, base, plain_model, values))

        def insert_encrypted() -> None:
            measure(
                "insert encrypted",
                encryptor,
                lambda: insert_phase(engine, base, secret_model, values),
            )

        def select_plain() -> None:
            results["select plain"].append(select_phase(engine, plain_model, values))
            copy_envelopes(engine, base, blob_model)
            results["select blob, no crypto"].append(
                select_phase(engine, blob_model, values, check=False)
            )

        def select_encrypted() -> None:
            encryptor.clear_cache()
            measure(
                "select encrypted cold",
                encryptor,
                lambda: select_phase(engine, secret_model, values),
            )
            encryptor.clear_cache()
            big_cache.clear_cache()
            measure(
                "select enc. cold, big cache",
                big_cache,
                lambda: select_phase(engine, secret_big_model, values),
            )
            measure(
                "select enc. warm, big cache",
                big_cache,
                lambda: select_phase(engine, secret_big_model, values),
            )
            big_cache.clear_cache()  # do not carry N cached ciphers into the plain phases
            results["select, crypto floor"].append(select_phase(engine, floor_model, values))

        for r in range(repeat):
            # Alternate plain and encrypted; flip which goes first on every repeat.
            inserts = [insert_plain, insert_encrypted]
            selects = [select_plain, select_encrypted]
            if r % 2:
                inserts.reverse()
                selects.reverse()
            started = time.perf_counter()
            for phase in (*inserts, *selects):
                phase()
            print(f"  repeat {r + 1}/{repeat} done in {time.perf_counter() - started:.1f} s")

        print_table(results, rows)
        ok = print_ratios(results)

        print()
        print("Encryptor.stats() deltas, last repeat: expect one wrap per inserted row,")
        print("one unwrap and one cache miss per row on a cold read, none on the warm one")
        for phase, counts in counters.items():
            print(f"  {phase:<29}{counts}")
        expected = {
            "insert encrypted": {"wraps": rows, "unwraps": 0},
            "select encrypted cold": {"wraps": 0, "unwraps": rows, "cache_misses": rows},
            "select enc. cold, big cache": {"unwraps": rows, "cache_misses": rows},
            "select enc. warm, big cache": {"unwraps": 0, "cache_hits": rows, "cache_misses": 0},
        }
        for phase, wanted in expected.items():
            for key, count in wanted.items():
                if counters[phase][key] != count:
                    print(f"  UNEXPECTED: {phase} {key} = {counters[phase][key]}, want {count}")
                    ok = False

        if args.profile:
            profile_cold_select(engine, secret_model, encryptor, rows)
        engine.dispose()

    print()
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:,.0f} MiB")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
