"""Fuzz the envelope parser and Encryptor.decrypt with mutated envelopes of both formats.

Every input is a real envelope (v2 as written today, v1 as 0.1 wrote it, with one
or two wrapped copies), changed in one of the ways an attacker with write access
or a damaged disk would change it, or random bytes. The oracle, for each input:

- parsing (``unpack``, ``header_end``, ``wrapped_keys_of``) returns or raises
  ``MalformedEnvelopeError``, nothing else;
- ``Encryptor.decrypt`` raises an ``EnvelopeError`` or returns exactly the
  original plaintext; for a v2 envelope, only when the bytes still are the
  original (v1 left its wrapped copies unauthenticated: an edited copy list
  around a genuine copy opens, to the same value, and is counted apart);
- no input takes longer than ``--slow`` seconds (the long run only: a wall clock
  on a shared machine is no test), and, when ``trace_memory`` is on, no input makes
  Python allocate more than a bound fixed by its own size: a length field that
  claims gigabytes must be refused, not believed. Allocation is deterministic, so
  the short run in the test suite checks it instead of the time.

A short run is part of the test suite (tests/test_fuzz.py); a long one is::

    python fuzz/fuzz_envelope.py --inputs 1000000 [--seed N]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import random
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqla_envelope import Encryptor, EnvelopeError, LocalKeyring
from sqla_envelope.aead import random_bytes
from sqla_envelope.context import EncryptionContext
from sqla_envelope.envelope import (
    WrappedKey,
    header_end,
    pack,
    pack_v1,
    unpack,
    wrapped_keys_of,
)
from sqla_envelope.errors import MalformedEnvelopeError
from sqla_envelope.keyrings.base import DataKey

CONTEXT = EncryptionContext({"table": "users", "column": "ssn"})
ONE = LocalKeyring({"k1": b"\x01" * 32})
TWO = LocalKeyring({"k2": b"\x02" * 32})
BOTH = LocalKeyring({"k1": b"\x01" * 32, "k2": b"\x02" * 32}, primary="k1")


class _TwoCopies:
    """A keyring that wraps each data key under both local keys (as multi-region KMS does)."""

    def generate_data_key(self, context: EncryptionContext) -> DataKey:
        key = ONE.generate_data_key(context)
        return DataKey(key.plaintext, key.wrapped_keys + TWO.wrap_data_key(key.plaintext, context))

    def wrap_data_key(self, data_key: bytes, context: EncryptionContext) -> tuple[WrappedKey, ...]:
        return ONE.wrap_data_key(data_key, context)

    def unwrap_data_key(self, wrapped_keys: object, context: EncryptionContext) -> bytes:
        return BOTH.unwrap_data_key(wrapped_keys, context)  # type: ignore[arg-type]

    def is_primary(self, wrapped_key: WrappedKey) -> bool:
        return ONE.is_primary(wrapped_key)


def _v1(plaintext: bytes) -> bytes:
    """What 0.1 wrote: AES-GCM under the data key itself, aad = 0x01 || context."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = ONE.generate_data_key(CONTEXT)
    nonce = random_bytes(12)
    sealed = AESGCM(key.plaintext).encrypt(nonce, plaintext, b"\x01" + CONTEXT.canonical)
    return pack_v1(key.wrapped_keys, nonce, sealed)


@dataclass
class Seed:
    envelope: bytes
    plaintext: bytes


def seeds(rng: random.Random, count: int = 24) -> list[Seed]:
    """Real envelopes: v2 with one and two copies, v1, of plaintexts of a few sizes."""
    writers: list[Callable[[bytes], bytes]] = [
        lambda p: Encryptor(ONE).encrypt(p, CONTEXT),
        lambda p: Encryptor(_TwoCopies()).encrypt(p, CONTEXT),  # type: ignore[arg-type]
        _v1,
    ]
    made = []
    for i in range(count):
        plaintext = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 11, 40, 300))))
        made.append(Seed(writers[i % len(writers)](plaintext), plaintext))
    return made


def _mutations(rng: random.Random, seed: Seed, pool: list[Seed]) -> Iterator[tuple[str, bytes]]:
    data = seed.envelope
    n = len(data)
    at = rng.randrange(n)
    flipped = bytearray(data)
    flipped[at] ^= 1 << rng.randrange(8)
    yield "bit flip", bytes(flipped)
    changed = bytearray(data)
    changed[at] = rng.randrange(256)
    yield "byte change", bytes(changed)
    yield "truncation", data[: rng.randrange(n)]
    yield "extension", data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    yield "version", bytes((rng.choice((0, 1, 2, 3, 255)),)) + data[1:]
    yield "random bytes", bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    other = rng.choice(pool).envelope
    yield "splice", data[: rng.randrange(n)] + other[rng.randrange(len(other)) :]
    try:
        parsed = unpack(data)
        foreign = unpack(other)
    except MalformedEnvelopeError:
        return
    keys = list(parsed.wrapped_keys)
    edits = {
        "copy duplicated": keys + keys[:1],
        "copy removed": keys[1:] or keys,
        "copies reordered": keys[::-1],
        "copy replaced": [foreign.wrapped_keys[0], *keys[1:]],
        "copy added": keys + list(foreign.wrapped_keys[:1]),
    }
    for name, edited in edits.items():
        if parsed.version == 2:
            yield name, pack(edited, parsed.commitment, parsed.nonce, parsed.sealed)
        else:
            yield name, pack_v1(edited, parsed.nonce, parsed.sealed)
    if parsed.version == 2:
        commitment = bytearray(parsed.commitment)
        commitment[rng.randrange(32)] ^= 1
        yield "commitment", pack(keys, bytes(commitment), parsed.nonce, parsed.sealed)
        if foreign.version == 2:
            yield (
                "foreign commitment",
                pack(keys, foreign.commitment, parsed.nonce, parsed.sealed),
            )


