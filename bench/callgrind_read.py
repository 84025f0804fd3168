"""Instructions a value of an insert and a cold read, counted by callgrind: repeatable, unlike time.

On this shared 2-core VM a timed run moves by 10% from one minute to the next;
the number of instructions a phase executes does not. This script runs
bench_core's phases (same tables, same column types: core_models.py) in a child
process under ``valgrind --tool=callgrind``, once with N rows and once with 3N,
and reports ``(count(3N) - count(N)) / 2N`` for each phase: what one more value
costs, with every fixed cost of a phase (statement compilation, session, first
use of a cache) cancelled out.

Only the phase itself is counted: the child starts with instrumentation off
(``--instr-atstart=no``) and calls two functions of a tiny C helper, compiled
here with gcc from valgrind's ``callgrind.h``, around each phase: one starts
instrumentation and zeroes the counts, the other dumps them under the phase's
name and stops. The collector runs before each phase and is off during it
(bench_core.py freezes the heap instead): a collection's cost grows faster than
the rows alive, so it would not cancel out; the counts leave it out.

Phases: insert (add_all + commit) and cold select (key cache cleared, one unwrap
a row) of plain, the simple envelope, v1, v2 and the sqlalchemy-utils peer; the
crypto floors of v1 and v2; warm selects of v1 and v2. 3N stays below the
default 10,000-key cache, so a cold read here never evicts (bench_core.py at
20,000 rows does for half the rows: an eviction is a few hundred instructions).

``--annotate`` adds a per-function breakdown of one v2 cold read value: the
exclusive counts of each function in both runs, differenced the same way,
grouped by shared object and listed by function. ``--keep DIR`` keeps the dumps
(``callgrind_annotate --inclusive=yes DIR/cg.6000.<k>`` or kcachegrind reads them).

Run::

    .venv/bin/python bench/callgrind_read.py [--rows 2000] [--annotate]

Needs valgrind, gcc and valgrind's headers (Debian: valgrind, gcc).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import hmac
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_core import insert_phase, select_phase
from core_models import KDF_INFO, KDF_PREFIX, CryptoFloor, Variants, build, random_values
from core_report import code_version, machine
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from sqla_envelope import Encryptor
from sqla_envelope.envelope import unpack

HELPER_C = r"""
#include <valgrind/callgrind.h>
void phase_begin(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
void phase_end(const char *name) { CALLGRIND_DUMP_STATS_AT(name); CALLGRIND_STOP_INSTRUMENTATION; }
"""
INSERTS = ["plain", "simple", "v1", "v2", "peer"]
# phase name -> (variant, kind); the order the child runs them and the report lists them
READS = {
    "cold select plain": ("plain", "model"),
    "cold select simple": ("simple", "model"),
    "cold select v1": ("v1", "cold"),
    "cold select v2": ("v2", "cold"),
    "cold select peer": ("peer", "model"),
    "select floor v1": ("v1", "floor"),
    "select floor v2": ("v2", "floor"),
    "warm select v1": ("v1", "warm"),
    "warm select v2": ("v2", "warm"),
}
BREAKDOWN_PHASE = "cold select v2"
# The pieces of one v2 cold read, counted outside the ORM on the stored values,
# each a loop over N (then 3N) values: what the format's crypto costs, what the
# keyring adds, the Encryptor, the column's result processor; then the same warm.
LADDER = [
    "loop only",
    "AES-SIV unwrap (floor)",
    "SHA-512 derive + compare (floor)",
    "AESGCM(key) construction (floor)",
    "AES-GCM decrypt (floor)",
    "whole value (floor)",
    "LocalKeyring.unwrap_data_key",
    "Encryptor.open, cold",
    "column processor, cold",
    "Encryptor.open, warm",
    "column processor, warm",
]


# -- the child: runs the phases under callgrind -----------------------------------


def counted(helper: ctypes.CDLL, name: str) -> Callable[[Callable[[], Any]], tuple[float, Any]]:
    """A ``measure`` for bench_core's phases that counts instructions instead of timing."""

    def measure(body: Callable[[], Any]) -> tuple[float, Any]:
        # The collector is off while counting: what it costs grows faster than
        # the rows a phase keeps alive, so it would not cancel out of 3N - N.
        gc.collect()
        gc.disable()
        try:
            helper.phase_begin()
            result = body()
            helper.phase_end(name.encode())
        finally:
            gc.enable()
        return 0.0, result

    return measure


def child(rows: int, helper_path: str) -> None:
    helper = ctypes.CDLL(helper_path)
    variants = build(rows)
    values = random_values(rows)
    with tempfile.TemporaryDirectory(prefix="sqla-envelope-cg-") as folder:
        engine = create_engine(f"sqlite:///{folder}/bench.db")
        for name in INSERTS:
            model = variants.models[name]
            insert_phase(engine, variants.base, model, values, counted(helper, f"insert {name}"))
        for phase, (name, kind) in READS.items():
            if kind == "floor":
                model = variants.floor[name]
            elif kind == "warm":
                model = variants.warm[name]
                variants.big_cache[name].clear_cache()
                select_phase(engine, model, values)  # not counted: fills the cache
            else:
                model = variants.models[name]
                if kind == "cold":
                    variants.encryptors[name].clear_cache()
            select_phase(engine, model, values, measure=counted(helper, phase))
        ladder(helper, engine, variants)
        engine.dispose()


def ladder(helper: ctypes.CDLL, engine: Engine, variants: Variants) -> None:
    """Count the pieces of a v2 cold read one by one, outside the ORM (see LADDER).

    A step whose API the code under test no longer has is left out with a note,
    so the rest still runs.
    """
    with engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT value FROM secret_v2 ORDER BY id")
        envelopes = [row[0] for row in stored]
    encryptor = variants.encryptors["v2"]
    column = variants.models["v2"].__table__.c.value.type
    floor = variants.floor["v2"].__table__.c.value.type
    for step in LADDER:
        try:
            items, fn = step_body(step, envelopes, encryptor, column, floor, engine.dialect)
        except Exception as exc:  # an API changed under the ladder: skip the step
            print(f"ladder step {step!r} skipped: {exc!r}", file=sys.stderr)
            continue

        def body(fn: Callable[[Any], Any] = fn, items: list[Any] = items) -> None:
            for item in items:
                fn(item)

        counted(helper, f"step {step}")(body)


def step_body(
    step: str,
    envelopes: list[bytes],
    encryptor: Encryptor,
    column: Any,
    floor: CryptoFloor,
    dialect: Any,
) -> tuple[list[Any], Callable[[Any], Any]]:
    """The inputs and the per-value call of one ladder step, its state made ready."""
    context = column.encryption_context()
    if step == "loop only":
        return envelopes, lambda envelope: None
    if step == "AES-SIV unwrap (floor)":
        siv, aad, start = floor.siv, [floor.canonical], floor.wrap_at
        return envelopes, lambda envelope: siv.decrypt(envelope[start : start + 48], aad)
    if step.endswith("(floor)") and step != "whole value (floor)":
        return floor_piece(step, envelopes, floor)
    if step == "whole value (floor)":
        return envelopes, floor.result_processor(dialect, None)
    if step == "LocalKeyring.unwrap_data_key":
        keyring = encryptor.keyring
        wrapped = [unpack(envelope).wrapped_keys for envelope in envelopes]
        return wrapped, lambda keys: keyring.unwrap_data_key(keys, context)
    if step in ("Encryptor.open, cold", "column processor, cold"):
        encryptor.clear_cache()
    if step.startswith("Encryptor.open"):
        return envelopes, lambda envelope: encryptor.open(envelope, context)
    return envelopes, column.result_processor(dialect, None)


def floor_piece(
    step: str, envelopes: list[bytes], floor: CryptoFloor
) -> tuple[list[Any], Callable[[Any], Any]]:
    """One of CryptoFloor's v2 operations alone, the others' results computed beforehand."""
    siv, aad, start = floor.siv, [floor.canonical], floor.wrap_at
    end = start + 48
    header = end + 32
    if step == "AES-SIV unwrap (floor)":
        return envelopes, lambda envelope: siv.decrypt(envelope[start:end], aad)
    keys = [siv.decrypt(envelope[start:end], aad) for envelope in envelopes]
    okms = [hashlib.sha512(KDF_PREFIX + key + KDF_INFO).digest() for key in keys]
    if step == "SHA-512 derive + compare (floor)":
        sha512, compare = hashlib.sha512, hmac.compare_digest
        pairs = [(key, envelope[end:header]) for key, envelope in zip(keys, envelopes, strict=True)]
        return pairs, lambda pair: compare(
            sha512(KDF_PREFIX + pair[0] + KDF_INFO).digest()[32:], pair[1]
        )
    if step == "AESGCM(key) construction (floor)":
        return [okm[:32] for okm in okms], AESGCM
    parts = [
        (AESGCM(okm[:32]), e[header : header + 12], e[header + 12 :], e[:header] + floor.canonical)
        for okm, e in zip(okms, envelopes, strict=True)
    ]
    return parts, lambda part: part[0].decrypt(part[1], part[2], part[3])


# -- the parent: runs the children, reads their dumps ------------------------------


def compile_helper(folder: Path) -> Path:
    source, library = folder / "cg_phase.c", folder / "cg_phase.so"
    source.write_text(HELPER_C)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(library), str(source)], check=True)
    return library


