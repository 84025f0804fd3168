"""Format v2 against v1, the simplest per-row envelope and sqlalchemy-utils, in one run.

Five columns of the same 40-character random strings, each in a table of its own on
one SQLite file, written and read through the ORM exactly as ``bench_core.py`` does:

* ``plain``: ``String(40)``;
* ``simple``: the simplest per-row envelope there is, written here and not in the
  package: a fresh AES-256-GCM data key per value, wrapped by AES-GCM under a local
  master key, stored as wrapped key || nonce || ciphertext; no header, no key ids,
  no context, no checks, no cache;
* ``utils``: sqlalchemy-utils' ``StringEncryptedType(String, key, AesGcmEngine)``,
  the peer: one key for every value (no envelope, nothing to unwrap);
* ``v1``: ``EncryptedType(String(40))`` writing format v1
  (``commitment_policy="forbid_encrypt_allow_decrypt"``);
* ``v2``: ``EncryptedType(String(40))`` with the defaults (format v2).

Phases: ``insert`` (``add_all`` + ``commit``), ``cold`` (a full read with the key cache
cleared: one unwrap per row) and ``warm`` (the same read again, every key cached; the
cache holds every row). Each repeat runs every column's phases, in an order that
rotates from one repeat to the next. Reported: rows/s best and median over the
repeats, and ratios against plain and against the simple envelope, each from the
best times of the same run.

The bars this prints PASS/FAIL for:

* issue 12: v2 costs at most 5% more than v1 on insert and on a cold read;
* issue 14: a cold read >= 0.85x the simple envelope, an insert >= 0.75x plain,
  a warm read >= 0.8x plain.

``--callgrind`` instead counts instructions per row (valgrind, repeatable on a noisy
machine): each column's phases run once with N and once with 3N rows under
callgrind, and the difference over 2N cancels what does not grow with the rows.

Run::

    .venv/bin/python bench/bench_read.py [--rows 20000] [--repeat 7]
    .venv/bin/python bench/bench_read.py --callgrind [--rows 2000]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import re
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Integer, LargeBinary, String, create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqla_envelope import EncryptedType, Encryptor, LocalKeyring

VALUE_LENGTH = 40
COLUMNS = ("plain", "simple", "utils", "v1", "v2")


class SimpleEnvelope(TypeDecorator[str]):
    """A data key per value, AES-GCM-wrapped under one master key: nothing else."""

    impl = LargeBinary
    cache_ok = True

    def __init__(self, master_key: bytes) -> None:
        super().__init__()
        self.master = AESGCM(master_key)

    def process_bind_param(self, value: str | None, dialect: Any) -> bytes | None:
        if value is None:
            return None
        data_key = AESGCM.generate_key(256)
        wrap_nonce, nonce = os.urandom(12), os.urandom(12)
        wrapped = wrap_nonce + self.master.encrypt(wrap_nonce, data_key, None)
        return wrapped + nonce + AESGCM(data_key).encrypt(nonce, value.encode(), None)

    def process_result_value(self, value: bytes | None, dialect: Any) -> str | None:
        if value is None:
            return None
        data_key = self.master.decrypt(value[:12], value[12:60], None)
        return AESGCM(data_key).decrypt(value[60:72], value[72:], None).decode()


def build(encryptors: dict[str, Encryptor]) -> dict[str, type[Any]]:
    from sqlalchemy_utils import StringEncryptedType
    from sqlalchemy_utils.types.encrypted.encrypted_type import AesGcmEngine

    class Base(DeclarativeBase):
        pass

    types: dict[str, Any] = {
        "plain": String(VALUE_LENGTH),
        "simple": SimpleEnvelope(os.urandom(32)),
        "utils": StringEncryptedType(String, "a key for the peer", AesGcmEngine),
        "v1": EncryptedType(String(VALUE_LENGTH), encryptors["v1"]),
        "v2": EncryptedType(String(VALUE_LENGTH), encryptors["v2"]),
    }
    models = {}
    for name, type_ in types.items():
        models[name] = type(
            f"Row_{name}",
            (Base,),
            {
                "__tablename__": f"rows_{name}",
                "id": mapped_column(Integer, primary_key=True),
                "value": mapped_column(type_),
                "__annotations__": {"id": Mapped[int], "value": Mapped[str]},
            },
        )
    models["__base__"] = Base
    return models


def timed(body: Callable[[], Any]) -> float:
    gc.collect()
    gc.freeze()
    try:
        start = time.perf_counter()
        body()
        return time.perf_counter() - start
    finally:
        gc.unfreeze()


def run_phases(
    engine: Engine,
    base: Any,
    model: Any,
    values: list[str],
    encryptor: Encryptor | None,
    stop_after: str = "warm",
) -> dict[str, float]:
    """insert, cold read, warm read of one column; seconds each."""
    table = model.__table__
    base.metadata.drop_all(engine, tables=[table])
    base.metadata.create_all(engine, tables=[table])
    objects = [model(id=i, value=v) for i, v in enumerate(values, 1)]
    times = {}
    with Session(engine) as session:
        session.add_all(objects)
        times["insert"] = timed(session.commit)
    del objects
    if stop_after == "insert":
        return times

    def read() -> None:
        with Session(engine) as session:
            rows = session.scalars(select(model)).all()
            for row in rows:
                if len(row.value) != VALUE_LENGTH:
                    raise AssertionError("read back wrong")

    if encryptor is not None:
        encryptor.clear_cache()
    times["cold"] = timed(read)
    if stop_after != "cold":
        times["warm"] = timed(read)
    return times


def measure(
    rows: int, repeat: int, only: str | None = None, stop_after: str = "warm"
) -> dict[str, dict[str, list[float]]]:
    keyring = LocalKeyring.generate()
    cache = rows + 100  # a warm read finds every key
    encryptors = {
        "v1": Encryptor(
            keyring, cache_size=cache, commitment_policy="forbid_encrypt_allow_decrypt"
        ),
        "v2": Encryptor(keyring, cache_size=cache),
    }
    models = build(encryptors)
    rng = random.Random(1234)
    alphabet = string.ascii_letters + string.digits
    values = ["".join(rng.choices(alphabet, k=VALUE_LENGTH)) for _ in range(rows)]
    results: dict[str, dict[str, list[float]]] = {
        name: {"insert": [], "cold": [], "warm": []} for name in COLUMNS
    }
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(f"sqlite:///{folder}/bench.db")
        names = [only] if only else list(COLUMNS)
        for number in range(repeat):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                times = run_phases(
                    engine,
                    models["__base__"],
                    models[name],
                    values,
                    encryptors.get(name),
                    stop_after,
                )
                for phase, seconds in times.items():
                    results[name][phase].append(seconds)
        engine.dispose()
    return results


def report(results: dict[str, dict[str, list[float]]], rows: int) -> None:
    print(f"rows: {rows}, repeats: {len(results['plain']['insert'])}, SQLite file, ORM")
    print("\n| column | insert rows/s best (median) | cold read | warm read |")
    print("| --- | --- | --- | --- |")
    for name in COLUMNS:
        cells = []
        for phase in ("insert", "cold", "warm"):
            times = results[name][phase]
            cells.append(f"{rows / min(times):,.0f} ({rows / statistics.median(times):,.0f})")
        print(f"| {name} | " + " | ".join(cells) + " |")

    def ratio(name: str, phase: str, against: str, use: Callable[[list[float]], float]) -> float:
        return use(results[against][phase]) / use(results[name][phase])

    print("\nratios, best (median): throughput of the first over the second")
    bars = [
        ("v2", "insert", "v1", 1 / 1.05, "issue 12: v2 costs at most 5% more than v1"),
        ("v2", "cold", "v1", 1 / 1.05, "issue 12: v2 costs at most 5% more than v1"),
        ("v2", "cold", "simple", 0.85, "issue 14: cold read >= 0.85x the simple envelope"),
        ("v2", "insert", "plain", 0.75, "issue 14: insert >= 0.75x plain"),
        ("v2", "warm", "plain", 0.80, "issue 14: warm read >= 0.8x plain"),
        ("simple", "cold", "plain", 0.0, "for information"),
        ("utils", "cold", "plain", 0.0, "for information: the peer, no envelope"),
        ("v2", "cold", "utils", 0.0, "for information"),
        ("v1", "cold", "simple", 0.0, "for information"),
    ]
    for name, phase, against, bar, label in bars:
        best = ratio(name, phase, against, min)
        median = ratio(name, phase, against, statistics.median)
        verdict = "" if not bar else (" PASS" if best >= bar else " FAIL")
        print(f"  {name}/{against} {phase}: {best:.3f} ({median:.3f}){verdict}  [{label}]")


def callgrind(rows: int) -> None:
    """Instructions per row of each column's phases: (3N run - N run) / 2N.

    Each child runs one column's phases up to a stop point (insert; insert and the
    cold read; all three) under callgrind; a phase's count is the difference
    between two stop points, and the difference between N and 3N rows cancels
    what does not grow with the rows (start-up, imports, table creation).
    """
    stops = ("insert", "cold", "warm")
    total: dict[tuple[str, int, str], int] = {}
    for name in COLUMNS:
        for n in (rows, 3 * rows):
            for stop in stops:
                with tempfile.TemporaryDirectory() as folder:
                    out = Path(folder) / "callgrind.out"
                    subprocess.run(
                        [
                            "valgrind",
                            "--tool=callgrind",
                            f"--callgrind-out-file={out}",
                            sys.executable,
                            __file__,
                            "--child",
                            name,
                            "--stop-after",
                            stop,
                            "--rows",
                            str(n),
                        ],
                        check=True,
                        capture_output=True,
                    )
                    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
                assert found is not None, "no total in the callgrind output"
                total[(name, n, stop)] = int(found.group(1))
    print(f"\ninstructions per row (callgrind, (3N - N) / 2N, N = {rows})")
    print("| column | insert | cold read | warm read |")
    print("| --- | --- | --- | --- |")
    for name in COLUMNS:

        def per_row(stop: str, name: str = name) -> float:
            return (total[(name, 3 * rows, stop)] - total[(name, rows, stop)]) / (2 * rows)

        insert, cold, warm = per_row("insert"), per_row("cold"), per_row("warm")
        print(f"| {name} | {insert:,.0f} | {cold - insert:,.0f} | {warm - cold:,.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--child", choices=COLUMNS, help=argparse.SUPPRESS)
    parser.add_argument("--stop-after", choices=("insert", "cold", "warm"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        measure(args.rows, 1, only=args.child, stop_after=args.stop_after)
        return 0
    if args.callgrind:
        callgrind(args.rows)
        return 0
    results = measure(args.rows, args.repeat)
    report(results, args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