@dataclass
class Report:
    inputs: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)
    slowest: float = 0.0
    most_allocated: int = 0  # peak bytes allocated by one input beyond its own size
    genuine: dict[bytes, bytes] = field(default_factory=dict)  # envelope -> its plaintext


def check_one(data: bytes, seed: Seed, reader: Encryptor, report: Report, name: str) -> None:
    """Run one input through the parser and the Encryptor; record what happened."""
    tracing = tracemalloc.is_tracing()
    if tracing:
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
    began = time.perf_counter()
    try:
        end = header_end(data)
        wrapped_keys_of(data, end)
        unpack(data)
    except MalformedEnvelopeError:
        pass
    except Exception as exc:  # the oracle: nothing but MalformedEnvelopeError
        report.problems.append(f"{name}: parser raised {type(exc).__name__}")
    try:
        opened = reader.decrypt(data, CONTEXT)
    except EnvelopeError as exc:
        report.outcomes[f"{name}: {type(exc).__name__}"] += 1
    except Exception as exc:
        report.problems.append(f"{name}: decrypt raised {type(exc).__name__}")
    else:
        genuine = report.genuine.get(data)
        if genuine is not None:  # a splice can rebuild another real envelope exactly
            if opened != genuine:
                report.problems.append(f"{name}: a genuine envelope opened to another value")
            report.outcomes[f"{name}: opened, a genuine envelope"] += 1
        elif opened != seed.plaintext:
            report.problems.append(f"{name}: opened to another value")
        elif seed.envelope[0] == 1 and data[0] == 1:
            # v1 left its wrapped copies out of the associated data: a copy list
            # edited around a genuine copy still opens, to the same value. Never
            # to another one; the strict commitment policy refuses v1 outright.
            report.outcomes[f"{name}: v1 opened to the same value"] += 1
        else:
            report.problems.append(f"{name}: a changed v2 envelope opened")
    report.slowest = max(report.slowest, time.perf_counter() - began)
    if tracing:
        peak = tracemalloc.get_traced_memory()[1] - baseline - len(data)
        if peak > RECHECK_ABOVE:
            # tracemalloc counts every thread's allocations: another thread of the
            # process (a test server, a pool) may have allocated meanwhile. An input
            # that makes the reader allocate does so every time; keep the least.
            peak = min(peak, *(_allocated(data, reader) for _ in range(2)))
        report.most_allocated = max(report.most_allocated, peak)
    report.inputs += 1


RECHECK_ABOVE = 64 * 1024


def _allocated(data: bytes, reader: Encryptor) -> int:
    """What parsing and decrypting ``data`` again makes Python allocate beyond its size."""
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    with contextlib.suppress(Exception):
        unpack(data)
    with contextlib.suppress(Exception):
        reader.decrypt(data, CONTEXT)
    return tracemalloc.get_traced_memory()[1] - baseline - len(data)


def run(
    inputs: int,
    seed: int = 0,
    progress: Callable[[Report], None] | None = None,
    trace_memory: bool = False,
) -> Report:
    """Fuzz ``inputs`` inputs; a failing input is recorded in the report, not raised.

    ``trace_memory`` records in ``most_allocated`` the most any one input made Python
    allocate beyond its own size (tracemalloc, which slows the run about twofold).
    """
    if trace_memory and not tracemalloc.is_tracing():
        tracemalloc.start()
        try:
            return run(inputs, seed, progress)
        finally:
            tracemalloc.stop()
    rng = random.Random(seed)
    pool = seeds(rng)
    # The cache is off, so every input goes through the unwrap and its checks.
    reader = Encryptor(BOTH, cache_size=0)
    report = Report(genuine={s.envelope: s.plaintext for s in pool})
    while report.inputs < inputs:
        chosen = rng.choice(pool)
        for name, data in _mutations(rng, chosen, pool):
            check_one(data, chosen, reader, report, name)
            if report.inputs >= inputs:
                break
        if progress is not None and report.inputs % 50_000 < 16:
            progress(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slow", type=float, default=1.0, help="seconds one input may take")
    args = parser.parse_args(argv)
    began = time.monotonic()

    def show(report: Report) -> None:
        rate = report.inputs / max(time.monotonic() - began, 1e-9)
        print(
            f"{report.inputs:,} inputs, {rate:,.0f}/s, {len(report.problems)} problems", flush=True
        )

    report = run(args.inputs, args.seed, show)
    elapsed = time.monotonic() - began
    print(f"\n{report.inputs:,} inputs in {elapsed:,.0f} s ({report.inputs / elapsed:,.0f}/s)")
    print(f"slowest input: {report.slowest * 1000:.1f} ms")
    for outcome, count in sorted(report.outcomes.items()):
        print(f"  {count:>9,}  {outcome}")
    for problem in report.problems[:20]:
        print(f"PROBLEM: {problem}")
    failed = bool(report.problems) or report.slowest > args.slow
    print("FAILED" if failed else "no wrong value, no other exception, no hang")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