def run_children(folder: Path, helper: Path, sizes: list[int]) -> dict[int, dict[str, Path]]:
    """Both runs at once (two processes; counts do not depend on load); dump files by phase."""
    script = Path(__file__).resolve()
    processes = []
    for rows in sizes:
        out = folder / f"cg.{rows}"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(script),
            "--child",
            str(rows),
            "--helper",
            str(helper),
        ]
        log = (folder / f"valgrind.{rows}.log").open("w")
        # A fixed hash seed: dict probing then repeats from run to run.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        process = subprocess.Popen(command, stdout=log, stderr=log, env=env)
        processes.append((rows, process, log))
    dumps: dict[int, dict[str, Path]] = {}
    for rows, process, log in processes:
        status = process.wait()
        log.close()
        if status:
            print((folder / f"valgrind.{rows}.log").read_text()[-3000:])
            raise SystemExit(f"the {rows}-row child failed with status {status}")
        dumps[rows] = {}
        for path in folder.glob(f"cg.{rows}.*"):
            match = re.search(r"^desc: Trigger: Client Request: (.+)$", path.read_text(), re.M)
            if match:
                dumps[rows][match.group(1)] = path
    return dumps


def total(path: Path) -> int:
    match = re.search(r"^summary: (\d+)", path.read_text(), re.M)
    if match is None:
        raise ValueError(f"no summary line in {path}")
    return int(match.group(1))


