"""Audit and observability: an event for every wrap and unwrap, never a value or a key.

An ``Encryptor`` calls its listeners with a ``KeyEvent`` for each data key it
wraps (one per value written) and each data key it needs to read (a keyring
call on a cache miss, or a cache hit). ``log_events`` writes them as audit log
lines on the ``sqla_envelope.audit`` logger; ``KeyCounters`` keeps counts a
metrics system can scrape. Events carry table, column, key reference, cost mode,
cache hit or miss and duration, so the application's audit matches what KMS
records in CloudTrail.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["KeyCounters", "KeyEvent", "Listener", "log_events"]

audit_log = logging.getLogger("sqla_envelope.audit")


@dataclass(frozen=True)
class KeyEvent:
    """One use of a data key. Holds no plaintext and no key material."""

    operation: Literal["wrap", "unwrap"]
    context: Mapping[str, str]
    key_ref: str
    mode: str  # "local", "direct", "bounded_reuse", or "tenant" (TenantKeyring)
    cache_hit: bool
    duration: float  # seconds spent in the keyring (0 for a cache hit)
    error: str | None = None  # the exception's type name when the keyring call failed

    @property
    def table(self) -> str | None:
        return self.context.get("table")

    @property
    def column(self) -> str | None:
        return self.context.get("column")

    @property
    def ok(self) -> bool:
        return self.error is None


Listener = Callable[[KeyEvent], None]


def log_events(level: int = logging.INFO, logger: logging.Logger = audit_log) -> Listener:
    """A listener that writes each event as one ``key=value`` audit line."""

    def write(event: KeyEvent) -> None:
        if not logger.isEnabledFor(level):
            return
        where = " ".join(f"{k}={v}" for k, v in sorted(event.context.items()))
        logger.log(
            level,
            "%s %s key=%s mode=%s cache=%s duration_ms=%.3f%s",
            event.operation,
            where,
            event.key_ref,
            event.mode,
            "hit" if event.cache_hit else "miss",
            event.duration * 1000,
            f" error={event.error}" if event.error else "",
        )

    return write


class KeyCounters:
    """Counts of events by operation, table, column, cache outcome and result.

    A listener (``encryptor.add_listener(counters)``) whose ``snapshot()`` a
    metrics exporter reads, e.g. as ``sqla_envelope_key_events_total{...}``, and
    ``keyring_seconds`` the time spent in keyring calls.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str, str, str, str]] = Counter()
        self.keyring_seconds = 0.0

    def __call__(self, event: KeyEvent) -> None:
        labels = (
            event.operation,
            event.table or "",
            event.column or "",
            "hit" if event.cache_hit else "miss",
            "ok" if event.ok else "error",
        )
        with self._lock:
            self._counts[labels] += 1
            self.keyring_seconds += event.duration

    def snapshot(self) -> dict[tuple[str, str, str, str, str], int]:
        """(operation, table, column, cache, result) -> count, copied."""
        with self._lock:
            return dict(self._counts)
