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

import math

from ..errors import ConfigurationError

__all__ = ["plan_bits"]

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