def per_value(dumps: dict[int, dict[str, Path]], rows: int, phase: str) -> float:
    return (total(dumps[3 * rows][phase]) - total(dumps[rows][phase])) / (2 * rows)


def print_counts(dumps: dict[int, dict[str, Path]], rows: int) -> None:
    phases = [f"insert {name}" for name in INSERTS] + list(READS)
    counts = {phase: per_value(dumps, rows, phase) for phase in phases}
    print()
    print(
        f"{'phase':<22}{'instr/value':>13}{'over plain':>12}{'plain/this':>12}{'simple/this':>13}"
    )
    for phase in phases:
        kind = "insert" if phase.startswith("insert") else "cold select"
        plain, simple = counts[f"{kind} plain"], counts[f"{kind} simple"]
        this = counts[phase]
        print(
            f"{phase:<22}{this:>13,.0f}{this - plain:>12,.0f}"
            f"{plain / this:>12.3f}{simple / this:>13.3f}"
        )
    print()
    print("v2 against v1, instructions a value (issue 12's bar: at most +5%)")
    for kind in ("insert", "cold select", "warm select"):
        v1, v2 = counts[f"{kind} v1"], counts[f"{kind} v2"]
        print(f"  {kind:<12} v1 {v1:>9,.0f}  v2 {v2:>9,.0f}  v2/v1 - 1 = {v2 / v1 - 1:+.1%}")


def print_ladder(dumps: dict[int, dict[str, Path]], rows: int) -> None:
    counts = {
        step: per_value(dumps, rows, f"step {step}")
        for step in LADDER
        if f"step {step}" in dumps[rows] and f"step {step}" in dumps[3 * rows]
    }
    loop = counts.pop("loop only", 0.0)
    print()
    print(f"one v2 value, piece by piece outside the ORM (net of the loop's {loop:,.0f})")
    for step, count in counts.items():
        print(f"  {step:<32}{count - loop:>9,.0f}")
    for step in LADDER:
        if step != "loop only" and step not in counts:
            print(f"  {step:<32}{'skipped':>9}  (see the child's log)")


# -- the breakdown ------------------------------------------------------------------

_NAME = re.compile(r"^\((\d+)\)(?: (.*))?$")
# the name space each kind of line's compressed names live in
_SPACE = {"ob": "ob", "cob": "ob", "fn": "fn", "cfn": "fn"}


