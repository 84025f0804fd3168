"""KMS benchmark: how much of a KMS round trip per value the keyring hides, ORM insert and select.

KMS is answered inside the client by ``bench/fake_kms.py``: a botocore ``before-send``
hook sleeps ``--latency`` seconds (5 ms, an in-region round trip) in the calling
thread and returns a well-formed KMS response, so botocore still validates,
serializes, signs and parses every request, and no request leaves the process
(fake credentials, instance metadata disabled). moto's server is not used: its
CPU would run inside this process, which AWS's does not.

One SQLite file database in a temporary folder, N rows of a 40-character random
string; for each scenario below, ``session.add_all(objects)`` + ``session.commit()``
into a fresh table, then ``session.scalars(select(Model)).all()`` in a fresh session
touching every value, with a COLD key cache (``clear_cache()`` right before):

1. a plain ``String(40)`` column (the baseline, measured in the same run);
2. ``LocalKeyring`` (CPU only);
3. ``KmsKeyring`` direct mode, one KMS call at a time: ``prefetch=0`` on the keyring,
   ``Encryptor(prefetch=False)``. At 5 ms a call this reads and writes about 140
   rows a second, so it runs on ``--serial-rows`` (1,000) rows and is compared per row;
4. ``KmsKeyring`` direct mode, concurrent: ``prefetch=32`` with ``prefetch_workers=16``,
   then 32, and ``Encryptor(prefetch=True, max_workers=32)``; ``max_pool_connections=64``;
5. ``KmsKeyring(mode="bounded_reuse", max_rows=1000)`` with the Encryptor defaults:
   a multi-row insert generates the wrapping keys it will use up concurrently, before
   its rows (``reserve``), and a select decrypts the distinct wrapping keys of its
   result concurrently, each as soon as its first row is fetched (``unwrap_all``
   with the keyring's ``plan_unwraps``), the values' own data keys being unwrapped
   locally; and for information with ``Encryptor(prefetch=False)``, where the
   select fetches each wrapping key when its first row is decrypted.

Every scenario gets a fresh keyring and Encryptor in each repeat, warmed up outside
the timer (the boto3 client built, the worker threads started, under another
context), so the wrapping keys of bounded reuse are new and its select is cold. The
collector is run and the heap frozen before each timed phase. Each repeat runs every
scenario once; the order flips from one repeat to the next. Reported: the BEST of R
repeats per phase (and the median), rows/s, µs/row, process CPU µs/row (all threads),
the ratio to the plain column, and the bars:

* concurrent direct mode over one-at-a-time, per row: insert >= 8x, cold select >= 8x;
* bounded reuse over LocalKeyring: insert and cold select >= 0.80;

then KMS calls per phase (direct mode: one per value; bounded reuse: ceil(rows/1000)
GenerateDataKey per insert and Decrypt per cold select, plus one per ``max_age``
window crossed), the most requests in flight at once, and ``Encryptor.stats()``;
and what one KMS call costs in CPU (back to back, and after sleeping one round trip),
which bounds the speed-up: threads hide the latency, not botocore's CPU under the GIL.

Run::

    .venv/bin/python bench/bench_kms.py [--rows 10000] [--latency 0.005] [--repeat 2]
        [--serial-rows 1000] [--profile] [--only direct|reuse]

``--cpu N`` pins the process, its threads included, to CPU N. On this 2-vCPU VM a
worker thread that wakes from its 5 ms wait on the other, idle vCPU pays about 1 ms
of cold CPU for its KMS call (against 0.25 ms back to back), and the host's slow
phases hit one vCPU at a time; pinned, every thread runs on the core the query keeps
warm. ``--only reuse`` runs the plain column, LocalKeyring and the two bounded-reuse
scenarios (about 3 s a repeat instead of 45), for enough repeats to see through this
shared VM's slow phases; ``--only direct`` the plain column, LocalKeyring and direct mode.

``--profile`` adds a cProfile of those KMS calls (CPU by area: botocore, the fake,
sqla_envelope, ...), and runs concurrent direct mode (16 workers, 2,000 rows) once more
under cProfile in every thread, the workers too, timed in thread CPU time.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import math
import os
import pstats
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
import botocore
from sqlalchemy import Integer, String, create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

# Run from a checkout without installing: the package next to bench/, and bench/ itself.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import machine, random_values
from fake_kms import FakeKms, fake_aws_environment

from sqla_envelope import EncryptedType, EncryptionContext, Encryptor, KmsKeyring, LocalKeyring

VALUE_LENGTH = 40
REGION = "us-east-1"
KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/5e1f0c2a-7b3d-4c8e-9a61-2f4d8b7e0c13"
MAX_ROWS = 1000  # bounded reuse
POOL_CONNECTIONS = 64  # max_pool_connections: >= every thread that may call KMS at once
WARM_UP = {"bench": "warm-up"}  # context of the untimed warm-up, apart from the tables'

# -- fake AWS ------------------------------------------------------------------------


# -- scenarios ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    table: str
    rows: int
    keyring: Callable[[], Any] | None  # None: the plain column
    encryptor: dict[str, Any] = field(default_factory=dict)


def scenarios(rows: int, serial_rows: int, session: boto3.session.Session) -> list[Scenario]:
    def kms(**options: Any) -> Callable[[], KmsKeyring]:
        return lambda: KmsKeyring(KEY_ARN, session=session, region_name=REGION, **options)

    concurrent = {"prefetch": True, "max_workers": 32}
    return [
        Scenario("plain String(40)", "t_plain", rows, None),
        Scenario("LocalKeyring", "t_local", rows, LocalKeyring.generate),
        Scenario(
            "KMS direct, one at a time",
            "t_serial",
            serial_rows,
            kms(prefetch=0),
            {"prefetch": False},
        ),
        Scenario(
            "KMS direct, 16 workers",
            "t_direct16",
            rows,
            kms(prefetch=32, prefetch_workers=16, max_pool_connections=POOL_CONNECTIONS),
            concurrent,
        ),
        Scenario(
            "KMS direct, 32 workers",
            "t_direct32",
            rows,
            kms(prefetch=32, prefetch_workers=32, max_pool_connections=POOL_CONNECTIONS),
            concurrent,
        ),
        Scenario(
            "KMS bounded reuse",
            "t_reuse",
            rows,
            kms(mode="bounded_reuse", max_rows=MAX_ROWS),
        ),
        Scenario(
            "KMS bounded reuse, prefetch off",
            "t_reuse_np",
            rows,
            kms(mode="bounded_reuse", max_rows=MAX_ROWS),
            {"prefetch": False},
        ),
    ]


def build_model(table: str, encryptor: Encryptor | None) -> tuple[type[Any], type[Any]]:
    class Base(DeclarativeBase):
        pass

    column_type: Any = (
        String(VALUE_LENGTH)
        if encryptor is None
        else EncryptedType(String(VALUE_LENGTH), encryptor)
    )

    class Row(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        value: Mapped[str] = mapped_column(column_type)

    return Row, Base


def warm_up(encryptor: Encryptor) -> None:
    """Build the boto3 client and start the worker threads, under a context of its own."""
    encryptor.reserve(WARM_UP, 40)
    envelopes = [encryptor.encrypt(b"warm-up", WARM_UP) for _ in range(40)]
    encryptor.clear_cache()
    if encryptor.prefetch:
        encryptor.unwrap_all(envelopes, WARM_UP)
    for envelope in envelopes:
        encryptor.decrypt(envelope, WARM_UP)
    encryptor.clear_cache()
    if encryptor.prefetch:
        # A running application's unwrap threads exist already; in bounded reuse
        # the warm-up above needs one, so start them all (the pool spawns a thread
        # per task submitted while the others are busy).
        list(encryptor._pool().map(time.sleep, [0.002] * encryptor.max_workers))


def close(encryptor: Encryptor | None) -> None:
    if encryptor is not None:
        encryptor.close()
        getattr(encryptor.keyring, "close", lambda: None)()


# -- timed phases --------------------------------------------------------------------------


@dataclass
class Phase:
    """One timed phase: wall and process CPU seconds, and what it asked of KMS."""

    seconds: float
    cpu: float
    kms: dict[str, int]
    peak_in_flight: int
    stats: dict[str, int]


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


def measure(
    fake: FakeKms, encryptor: Encryptor | None, body: Callable[[], Any]
) -> tuple[Phase, Any]:
    calls = fake.calls()
    stats = encryptor.stats() if encryptor is not None else {}
    fake.take_peak()
    seconds, cpu, result = timed(body)
    after = fake.calls()
    kms = {op: n - calls.get(op, 0) for op, n in after.items() if n - calls.get(op, 0)}
    stats_delta = (
        {k: v - stats[k] for k, v in encryptor.stats().items() if k != "cached_keys"}
        if encryptor is not None
        else {}
    )
    return Phase(seconds, cpu, kms, fake.take_peak(), stats_delta), result


def run_scenario(
    scenario: Scenario, engine: Engine, values: list[str], fake: FakeKms
) -> tuple[Phase, Phase]:
    """A fresh keyring and table: insert, then a cold select checked outside the timer."""
    values = values[: scenario.rows]
    keyring = scenario.keyring() if scenario.keyring is not None else None
    encryptor = Encryptor(keyring, **scenario.encryptor) if keyring is not None else None
    try:
        model, base = build_model(scenario.table, encryptor)
        base.metadata.drop_all(engine)
        base.metadata.create_all(engine)
        if encryptor is not None:
            warm_up(encryptor)

        objects = [model(id=i, value=v) for i, v in enumerate(values, 1)]
        session = Session(engine)

        def insert() -> None:
            session.add_all(objects)
            session.commit()

        inserted, _ = measure(fake, encryptor, insert)
        session.close()

        if encryptor is not None:
            encryptor.clear_cache()
        session = Session(engine)

        def read() -> tuple[list[Any], int]:
            rows = session.scalars(select(model)).all()
            total = 0
            for row in rows:
                total += len(row.value)
            return rows, total

        selected, (rows, total) = measure(fake, encryptor, read)
        # Outside the timer: the read returned exactly what was written.
        assert len(rows) == len(values)
        assert total == VALUE_LENGTH * len(values)
        for row in rows:
            if row.value != values[row.id - 1]:
                raise AssertionError(f"{scenario.name}: row {row.id} read back wrong")
        session.close()
        base.metadata.drop_all(engine)
        return inserted, selected
    finally:
        close(encryptor)


def _mode(scenario: Scenario) -> str:
    return "reuse" if "bounded reuse" in scenario.name else "direct"


# -- reporting -------------------------------------------------------------------------------


@dataclass
class Results:
    scenarios: list[Scenario]
    inserts: dict[str, list[Phase]] = field(default_factory=dict)
    selects: dict[str, list[Phase]] = field(default_factory=dict)

    def rows(self, name: str) -> int:
        return next(s.rows for s in self.scenarios if s.name == name)

    def per_row(self, phase: str, name: str, how: Callable[[list[float]], float] = min) -> float:
        """Seconds per row, best (or median) over the repeats."""
        runs = (self.inserts if phase == "insert" else self.selects)[name]
        return how([p.seconds for p in runs]) / self.rows(name)


def print_table(results: Results) -> None:
    plain = results.scenarios[0].name
    print()
    print(
        f"{'scenario':<31}{'rows':>7} {'phase':<7}{'best µs/row':>12}{'median':>9}"
        f"{'rows/s':>10}{'vs plain':>9}{'CPU µs/row':>11}{'CPU/wall':>9}  all (s)"
    )
    for scenario in results.scenarios:
        for phase, runs in (
            ("insert", results.inserts[scenario.name]),
            ("select", results.selects[scenario.name]),
        ):
            best = results.per_row(phase, scenario.name)
            median = results.per_row(phase, scenario.name, statistics.median)
            ratio = results.per_row(phase, plain) / best
            fastest = min(runs, key=lambda p: p.seconds)
            cpu = fastest.cpu / scenario.rows
            each = " ".join(f"{p.seconds:.3f}" for p in runs)
            print(
                f"{scenario.name:<31}{scenario.rows:>7} {phase:<7}{best * 1e6:>12.1f}"
                f"{median * 1e6:>9.1f}{1 / best:>10,.0f}{ratio:>9.3f}{cpu * 1e6:>11.1f}"
                f"{fastest.cpu / fastest.seconds:>9.2f}  {each}"
            )
    print("(select = cold: every key unwrapped; CPU = process CPU of all threads, in the best run;")
    print(" CPU/wall near 1.0 with many threads: bound by one core, i.e. by the GIL)")


def print_bars(results: Results) -> bool:
    bars: list[tuple[str, str, str, str, float]] = []
    for workers in ("16", "32"):
        for phase in ("insert", "select"):
            bars.append(
                (
                    f"direct {workers} workers / one at a time, {phase}",
                    phase,
                    "KMS direct, one at a time",
                    f"KMS direct, {workers} workers",
                    8.0,
                )
            )
    for phase in ("insert", "select"):
        bars.append(
            (
                f"bounded reuse / LocalKeyring, {phase}",
                phase,
                "LocalKeyring",
                "KMS bounded reuse",
                0.8,
            )
        )
        bars.append(
            (
                f"reuse, prefetch off / Local, {phase} (info)",
                phase,
                "LocalKeyring",
                "KMS bounded reuse, prefetch off",
                0.0,
            )
        )
    print()
    print(f"{'throughput ratio (per row)':<48}{'best':>8}{'median':>8}{'bar':>7}  verdict")
    ok = True
    for label, phase, base, other, bar in bars:
        if other not in results.inserts:
            continue  # left out with --only
        best = results.per_row(phase, base) / results.per_row(phase, other)
        median = results.per_row(phase, base, statistics.median) / results.per_row(
            phase, other, statistics.median
        )
        if bar:
            passed = best >= bar
            ok = ok and passed
            verdict, bar_text = ("PASS" if passed else "BELOW BAR"), f"{bar:.2f}"
        else:
            verdict, bar_text = "-", "-"
        print(f"{label:<48}{best:>8.2f}{median:>8.2f}{bar_text:>7}  {verdict}")
    return ok


def expected_kms(scenario: Scenario, phase: str, elapsed: float) -> dict[str, int]:
    """KMS calls a phase should make: one per value in direct mode, one per wrapping key."""
    if scenario.keyring is None or scenario.name == "LocalKeyring":
        return {}
    operation = "GenerateDataKey" if phase == "insert" else "Decrypt"
    if "bounded reuse" in scenario.name:
        return {operation: math.ceil(scenario.rows / MAX_ROWS) + int(elapsed // 300.0)}
    return {operation: scenario.rows}


def print_calls(results: Results) -> bool:
    print()
    print("KMS calls, peak requests in flight, and Encryptor.stats() deltas, last repeat")
    ok = True
    for scenario in results.scenarios[1:]:
        for phase, runs in (
            ("insert", results.inserts[scenario.name]),
            ("select", results.selects[scenario.name]),
        ):
            last = runs[-1]
            want = expected_kms(scenario, phase, last.seconds)
            flag = "" if last.kms == want else f"  UNEXPECTED, want {want}"
            ok = ok and not flag
            print(f"  {scenario.name:<31}{phase:<7}kms {last.kms}{flag}")
            print(f"  {'':<38}in flight <= {last.peak_in_flight}, stats {last.stats}")
    return ok


# -- profile ---------------------------------------------------------------------------


def profile_all_threads(run: Callable[[], Any]) -> pstats.Stats:
    """cProfile ``run`` in this thread and every thread started meanwhile, in thread CPU time.

    The timer is ``time.thread_time``: with many threads the default wall clock would
    charge each function for the time its thread waits for the GIL or sleeps.
    """
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_in_new_thread(*_: Any) -> None:
        sys.setprofile(None)
        profile = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(profile)
        profile.enable()

    main = cProfile.Profile(time.thread_time)
    threading.setprofile(start_in_new_thread)
    try:
        main.enable()
        run()
        main.disable()
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
    stats = pstats.Stats(main, stream=io.StringIO())
    for profile in profiles:  # the workers have exited: Keyring/Encryptor.close()
        stats.add(profile)
    return stats


_AREAS = (
    ("botocore", "/botocore/"),
    ("fake KMS (AWS's side)", "fake_kms.py"),
    ("sqla_envelope", "/sqla_envelope/"),
    ("sqlalchemy", "/sqlalchemy/"),
    ("concurrent.futures, threading, queue", ("/concurrent/", "/threading.py", "/queue.py")),
    (
        "stdlib under botocore (email, http, json, ...)",
        ("/email/", "/http/", "/json/", "/urllib/", "/hmac.py", "/datetime.py", "/copy.py"),
    ),
    ("other Python", "/"),
)


def cpu_by_area(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Own CPU time (tottime) summed by where the function lives; C built-ins apart."""
    totals: dict[str, float] = {}
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _, _), (_, _, tottime, _, _) in raw.items():
        area = "C built-ins (crypto, json, locks, ...)"
        for name, marks in _AREAS:
            if any(m in filename for m in ((marks,) if isinstance(marks, str) else marks)):
                area = name
                break
        totals[area] = totals.get(area, 0.0) + tottime
    return sorted(totals.items(), key=lambda item: -item[1])


