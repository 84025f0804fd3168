"""TenantKeyring benchmark: 100 tenants through KMS against LocalKeyring, and a 1M-row rotation.

1. Throughput, one SQLite file per keyring in a temporary folder. A Core table
   ``patients(id, tenant_id, ssn EncryptedType(String(40), context_columns=("tenant_id",)))``
   gets ``--tenants`` x ``--rows`` rows, one transaction of executemany per tenant,
   then is read whole (Core ``select(table).all()`` and ORM ``select(Patient)``),
   with a COLD key cache: a new keyring and Encryptor before each timed read, warmed
   up outside the timer as a running process would be (its boto3 client built, its
   unwrap threads started; as bench_kms.py does), with no key of the table cached.

   - LocalKeyring: the baseline, CPU only.
   - TenantKeyring over a KmsKeyring master, KMS answered in the client by
     ``bench/fake_kms.py`` (a botocore ``before-send`` hook that sleeps
     ``--latency``, 5 ms, and answers as KMS would: botocore's client work is all
     spent, none of AWS's). Branch keys in a table of the same file. The first
     insert creates each tenant's branch key (one GenerateDataKey each); a second
     insert into a fresh table runs with the tenants' keys existing (the steady
     state of an application). A cold read asks one Decrypt per tenant.

   The collector is run and the heap frozen before each timed phase; the best of
   ``--repeat`` rounds (alternating which keyring goes first) is reported. Bars:
   cold read >= 0.8x LocalKeyring with at most ``--tenants`` KMS calls, insert >= 0.8x.

2. Rotation (``--rotation-rows``, 1,000,000; 0 skips it): a SQLite file holds that
   many rows over ``--tenants`` tenants under branch key version 1 (filled with the
   keyring, not timed); ``rotate_all()`` makes version 2; then ``rewrap`` runs in a
   child process: over a tenth of the rows (another file) and over all of them,
   reporting each child's peak RSS (memory must not grow with the table); then
   again on a fresh copy, killed with SIGKILL after ``--kill-after`` seconds and run
   again to the end: the second run must change exactly the rows the first had not
   committed, every row must then be under version 2 (plain SQL over the header),
   and a sample of 1,000 rows decrypts.

3. ``--wrap-choices``: the per-value cost of the three ways a branch key could
   protect a data key, measured on one process with ``timeit`` (docs/format.md,
   section 12, explains the choice): the AWS hierarchical keyring's (a random salt
   and IV, a NIST SP 800-108 counter-mode KDF, AES-256-GCM), a data key derived
   with HMAC from the branch key and a salt (nothing to unwrap), and AES-SIV under
   a wrapping key derived once per branch key (what TenantKeyring does), with
   LocalKeyring's own wrap for reference.

Run::

    .venv/bin/python bench/bench_tenants.py [--tenants 100] [--rows 1000] [--repeat 3]
        [--rotation-rows 1000000] [--kill-after 20] [--wrap-choices]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fake_kms import FakeKms, fake_aws_environment  # noqa: E402

from sqla_envelope import (  # noqa: E402
    EncryptedType,
    EncryptionContext,
    Encryptor,
    KmsKeyring,
    LocalKeyring,
    configure,
)
from sqla_envelope.rotation import rewrap_column  # noqa: E402
from sqla_envelope.tenants import TenantKeyring, create_branch_key_table  # noqa: E402

REGION = "us-east-1"
KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/5e1f0c2a-7b3d-4c8e-9a61-2f4d8b7e0c13"
MASTER = bytes(range(32))


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    tenant_id: Mapped[str] = mapped_column(sa.String(20))
    ssn: Mapped[str] = mapped_column(EncryptedType(sa.String(40), context_columns=("tenant_id",)))


def table_named(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("tenant_id", sa.String(20)),
        sa.Column("ssn", EncryptedType(sa.String(40), context_columns=("tenant_id",))),
    )


def tenant_name(n: int) -> str:
    return f"tenant-{n:04d}"


def rows_of(tenant: int, per_tenant: int) -> list[dict[str, Any]]:
    start = tenant * per_tenant
    return [
        {"id": i, "tenant_id": tenant_name(tenant), "ssn": f"{i:09d}-{'x' * 30}"}
        for i in range(start, start + per_tenant)
    ]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    gc.freeze()
    started = time.perf_counter()
    try:
        result = fn()
    finally:
        elapsed = time.perf_counter() - started
        gc.unfreeze()
    return elapsed, result


def insert(engine: sa.Engine, table: sa.Table, tenants: int, per_tenant: int) -> None:
    for tenant in range(tenants):
        with engine.begin() as conn:
            conn.execute(table.insert(), rows_of(tenant, per_tenant))


def read_core(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return len(conn.execute(sa.select(table)).all())


def read_orm(engine: sa.Engine) -> int:
    with Session(engine) as session:
        return len([p.ssn for p in session.scalars(sa.select(Patient))])


# -- part 1 ------------------------------------------------------------------------------


class Setup:
    """One keyring kind on its own database file: how to build a cold keyring for it."""

    def __init__(self, name: str, folder: Path, fake: FakeKms | None) -> None:
        self.name = name
        self.engine = sa.create_engine(f"sqlite:///{folder / (name + '.db')}")
        self.fake = fake
        self.session = fake.attach(boto3.session.Session()) if fake is not None else None
        if fake is not None:
            create_branch_key_table(self.engine)

    def keyring(self) -> Any:
        if self.session is None:
            return LocalKeyring({"m": MASTER})
        master = KmsKeyring(KEY_ARN, session=self.session, region_name=REGION)
        return TenantKeyring(master, self.engine)

    def kms_calls(self) -> int:
        return sum(self.fake.calls().values()) if self.fake is not None else 0


def warm_up(encryptor: Encryptor) -> None:
    """What a running process has already: the boto3 client built, the unwrap threads started.

    As bench_kms.py does, outside the timer and the KMS count; no branch key is loaded.
    """
    master = getattr(encryptor.keyring, "master", None)
    if master is not None:
        master.generate_data_key(EncryptionContext({"bench": "warm-up"}))
    if encryptor.prefetch:
        list(encryptor._pool().map(time.sleep, [0.002] * encryptor.max_workers))


def throughput(args: argparse.Namespace, folder: Path) -> bool:
    fake = FakeKms(latency=args.latency)
    setups = [Setup("local", folder, None), Setup("tenant", folder, fake)]
    rows = args.tenants * args.rows
    best: dict[tuple[str, str], float] = {}
    calls: dict[tuple[str, str], int] = {}
    for round_ in range(args.repeat):
        for setup in setups if round_ % 2 == 0 else setups[::-1]:
            engine = setup.engine
            for phase in ("first insert", "insert"):
                # "first insert": every tenant new (branch keys made); "insert": keys exist.
                if phase == "first insert":
                    with engine.begin() as conn:
                        if fake is not None and setup.session is not None:
                            conn.execute(sa.text("DELETE FROM sqla_envelope_branch_keys"))
                    configure(Encryptor(setup.keyring()))
                table = table_named("p_first" if phase == "first insert" else "patients")
                table.metadata.drop_all(engine)
                table.metadata.create_all(engine)
                before = setup.kms_calls()
                seconds, _ = timed(lambda t=table, e=engine: insert(e, t, args.tenants, args.rows))
                key = (setup.name, phase)
                best[key] = min(best.get(key, seconds), seconds)
                calls[key] = setup.kms_calls() - before
            for phase, read in (
                ("cold read, Core", lambda e=engine: read_core(e, table_named("patients"))),
                ("cold read, ORM", lambda e=engine: read_orm(e)),
            ):
                encryptor = Encryptor(setup.keyring())  # no key cached, branch or data
                warm_up(encryptor)
                configure(encryptor)
                before = setup.kms_calls()
                seconds, count = timed(read)
                assert count == rows, (count, rows)
                key = (setup.name, phase)
                best[key] = min(best.get(key, seconds), seconds)
                calls[key] = setup.kms_calls() - before
    print(
        f"\n{args.tenants} tenants x {args.rows} rows = {rows:,} rows; KMS latency "
        f"{args.latency * 1000:g} ms; best of {args.repeat}"
    )
    print(
        f"{'phase':<18}{'LocalKeyring':>16}{'TenantKeyring+KMS':>20}{'ratio':>8}{'KMS calls':>11}"
    )
    ok = True
    for phase in ("first insert", "insert", "cold read, Core", "cold read, ORM"):
        local, tenant = best[("local", phase)], best[("tenant", phase)]
        ratio = local / tenant
        n = calls[("tenant", phase)]
        print(
            f"{phase:<18}{rows / local:>12,.0f} r/s{rows / tenant:>16,.0f} r/s{ratio:>8.2f}{n:>11}"
        )
        if phase != "first insert":
            ok &= ratio >= 0.8
        if phase.startswith("cold read"):
            ok &= n <= args.tenants
    print(
        "bars (insert and cold reads >= 0.8x, reads <= one KMS call per tenant):",
        "PASS" if ok else "FAIL",
    )
    return ok


# -- part 2 ------------------------------------------------------------------------------


def rotation_keyring(engine: sa.Engine) -> TenantKeyring:
    return TenantKeyring(LocalKeyring({"m": MASTER}), engine)


def fill(path: Path, tenants: int, rows: int) -> None:
    engine = sa.create_engine(f"sqlite:///{path}")
    create_branch_key_table(engine)
    keyring = rotation_keyring(engine)
    configure(Encryptor(keyring))
    table = table_named("patients")
    table.metadata.create_all(engine)
    per_tenant = rows // tenants
    insert(engine, table, tenants, per_tenant)
    keyring.rotate_all()
    engine.dispose()


def child(path: str) -> None:
    """Rewrap every row to its tenant's active version; print the report and peak RSS."""
    engine = sa.create_engine(f"sqlite:///{path}")
    encryptor = Encryptor(rotation_keyring(engine))
    configure(encryptor)
    report = rewrap_column(engine, table_named("patients").c.ssn, encryptor, batch_size=2000)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "changed": report.changed,
                "skipped": report.skipped,
                "failed": report.failed,
                "rss_kib": rss,
            }
        )
    )