def exclusive_counts(path: Path) -> dict[tuple[str, str], int]:
    """Exclusive instructions by (function, shared object) of one callgrind dump.

    Read from the dump itself (format: valgrind's callgrind "Callgrind Format"
    manual page) rather than from callgrind_annotate, which names no object for
    code inlined from another source file. Inlined code counts for the function
    it was inlined into; the inclusive cost written after each ``calls=`` line
    is skipped; recursion levels (``'2``) are merged.
    """
    names: dict[tuple[str, str], str] = {}
    counts: dict[tuple[str, str], int] = defaultdict(int)
    obj = function = ""
    skip_next = False
    for line in path.read_text().splitlines():
        if not line:
            continue
        if line[0].isdigit() or line[0] in "+-*":
            if skip_next:
                skip_next = False
            else:
                fields = line.split()
                counts[(function, obj)] += int(fields[1]) if len(fields) > 1 else 0
            continue
        key, _, value = line.partition("=")
        if key == "calls":
            skip_next = True
        elif key in _SPACE:
            match = _NAME.match(value)
            if match:
                space_key = (_SPACE[key], match.group(1))
                if match.group(2) is not None:
                    names[space_key] = match.group(2)
                value = names[space_key]
            if key == "ob":
                obj = Path(value).name
            elif key == "fn":
                function = re.sub(r"'\d+$", "", value)
    return counts


def group_of(obj: str) -> str:
    if obj.startswith("libcrypto") or obj.startswith("libssl"):
        return "system OpenSSL (libcrypto: hashlib's SHA-512)"
    if obj.startswith("_rust"):
        return "cryptography (_rust.abi3.so, its OpenSSL linked in: AES-SIV, AES-GCM)"
    if "sqlite" in obj:
        return "SQLite (libsqlite3, _sqlite3)"
    if obj.startswith("libpython") or obj.startswith("python"):
        return "CPython interpreter and runtime"
    if obj.startswith("libc.") or obj.startswith("libc-") or obj.startswith("ld-linux"):
        return "libc (malloc, memcpy, ...)"
    if obj.endswith(".so") and "cpython" in obj:
        return "C extensions (SQLAlchemy's Cython modules, ...)"
    return f"other ({obj})"


def print_breakdown(dumps: dict[int, dict[str, Path]], rows: int, top: int = 25) -> None:
    small = exclusive_counts(dumps[rows][BREAKDOWN_PHASE])
    large = exclusive_counts(dumps[3 * rows][BREAKDOWN_PHASE])
    diff = {
        key: (large.get(key, 0) - small.get(key, 0)) / (2 * rows)
        for key in small.keys() | large.keys()
    }
    whole = sum(diff.values())
    groups: dict[str, float] = defaultdict(float)
    for (_, obj), count in diff.items():
        groups[group_of(obj)] += count
    print()
    print(f"where one value of a '{BREAKDOWN_PHASE}' goes: {whole:,.0f} instructions, by object")
    for group, count in sorted(groups.items(), key=lambda item: -item[1]):
        if abs(count) < 1:
            continue
        print(f"  {count:>9,.0f}  {count / whole:>6.1%}  {group}")
    print()
    print(f"top {top} functions by exclusive instructions a value")
    for (function, obj), count in sorted(diff.items(), key=lambda item: -item[1])[:top]:
        print(f"  {count:>9,.0f}  {count / whole:>6.1%}  {function}  [{obj}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=2_000, help="N: the runs read N and 3N rows")
    parser.add_argument("--annotate", action="store_true", help="break one v2 cold read down")
    parser.add_argument("--keep", help="a folder to keep the callgrind dumps in")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--helper", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, args.helper)
        return 0

    print("machine")
    for key, value in machine():
        print(f"  {key:<15}{value}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    rows = args.rows
    print(f"rows: N = {rows:,} and 3N = {3 * rows:,}; instructions a value = (3N - N) / 2N")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sqla-envelope-callgrind-") as temporary:
        folder = Path(args.keep or temporary)
        folder.mkdir(parents=True, exist_ok=True)
        helper = compile_helper(folder)
        dumps = run_children(folder, helper, [rows, 3 * rows])
        print_counts(dumps, rows)
        print_ladder(dumps, rows)
        if args.annotate:
            print_breakdown(dumps, rows)
    print()
    print(f"sqla-envelope {code_version()}; {time.perf_counter() - started:.0f} s under callgrind")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