@dataclass
class CallCpu:
    """CPU seconds per KMS call through a KmsKeyring, in one thread."""

    generate: float  # GenerateDataKey, back to back
    decrypt: float  # Decrypt, back to back
    generate_after_gap: float  # GenerateDataKey after sleeping one round trip
    stats: pstats.Stats | None


def kms_call_cpu(latency: float, profile: bool) -> CallCpu:
    """KMS answering at once (a fake with no latency): best of 3 rounds of 300 calls each,
    then 200 calls each after a ``latency`` sleep, timed alone (``time.thread_time``).
    """
    fake = FakeKms(latency=0.0)
    keyring = KmsKeyring(
        KEY_ARN, session=fake.attach(boto3.session.Session()), region_name=REGION, prefetch=0
    )
    context = EncryptionContext({"table": "t_cpu", "column": "value"})
    keys = [keyring.generate_data_key(context) for _ in range(300)]  # and build the client

    def generate() -> None:
        for _ in range(300):
            keyring.generate_data_key(context)

    def decrypt() -> None:
        for key in keys:
            keyring.unwrap_data_key(key.wrapped_keys, context)

    best = []
    for body in (generate, decrypt):
        rounds = []
        for _ in range(3):
            _, cpu, _ = timed(body)
            rounds.append(cpu / 300)
        best.append(min(rounds))
    after_gap = 0.0
    for _ in range(200):
        time.sleep(latency)
        cpu = time.thread_time()
        keyring.generate_data_key(context)
        after_gap += time.thread_time() - cpu
    stats = None
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        generate()
        decrypt()
        profiler.disable()
        stats = pstats.Stats(profiler, stream=io.StringIO())
    return CallCpu(best[0], best[1], after_gap / 200, stats)