def run_child(path: Path, kill_after: float | None = None) -> dict[str, Any] | None:
    command = [sys.executable, __file__, "--child", str(path)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return None
    out, _ = process.communicate()
    result: dict[str, Any] = json.loads(out)
    result["seconds"] = time.perf_counter() - started
    return result


def under_version(path: Path) -> dict[str, int]:
    """Rows per key reference version, from the stored headers (plain SQL, no key)."""
    engine = sa.create_engine(f"sqlite:///{path}")
    counts: dict[str, int] = {}
    with engine.connect() as conn:
        # byte 3 on: the key reference "bk:<tenant>:<version>", its length at byte 2
        query = sa.text("SELECT substr(ssn, 4, unicode(substr(ssn, 3, 1))) FROM patients")
        for (ref,) in conn.execute(query):
            version = bytes(ref).decode("ascii").rsplit(":", 1)[1]
            counts[version] = counts.get(version, 0) + 1
    engine.dispose()
    return counts


def sample_reads(path: Path) -> int:
    engine = sa.create_engine(f"sqlite:///{path}")
    configure(Encryptor(rotation_keyring(engine)))
    table = table_named("patients")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table).order_by(sa.func.random()).limit(1000)).all()
    engine.dispose()
    assert all(row.ssn.startswith(f"{row.id:09d}-") for row in rows)
    return len(rows)


