"""What a long column run shows on stderr: a progress bar or periodic lines, then a summary.

Only counts, rates and primary keys are ever shown, never a value. The last key
shown is always one whose batch has committed, so it is a safe resume point.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, TextIO

from .maintenance.walk import ColumnReport, row_name

__all__ = ["RunDisplay", "format_key"]

# A terminal is redrawn at most this often, whatever the batch rate.
_REDRAW = 0.1
_BAR = 24
# Failures listed in the summary; the count always covers them all.
_MAX_LISTED = 100


def format_key(key: Sequence[Any]) -> str:
    """A primary key as ``--start-after`` reads it: comma-separated, or a JSON array.

    JSON is used when a part would not survive the comma form (it holds a comma,
    is empty, or starts with ``[``).
    """
    parts = [_key_part(value) for value in key]
    if any(isinstance(p, str) and ("," in p or not p or p.startswith("[")) for p in parts):
        return json.dumps(parts)
    return ",".join(str(p) for p in parts)


def _key_part(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return value
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, Decimal, float)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def _duration(seconds: float) -> str:
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class RunDisplay:
    """The walker's ``progress`` callback, drawing to ``stream``; then the summary.

    On a terminal (``interactive``) one bar line is redrawn with ``\\r``; otherwise
    a plain line is printed every ``interval`` seconds (0: after every batch), for
    logs. ``total`` is the number of rows the walk is expected to examine.
    """

    def __init__(
        self,
        label: str,
        total: int,
        key_names: Sequence[str],
        *,
        stream: TextIO,
        interactive: bool,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.key_names = tuple(key_names)
        self.stream = stream
        self.interactive = interactive
        self.interval = interval
        self._clock = clock
        self.started = clock()
        self._shown = self.started
        self._drawn = False
        self.examined = 0
        # The last key of a committed batch: the walker calls back after each commit.
        self.last_key: tuple[Any, ...] | None = None

    def __call__(self, report: ColumnReport) -> None:
        """Called by the walker after each batch has committed."""
        self.examined = report.examined
        self.last_key = report.last_key
        now = self._clock()
        if self.interactive:
            if now - self._shown >= _REDRAW:
                self._draw_bar(now)
        elif now - self._shown >= self.interval:
            self._write(self._line(now) + "\n")
            self._shown = now

    def elapsed(self) -> float:
        return self._clock() - self.started

    def rate(self, now: float | None = None) -> float:
        seconds = (self._clock() if now is None else now) - self.started
        return self.examined / seconds if seconds > 0 else 0.0

    def _counts(self, now: float) -> tuple[int, float, str]:
        total = max(self.total, self.examined)
        share = self.examined / total if total else 1.0
        rate = self.rate(now)
        left = _duration((total - self.examined) / rate) if rate > 0 else "-:--:--"
        return total, share, left

    def _line(self, now: float) -> str:
        total, share, left = self._counts(now)
        line = (
            f"{self.label}: {self.examined:,} of {total:,} rows ({share:.0%}), "
            f"{self.rate(now):,.0f} rows/s, {left} left"
        )
        if self.last_key is not None:
            line += f", last key {self.key_text(self.last_key)}"
        return line

    def _draw_bar(self, now: float) -> None:
        total, share, left = self._counts(now)
        filled = int(share * _BAR)
        bar = "#" * filled + "-" * (_BAR - filled)
        self._write(
            f"\r{self.label} [{bar}] {self.examined:,}/{total:,} {share:4.0%} "
            f"{self.rate(now):,.0f} rows/s {left} left\x1b[K"
        )
        self._drawn = True
        self._shown = now

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def key_text(self, key: Sequence[Any]) -> str:
        """``id=17``, or ``(a=1, b=2)`` for a composite key, as every message names a row."""
        return row_name(self.key_names, key)

    def stop(self) -> None:
        """End the bar line of a run an error stopped; its counts stay as last committed."""
        if self.interactive and self._drawn:
            self._write("\n")

    def finish(self, report: ColumnReport) -> None:
        """End the bar line and print the summary: counts, time, failures, last key."""
        self.examined = report.examined
        if self.interactive:
            self._draw_bar(self._clock())
            self._write("\n")
        lines = [
            report.summary(),
            f"{self.label}: {_duration(self.elapsed())} elapsed, {self.rate():,.0f} rows/s",
        ]
        for key, reason in report.failures[:_MAX_LISTED]:
            lines.append(f"  failed: row {self.key_text(key)}: {reason}")
        if report.failed > _MAX_LISTED:
            lines.append(f"  ... and {report.failed - _MAX_LISTED} more failed rows")
        if report.conflicts:
            lines.append(
                f"{report.conflicts} rows were changed by others while being processed; "
                "run again to finish them"
            )
        if report.last_key is not None:
            lines.append(f"last primary key: {format_key(report.last_key)}")
        self._write("\n".join(lines) + "\n")
