"""Micro-benchmark: what each primitive of the per-value path costs on this machine.

Times, per operation, the pieces an encrypted value goes through, from the
crypto floor up to the column's own bind and result closures:

* ``os.urandom(32)`` and ``os.urandom(12)`` (a data key, a nonce);
* ``AESGCM(key)`` construction, AES-GCM encrypt and decrypt of 40 bytes;
* the local key wrap and unwrap (``sqla_envelope.aead.LocalKeyWrapper``) and the
  ``LocalKeyring`` calls around them;
* ``envelope.pack`` / ``unpack`` / ``header_size`` / ``wrapped_keys_of``;
* ``Encryptor.seal`` and ``Encryptor.open``: cold with ``cache_size=0`` (one unwrap
  each time), cold through an enabled cache (miss, insert, and evict when full:
  what a first read of a table does), and warm (a cache hit);
* the String codec's encode and decode, and ``EncryptedType``'s bind and result
  closures (what SQLAlchemy calls once per value);
* what the hot path avoids: building the canonical ``EncryptionContext`` (done
  once per column), and a locked counter (the Encryptor uses ``itertools.count``);
* the memory a cached cipher holds (RSS per live ``AESGCM`` object) and what
  building ciphers that stay alive costs (new pages) against reused memory;
* the key cache: ``KeyCache.get_or_load`` (hit, miss + insert), a bare
  ``OrderedDict``, and ``cachetools.TTLCache`` for comparison (skipped if
  cachetools is not installed), to check the claim that TTLCache costs 3 to 5 µs
  an operation.

Each figure is the best of 5 timeit runs (``autorange`` picks the loop count;
timeit turns the collector off while timing); ``--rounds K`` runs the whole suite
K times, spread over a few minutes, keeps each operation's best and shows how far
the worst round was from it (this VM is shared, so that spread is the noise).
Operations that need a new input each time (a cold cache, a new key) loop over a
prepared list and include the loop's own overhead, printed as "per-item loop
overhead".

Run::

    .venv/bin/python bench/micro.py [--rounds K]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import threading
import time
import timeit
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cryptography
from bench_core import code_version  # one implementation for both scripts
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlalchemy.dialects import sqlite

# Run from a checkout without installing: make the package next to bench/ importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqla_envelope import EncryptedType, EncryptionContext, Encryptor, LocalKeyring
from sqla_envelope.aead import LocalKeyWrapper, committed_cipher, new_committed_cipher
from sqla_envelope.cache import KeyCache
from sqla_envelope.codecs import codec_for
from sqla_envelope.envelope import header_size, pack, unpack, wrapped_keys_of

try:
    import cachetools
except ImportError:  # pragma: no cover - optional comparison
    cachetools = None

REPEAT = 5
ITEMS = 20_000  # distinct inputs for the operations that cannot reuse one
VALUE = "k3J9xQ2mZ8vB7nL1pR4tY6wE0uI5oA3sD8fG2hJ"  # 40 characters
AAD_PREFIX = b"\x01"

# operation -> (best seconds of each round, note); insertion order is print order
results: dict[str, tuple[list[float], str]] = {}


def best(stmt: str, namespace: dict[str, Any]) -> float:
    """Best seconds per execution of ``stmt`` over REPEAT timeit runs."""
    timer = timeit.Timer(stmt, globals=namespace)
    number, _ = timer.autorange()
    return min(timer.repeat(REPEAT, number)) / number


def per_item(body: Callable[[Any], Any], items: list[Any], setup: Callable[[], Any]) -> float:
    """Best seconds per item of ``for x in items: body(x)``, ``setup()`` before each run."""
    namespace = {"body": body, "items": items}
    timer = timeit.Timer("for x in items: body(x)", globals=namespace)
    runs = []
    for _ in range(REPEAT):
        setup()
        runs.append(timer.timeit(1) / len(items))
    return min(runs)


def record(section: str, name: str, seconds: float, note: str = "") -> None:
    results.setdefault(f"{section}: {name}", ([], note))[0].append(seconds)


def noop(*_: object) -> None:
    """A no-op, to measure the per-item loop's own overhead."""


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cipher_memory() -> None:
    """What a cache of ciphers costs: RSS per live AESGCM, and first-touch construction.

    Runs first, before anything else has grown the heap: building ciphers that stay
    alive touches new pages (page faults); building them where freed ones were
    reuses memory. One pass each over ITEMS keys, so these two are single runs.
    """
    keys = [os.urandom(32) for _ in range(ITEMS)]
    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    kept = [AESGCM(k) for k in keys]
    first_touch = (time.perf_counter() - start) / ITEMS
    per_object = (rss_bytes() - before) / ITEMS
    del kept
    start = time.perf_counter()
    kept = [AESGCM(k) for k in keys]
    reused = (time.perf_counter() - start) / ITEMS
    del kept
    s = "memory"
    record(s, f"AESGCM(key) kept alive, {ITEMS:,}, new pages", first_touch, "one run")
    record(s, f"AESGCM(key) kept alive, {ITEMS:,}, reused memory", reused, "one run")
    print(
        f"RSS per live AESGCM object: {per_object:,.0f} bytes (a 10,000-key cache: "
        f"{per_object * 10_000 / 2**20:,.0f} MiB)"
    )