def rotation(args: argparse.Namespace, folder: Path) -> bool:
    n = args.rotation_rows
    small, big = folder / "rot_small.db", folder / "rot_big.db"
    started = time.perf_counter()
    fill(small, args.tenants, n // 10)
    fill(big, args.tenants, n)
    print(
        f"\nrotation: filled {n // 10:,} and {n:,} rows in {time.perf_counter() - started:.0f} s;"
        f" rotate_all() made version 2 for {args.tenants} tenants"
    )
    copy = folder / "rot_kill.db"
    shutil.copy(big, copy)
    tenth = run_child(small)
    full = run_child(big)
    assert tenth is not None
    assert full is not None
    for label, result, rows in (("1/10", tenth, n // 10), ("all", full, n)):
        print(
            f"  rewrap {label:>4}: {result['changed']:,} rows changed in "
            f"{result['seconds']:.0f} s ({rows / result['seconds']:,.0f} rows/s), "
            f"peak RSS {result['rss_kib'] / 1024:.0f} MiB"
        )
    flat = full["rss_kib"] <= tenth["rss_kib"] * 1.2
    killed = run_child(copy, kill_after=args.kill_after)
    done = under_version(copy).get("2", 0)
    resumed = run_child(copy)
    assert killed is None
    assert resumed is not None
    counts = under_version(copy)
    resumed_ok = resumed["changed"] == n - done and counts == {"2": n}
    sampled = sample_reads(copy)
    print(
        f"  killed after {args.kill_after:g} s with {done:,} rows committed; the rerun changed"
        f" {resumed['changed']:,} (expected {n - done:,}); rows per version now {counts};"
        f" {sampled} sampled rows decrypt"
    )
    ok = flat and resumed_ok and full["changed"] == n and full["failed"] == 0
    print("bars (flat memory within 20%, resumed exactly, all under v2):", "PASS" if ok else "FAIL")
    return ok


# -- part 3 ------------------------------------------------------------------------------


def wrap_choices() -> None:
    import hmac
    import timeit

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from sqla_envelope.aead import LocalKeyWrapper
    from sqla_envelope.context import EncryptionContext
    from sqla_envelope.tenants.branch import BranchKey

    branch, data_key = os.urandom(32), os.urandom(32)
    context = EncryptionContext({"table": "patients", "column": "ssn", "tenant_id": "acme"})
    aad = b"aad-prefix" + context.canonical
    fixed = b"\x00\x00\x00\x01sqla-envelope-hierarchy\x00"
    bits = (256).to_bytes(4, "big")

    def aws_wrap() -> bytes:
        salt, iv = os.urandom(16), os.urandom(12)
        key = hmac.digest(branch, fixed + salt + bits, "sha256")  # SP 800-108, one block
        return salt + iv + AESGCM(key).encrypt(iv, data_key, aad)

    aws_blob = aws_wrap()

    def aws_unwrap() -> bytes:
        key = hmac.digest(branch, fixed + aws_blob[:16] + bits, "sha256")
        return AESGCM(key).decrypt(aws_blob[16:28], aws_blob[28:], aad)

    def derive_new() -> bytes:
        return hmac.digest(branch, fixed + os.urandom(16) + aad + bits, "sha256")

    def derive_again() -> bytes:
        return hmac.digest(branch, fixed + aws_blob[:16] + aad + bits, "sha256")

    key = BranchKey("acme", 1, branch)
    wrapped = key.wrap(data_key, context)
    local = LocalKeyWrapper(branch)
    local_blob = local.wrap(data_key, aad)
    choices = {
        "AWS: salt + SP 800-108 KDF + AES-GCM": (aws_wrap, aws_unwrap),
        "derived data key (HMAC of salt, context)": (derive_new, derive_again),
        "TenantKeyring: AES-SIV under the branch key": (
            lambda: key.wrap(os.urandom(32), context),
            lambda: key.unwrap(wrapped.blob, context),
        ),
        "LocalKeyring (reference)": (
            lambda: local.wrap(os.urandom(32), aad),
            lambda: local.unwrap(local_blob, aad),
        ),
    }
    print(f"\n{'per value':<46}{'wrap (new key)':>16}{'unwrap':>10}")
    for name, (wrap, unwrap) in choices.items():
        costs = [min(timeit.repeat(f, number=100_000, repeat=5)) / 100_000 for f in (wrap, unwrap)]
        print(f"{name:<46}{costs[0] * 1e6:>13.2f} us{costs[1] * 1e6:>7.2f} us")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--rows", type=int, default=1000, help="rows per tenant")
    parser.add_argument("--latency", type=float, default=0.005)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rotation-rows", type=int, default=1_000_000)
    parser.add_argument("--kill-after", type=float, default=20.0)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--wrap-choices", action="store_true", help="only part 3")
    parser.add_argument("--child", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    if args.wrap_choices:
        wrap_choices()
        return 0
    fake_aws_environment()
    with tempfile.TemporaryDirectory(prefix="bench-tenants-") as tmp:
        ok = True
        if not args.skip_throughput:
            ok &= throughput(args, Path(tmp))
        if args.rotation_rows:
            ok &= rotation(args, Path(tmp))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