def print_call_cpu(results: Results, latency: float, profile: bool) -> None:
    cpu = kms_call_cpu(latency, profile)
    print()
    print("KMS call CPU, one thread, KMS answering at once (botocore + the fake's answer):")
    print(
        f"  back to back: GenerateDataKey {cpu.generate * 1e6:,.0f} µs, "
        f"Decrypt {cpu.decrypt * 1e6:,.0f} µs"
    )
    print(
        f"  GenerateDataKey after a {latency * 1e3:g} ms sleep: {cpu.generate_after_gap * 1e6:,.0f}"
        " µs (a cold CPU: what a call that waited on the network pays)"
    )
    print("Python runs on one core at a time (the GIL), so concurrency hides the latency,")
    print("never the CPU: the speed-up is at most (one-at-a-time µs/row) / (CPU µs/row)")
    for phase, call in (("insert", cpu.generate), ("select", cpu.decrypt)):
        serial = results.per_row(phase, "KMS direct, one at a time")
        print(
            f"  {phase}: one at a time {serial * 1e6:,.0f} µs/row: at most "
            f"{serial / call:.1f}x with back-to-back CPU per call"
        )
        for workers in ("16", "32"):
            name = f"KMS direct, {workers} workers"
            runs = results.inserts[name] if phase == "insert" else results.selects[name]
            fastest = min(runs, key=lambda p: p.seconds)
            used = fastest.cpu / results.rows(name)
            print(
                f"    {workers} workers used {used * 1e6:,.0f} µs CPU/row (CPU/wall "
                f"{fastest.cpu / fastest.seconds:.2f}): at most {serial / used:.1f}x"
            )
    if cpu.stats is not None:
        stats = cpu.stats
        total = stats.total_tt  # type: ignore[attr-defined]
        print("  cProfile of 300 + 300 back-to-back calls, own time by area:")
        for area, seconds in cpu_by_area(stats):
            print(f"    {area:<48}{seconds / total:>7.1%}")
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats("cumulative").print_stats(r"botocore|fake_kms|sqla_envelope", 25)
        print(out.getvalue().rstrip())