def run_round() -> None:
    """Time every operation once (each the best of REPEAT timeit runs)."""
    keyring = LocalKeyring.generate()
    table = Table(
        "secret",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("value", EncryptedType(String(40))),
    )
    column_type = table.c.value.type
    context = column_type.encryption_context()
    aad = AAD_PREFIX + context.canonical
    plaintext = VALUE.encode()
    key = os.urandom(32)
    nonce = os.urandom(12)
    cipher = AESGCM(key)
    sealed = cipher.encrypt(nonce, plaintext, aad)
    wrapper = LocalKeyWrapper(os.urandom(32))
    wrapped = wrapper.wrap(key, context.canonical)
    data_key = keyring.generate_data_key(context)

    encryptor = Encryptor(keyring)
    no_cache = Encryptor(keyring, cache_size=0)
    envelope = encryptor.seal(plaintext, context)
    end = header_size(envelope)
    codec = codec_for(String(40))
    ns: dict[str, Any] = {
        "urandom": os.urandom,
        "AESGCM": AESGCM,
        "key": key,
        "nonce": nonce,
        "cipher": cipher,
        "plaintext": plaintext,
        "sealed": sealed,
        "aad": aad,
        "canonical": context.canonical,
        "wrapper": wrapper,
        "wrapped": wrapped,
        "keyring": keyring,
        "context": context,
        "data_key": data_key,
        "pack": pack,
        "unpack": unpack,
        "header_size": header_size,
        "wrapped_keys_of": wrapped_keys_of,
        "envelope": envelope,
        "end": end,
        "encryptor": encryptor,
        "no_cache": no_cache,
        "encode": codec.encode,
        "decode": codec.decode,
        "text": VALUE,
        "new_committed_cipher": new_committed_cipher,
        "committed_cipher": committed_cipher,
        "commitment": new_committed_cipher(key)[1],
        "gcm_wrapped": cipher.encrypt(nonce, key, None),
    }

    s = "crypto"
    record(s, "os.urandom(32)", best("urandom(32)", ns))
    record(s, "os.urandom(12)", best("urandom(12)", ns))
    record(s, "AESGCM(key) construction", best("AESGCM(key)", ns))
    record(s, "AESGCM.encrypt, 40 bytes", best("cipher.encrypt(nonce, plaintext, aad)", ns))
    record(s, "AESGCM.decrypt, 40 bytes", best("cipher.decrypt(nonce, sealed, aad)", ns))
    record(s, "v2 key and commitment (SHA-512)", best("new_committed_cipher(key)", ns))
    record(s, "v2 committed_cipher (derive, check)", best("committed_cipher(key, commitment)", ns))
    record(s, "AES-GCM wrap of a data key", best("cipher.encrypt(nonce, key, None)", ns))
    record(s, "AES-GCM unwrap of a data key", best("cipher.decrypt(nonce, gcm_wrapped, None)", ns))

    s = "local wrap"
    record(s, "LocalKeyWrapper.wrap", best("wrapper.wrap(key, canonical)", ns))
    record(s, "LocalKeyWrapper.unwrap", best("wrapper.unwrap(wrapped, canonical)", ns))
    record(s, "LocalKeyring.generate_data_key", best("keyring.generate_data_key(context)", ns))
    record(
        s,
        "LocalKeyring.unwrap_data_key",
        best("keyring.unwrap_data_key(data_key.wrapped_keys, context)", ns),
    )

    s = "envelope"
    record(s, "pack (one key)", best("pack(data_key.wrapped_keys, commitment, nonce, sealed)", ns))
    record(s, "unpack (full parse)", best("unpack(envelope)", ns))
    record(s, "header_size (offset parse)", best("header_size(envelope)", ns))
    record(s, "wrapped_keys_of", best("wrapped_keys_of(envelope, end)", ns))

    s = "codec"
    record(s, "String encode", best("encode(text)", ns))
    record(s, "String decode", best("decode(plaintext)", ns))

    # What the hot path avoids by doing it once per column or lock-free.
    s = "avoided"
    ns.update(
        EncryptionContext=EncryptionContext,
        pairs={"table": "secret", "column": "value"},
        counter=itertools.count(),
        lock=threading.Lock(),
        box=[0],
    )
    record(s, "EncryptionContext(pairs), per value", best("EncryptionContext(pairs)", ns))
    record(s, "next(itertools.count())", best("next(counter)", ns))
    record(s, "with lock: n += 1", best("with lock: box[0] += 1", ns))

    # -- Encryptor ------------------------------------------------------------------
    s = "Encryptor"
    record(s, "seal", best("encryptor.seal(plaintext, context)", ns), "a data key per value")
    record(s, "open, cold (cache_size=0)", best("no_cache.open(envelope, context)", ns))
    envelopes = [encryptor.seal(plaintext, context) for _ in range(ITEMS)]
    large = Encryptor(keyring, cache_size=ITEMS)
    record(
        s,
        f"open, cold, cache of {ITEMS:,}",
        per_item(lambda e: large.open(e, context), envelopes, large.clear_cache),
        "miss + insert: a first read",
    )
    small = Encryptor(keyring, cache_size=ITEMS // 4)
    record(
        s,
        f"open, cold, cache of {ITEMS // 4:,}",
        per_item(lambda e: small.open(e, context), envelopes, small.clear_cache),
        "miss + insert + evict",
    )
    encryptor.open(envelope, context)
    record(s, "open, warm (cache hit)", best("encryptor.open(envelope, context)", ns))

    # -- the column's closures, as SQLAlchemy calls them ------------------------------
    s = "EncryptedType"
    dialect = sqlite.dialect()
    fixed = EncryptedType(String(40), encryptor)
    Table("secret2", MetaData(), Column("value", fixed))
    cold = EncryptedType(String(40), no_cache)
    Table("secret2", MetaData(), Column("value", cold))  # same context as fixed
    ns["bind"] = fixed.bind_processor(dialect)
    ns["result_warm"] = fixed.result_processor(dialect, None)
    ns["result_cold"] = cold.result_processor(dialect, None)
    ns["stored"] = ns["bind"](VALUE)
    encryptor.open(ns["stored"], fixed.encryption_context())
    record(s, "bind closure (encode + seal)", best("bind(text)", ns))
    record(s, "result closure, cold (cache_size=0)", best("result_cold(stored)", ns))
    record(s, "result closure, warm", best("result_warm(stored)", ns))

    # -- caches ---------------------------------------------------------------------
    s = "cache"
    keys = [os.urandom(70) for _ in range(ITEMS)]
    value = object()

    def load() -> object:
        return value

    hit_cache: KeyCache[object] = KeyCache(10_000, 300.0)
    hit_cache.get_or_load(keys[0], load)
    ns.update(hit_cache=hit_cache, k0=keys[0], load=load)
    record(s, "KeyCache.get_or_load, hit", best("hit_cache.get_or_load(k0, load)", ns))

    miss_cache: KeyCache[object] = KeyCache(ITEMS, 300.0)
    record(
        s,
        "KeyCache.get_or_load, miss + insert",
        per_item(lambda k: miss_cache.get_or_load(k, load), keys, miss_cache.clear),
        "single-flight",
    )
    full_cache: KeyCache[object] = KeyCache(ITEMS // 4, 300.0)
    record(
        s,
        "KeyCache.get_or_load, miss + insert + evict",
        per_item(lambda k: full_cache.get_or_load(k, load), keys, full_cache.clear),
    )

    odict: OrderedDict[bytes, object] = OrderedDict()

    def odict_miss_insert(k: bytes) -> None:
        if odict.get(k) is None:
            odict[k] = value
            if len(odict) > ITEMS // 4:
                odict.popitem(last=False)

    record(
        s, "OrderedDict get + set + evict (bare)", per_item(odict_miss_insert, keys, odict.clear)
    )
    record(s, "per-item loop overhead (no-op body)", per_item(noop, keys, noop))

    if cachetools is None:
        print("cachetools is not installed: TTLCache comparison skipped")
    else:
        ttl: cachetools.TTLCache[bytes, object] = cachetools.TTLCache(10_000, 300.0)
        for k in keys[:10_000]:
            ttl[k] = value
        ns.update(ttl=ttl, k_last=keys[9_999])
        record(s, "cachetools.TTLCache get, hit", best("ttl[k_last]", ns), "no lock")
        full_ttl: cachetools.TTLCache[bytes, object] = cachetools.TTLCache(ITEMS // 4, 300.0)

        def ttl_miss_insert(k: bytes) -> None:
            if full_ttl.get(k) is None:
                full_ttl[k] = value

        record(
            s,
            "cachetools.TTLCache get + set + evict",
            per_item(ttl_miss_insert, keys, full_ttl.clear),
            "no lock",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the whole suite this many times and keep each operation's best",
    )
    args = parser.parse_args(argv)
    print(
        f"python {sys.version.split()[0]}, cryptography {cryptography.__version__}, "
        f"sqla_envelope at {code_version()}"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    cipher_memory()
    for _ in range(args.rounds):
        run_round()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    width = max(len(name) for name in results)
    spread = "  worst/best round" if args.rounds > 1 else ""
    print(f"{'operation':<{width}}  {'µs/op':>7}{spread}  note")
    section = None
    for name, (runs, note) in results.items():
        head = name.split(":", 1)[0]
        if section is not None and head != section:
            print()
        section = head
        ratio = f"  {max(runs) / min(runs):>16.2f}" if len(runs) > 1 else " " * len(spread)
        print(f"{name:<{width}}  {min(runs) * 1e6:>7.3f}{ratio}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
