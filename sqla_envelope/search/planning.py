"""plan_bits: how many bits of hash a blind index needs for a table of a given size.

A lookup of one value through an index truncated to ``bits`` returns its true
matches and, on average, ``rows / 2**bits`` other rows whose index collides
(false positives, which the application drops after decrypting). Fewer bits
leak less: with ``2**bits`` well under the number of distinct values, equal
hashes no longer prove equal values (CipherSweet's FieldIndexPlanner and the AWS
Database Encryption SDK's beacon length rule both trade on this). The plan is
the fewest bits, in whole bytes, that keep the expected false positives of one
lookup at or under ``false_positives``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError

__all__ = ["IndexPlan", "measure", "plan_bits"]

MIN_BITS, MAX_BITS = 16, 256


def plan_bits(rows: int, *, false_positives: float = 1.0) -> int:
    """The bits for an index over ``rows`` rows: at most ``false_positives`` per lookup.

    ``false_positives`` is the expected number of unrelated rows one lookup may
    return (1.0: about one per lookup, which a login by email can afford; 0.01:
    one lookup in a hundred returns one). A multiple of 8 from 16 to 256.
    """
    if rows < 0:
        raise ConfigurationError("rows must not be negative")
    if not false_positives > 0:
        raise ConfigurationError("false_positives must be positive")
    needed = math.log2(max(rows, 1) / false_positives) if rows else 0.0
    bits = 8 * math.ceil(max(needed, 0.0) / 8)
    return min(max(bits, MIN_BITS), MAX_BITS)


@dataclass(frozen=True)
class IndexPlan:
    """What ``measure`` found in a column, and the index size it recommends."""

    rows: int
    distinct: int
    bits: int
    false_positives: float

    @property
    def values_per_hash(self) -> float:
        """Distinct values that share one index value, on average, at ``bits``."""
        return float(self.distinct / 2**self.bits)

    @property
    def hiding_bits(self) -> int:
        """The most bits (whole bytes, at least 16) at which hashes are shared by 2+ values."""
        if self.distinct < 2:
            return MIN_BITS
        return max(MIN_BITS, 8 * int(math.log2(self.distinct / 2) // 8))

    def summary(self) -> str:
        shared = self.values_per_hash
        leak = (
            "each index value stands for about one plaintext value: the index shows which "
            "rows are equal, and how often each value occurs"
            if shared < 2
            else f"each index value is shared by about {shared:,.1f} plaintext values"
        )
        return (
            f"{self.rows:,} rows, {self.distinct:,} distinct values; "
            f"bits={self.bits} keeps about {self.rows / 2**self.bits:.3g} unrelated rows per "
            f"lookup (at most {self.false_positives:g}); {leak}. "
            f"bits={self.hiding_bits} or fewer would make every index value shared by "
            f"2 or more values, at {self.rows / 2**self.hiding_bits:.3g} unrelated rows "
            "per lookup."
        )


def measure(bind: Any, index: Any, *, false_positives: float = 1.0) -> IndexPlan:
    """Count the rows and distinct normalized values of an index's sources, and plan it.

    Decrypts every row (batch by batch, in primary-key order); keeps a 16-byte
    digest per distinct value in memory, not the values.
    """
    from ..maintenance.walk import SKIP, ColumnReport, walk_column
    from .encoding import canonical
    from .reindex import index_column, source_readers

    table, column, index_type = index_column(index)
    sources = index_type.source_columns()
    readers = source_readers(sources, bind)
    names = index_type.context_columns  # per tenant: a value is distinct within its tenant
    columns = [*sources, *(table.c[name] for name in names)]
    seen: set[bytes] = set()
    rows = 0

    def count(row: tuple[Any, ...]) -> Any:
        nonlocal rows
        bound = dict(zip(names, row[len(sources) :], strict=True))
        values = [
            read(stored, bound) for stored, read in zip(row[: len(sources)], readers, strict=True)
        ]
        if all(value is None for value in values):
            return SKIP
        plain = values[0] if len(values) == 1 else tuple(values)
        normalized = index_type.normalized(plain)
        if normalized is not None:
            rows += 1
            tenant = repr(sorted(bound.items())).encode()
            seen.add(hashlib.blake2b(tenant + canonical(normalized), digest_size=16).digest())
        return SKIP

    report = ColumnReport(table.fullname, column.name, dry_run=True, operation="measure")
    walk_column(bind, table, columns, columns, column, count, report, dry_run=True, strict=True)
    bits = plan_bits(rows, false_positives=false_positives)
    return IndexPlan(rows, len(seen), bits, false_positives)