def print_profile(scenario: Scenario, engine: Engine, values: list[str], fake: FakeKms) -> None:
    scenario = replace(scenario, rows=min(scenario.rows, 2000))  # profiled, it runs ~10x slower
    calls = fake.calls()
    stats = profile_all_threads(lambda: run_scenario(scenario, engine, values, fake))
    made = sum(fake.calls().values()) - sum(calls.values())
    print()
    print(
        f"cProfile in thread CPU time, all threads: {scenario.name}, warm-up + insert + cold "
        f"select + check of {scenario.rows:,} rows ({made:,} KMS calls)"
    )
    print("(reading the clock costs a system call here: shares only, small functions inflated)")
    total = stats.total_tt  # type: ignore[attr-defined]
    for area, seconds in cpu_by_area(stats):
        print(f"  {area:<48}{seconds / total:>7.1%}")
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(15)
    print(out.getvalue().rstrip())
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("cumulative").print_stats(r"sqla_envelope|concurrent|threading", 15)
    print(out.getvalue().rstrip())


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--serial-rows", type=int, default=1_000)
    parser.add_argument("--latency", type=float, default=0.005)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="cProfile concurrent direct mode")
    parser.add_argument(
        "--cpu",
        type=int,
        help="pin the process to this CPU (docs/performance.md: noise, and how to read it)",
    )
    parser.add_argument(
        "--only",
        choices=("direct", "reuse"),
        help="the plain column, LocalKeyring and one mode's scenarios: more repeats per minute",
    )
    args = parser.parse_args(argv)
    rows, repeat = args.rows, args.repeat
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    serial_rows = min(args.serial_rows, rows)

    fake_aws_environment(REGION)
    fake = FakeKms(latency=args.latency)
    session = fake.attach(boto3.session.Session())

    print("machine")
    for key, value in [
        *machine(),
        ("boto3", boto3.__version__),
        ("botocore", botocore.__version__),
    ]:
        print(f"  {key:<15}{value}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"CPUs this process may run on: {sorted(os.sched_getaffinity(0))}")
    print(
        f"rows: {rows:,} x {VALUE_LENGTH}-char str ({serial_rows:,} for KMS one at a time, "
        f"compared per row), repeats: {repeat}"
    )
    print(
        f"KMS: answered in the client after {args.latency * 1e3:g} ms (bench/fake_kms.py), "
        f"key {KEY_ARN}"
    )

    plan = scenarios(rows, serial_rows, session)
    if args.only:
        plan = [
            s
            for s in plan
            if s.keyring is None or s.name == "LocalKeyring" or _mode(s) == args.only
        ]
    results = Results(plan, {s.name: [] for s in plan}, {s.name: [] for s in plan})
    values = random_values(rows)
    with tempfile.TemporaryDirectory(prefix="sqla-envelope-bench-kms-") as folder:
        engine = create_engine(f"sqlite:///{folder}/bench.db")
        for r in range(repeat):
            started = time.perf_counter()
            order = plan if r % 2 == 0 else plan[::-1]
            for scenario in order:
                inserted, selected = run_scenario(scenario, engine, values, fake)
                results.inserts[scenario.name].append(inserted)
                results.selects[scenario.name].append(selected)
                print(
                    f"    {scenario.name:<31} insert {inserted.seconds:7.3f} s  "
                    f"select {selected.seconds:7.3f} s",
                    flush=True,
                )
            print(f"  repeat {r + 1}/{repeat} done in {time.perf_counter() - started:.1f} s")

        print_table(results)
        ok = print_bars(results)
        ok = print_calls(results) and ok
        if args.only != "reuse":
            print_call_cpu(results, args.latency, args.profile)
            if args.profile:
                print_profile(plan[3], engine, values, fake)
        engine.dispose()

    print()
    print(f"KMS calls in all: {fake.calls()}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:,.0f} MiB")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
