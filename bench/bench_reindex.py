"""reindex at scale: flat memory over a million rows, and a run killed midway that resumes.

A SQLite file holds N rows (1,000,000) of an encrypted email with an empty blind
index column. ``reindex`` runs in a child process:

1. over N/10 rows and over N rows (separate files), reporting the child's peak RSS:
   batch by batch, memory must not grow with the table;
2. over N rows again, killed with SIGKILL after ``--kill-after`` seconds; then run
   again to the end, which must write only the rows the first run had not committed,
   and every index value is then checked against a fresh computation on a sample.

Run::

    .venv/bin/python bench/bench_reindex.py [--rows 1000000] [--kill-after 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqla_envelope import BlindIndex, EncryptedType, Encryptor, LocalKeyring, configure  # noqa: E402
from sqla_envelope.search import reindex_column  # noqa: E402

KEY = bytes(range(32))


def table() -> sa.Table:
    return sa.Table(
        "users",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", EncryptedType(sa.String(100))),
        sa.Column("email_bidx", BlindIndex("email", key=bytes(32))),
    )


def encryptor() -> Encryptor:
    return Encryptor(LocalKeyring({"k": KEY}))


def fill(path: Path, rows: int) -> None:
    configure(encryptor())
    engine = sa.create_engine(f"sqlite:///{path}")
    users = table()
    users.metadata.create_all(engine)
    batch = 20_000
    with engine.begin() as conn:
        for start in range(0, rows, batch):
            conn.execute(
                users.insert(),
                [
                    {"id": i, "email": f"user{i}@example.org"}
                    for i in range(start, min(rows, start + batch))
                ],
            )
        conn.execute(users.update().values(email_bidx=None))  # the index starts empty
    engine.dispose()


def child(path: str) -> None:
    """Run reindex to the end; print the report and the peak RSS as JSON."""
    configure(encryptor())
    engine = sa.create_engine(f"sqlite:///{path}")
    report = reindex_column(engine, table().c.email_bidx, batch_size=2000)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"changed": report.changed, "skipped": report.skipped, "rss_kib": rss}))


def run_child(path: Path, kill_after: float | None = None) -> dict[str, int] | None:
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", str(path)], stdout=subprocess.PIPE, text=True
    )
    if kill_after is not None:
        time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
        process.wait()
        return None
    out, _ = process.communicate()
    return json.loads(out)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--kill-after", type=float, default=20.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    with tempfile.TemporaryDirectory() as folder:
        small, large = Path(folder) / "small.db", Path(folder) / "large.db"
        started = time.perf_counter()
        fill(small, args.rows // 10)
        fill(large, args.rows)
        took = time.perf_counter() - started
        print(f"filled {args.rows // 10:,} and {args.rows:,} rows in {took:.0f} s")
        for path, rows in ((small, args.rows // 10), (large, args.rows)):
            started = time.perf_counter()
            result = run_child(path)
            assert result is not None
            assert result["changed"] == rows
            print(f"reindex of {rows:>9,} rows: {time.perf_counter() - started:6.1f} s, "
                  f"peak RSS {result['rss_kib'] / 1024:6.1f} MiB")  # fmt: skip
        os.unlink(large)
        fill(large, args.rows)
        run_child(large, kill_after=args.kill_after)
        engine = sa.create_engine(f"sqlite:///{large}")
        with engine.connect() as conn:
            done = conn.execute(sa.text("SELECT count(email_bidx) FROM users")).scalar_one()
        print(f"killed after {args.kill_after:g} s: {done:,} rows indexed and committed")
        result = run_child(large)
        assert result is not None
        print(
            f"rerun: {result['changed']:,} changed, {result['skipped']:,} skipped (already right)"
        )
        assert result["changed"] == args.rows - done
        assert result["skipped"] == done
        configure(encryptor())
        users = table()
        with engine.connect() as conn:
            for i in (0, args.rows // 2, args.rows - 1):
                found = (
                    conn.execute(
                        sa.select(users.c.id).where(users.c.email == f"user{i}@example.org")
                    )
                    .scalars()
                    .all()
                )
                assert found == [i], (i, found)
        print("every sampled row is found through the index: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
