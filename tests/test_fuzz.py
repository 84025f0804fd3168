"""A short run of the envelope fuzzer (fuzz/fuzz_envelope.py) on every test run.

The long run, ``python fuzz/fuzz_envelope.py --inputs 1000000``, and its figures are
in docs/security.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sqla_envelope import Encryptor, LocalKeyring


def _fuzzer() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "fuzz" / "fuzz_envelope.py"
    spec = importlib.util.spec_from_file_location("fuzz_envelope", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_envelope"] = module
    spec.loader.exec_module(module)
    return module


FUZZ = _fuzzer()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mutated_envelopes_never_open_to_another_value_nor_raise_anything_else(seed: int) -> None:
    report = FUZZ.run(3_000, seed, trace_memory=True)
    assert report.problems == []
    # No input is believed about its own lengths: what one input makes Python allocate
    # stays small whatever it claims. (Allocation, not time: a wall clock on a shared
    # machine is no test. The long run in fuzz/ also bounds the time.)
    assert report.most_allocated < 64 * 1024, report.most_allocated
    opened_changed_v2 = [k for k in report.outcomes if "v2 envelope opened" in k]
    assert opened_changed_v2 == []
    # Every kind of mutation was tried, and most were refused.
    assert {k.split(":")[0] for k in report.outcomes} >= {
        "bit flip",
        "copy replaced",
        "commitment",
        "random bytes",
        "truncation",
        "version",
    }


def test_the_oracle_catches_a_wrong_value_and_another_exception() -> None:
    class Lying(Encryptor):
        def decrypt(self, envelope: object, context: object = None) -> bytes:
            return b"not what was written"

    class Broken(Encryptor):
        def decrypt(self, envelope: object, context: object = None) -> bytes:
            raise ValueError("a bare error")

    seed = FUZZ.seeds(__import__("random").Random(0), 1)[0]
    report = FUZZ.Report(genuine={seed.envelope: seed.plaintext})
    keyring = LocalKeyring.generate()
    FUZZ.check_one(seed.envelope, seed, Lying(keyring), report, "as written")
    FUZZ.check_one(seed.envelope, seed, Broken(keyring), report, "as written")
    assert report.problems == [
        "as written: a genuine envelope opened to another value",
        "as written: decrypt raised ValueError",
    ]


def test_the_memory_bound_catches_a_reader_that_believes_a_claimed_length() -> None:
    import tracemalloc

    from sqla_envelope.errors import MalformedEnvelopeError

    class Believing(Encryptor):
        def decrypt(self, envelope: object, context: object = None) -> bytes:
            claimed = int.from_bytes(bytes(envelope)[1:4], "big")  # type: ignore[call-overload]
            buffer = bytearray(claimed)  # what a parser that trusts the header would do
            raise MalformedEnvelopeError(f"short by {len(buffer)} bytes")

    seed = FUZZ.seeds(__import__("random").Random(0), 1)[0]
    report = FUZZ.Report()
    tracemalloc.start()
    try:
        FUZZ.check_one(b"\x02\xff\xff\xff", seed, Believing(LocalKeyring.generate()), report, "x")
    finally:
        tracemalloc.stop()
    assert report.problems == []
    assert report.most_allocated > 16_000_000
