"""What bench_core.py prints: the machine, the table of phases, and the targets with verdicts."""

from __future__ import annotations

import os
import platform
import sqlite3
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cryptography
import sqlalchemy

Results = dict[str, list[float]]  # phase -> seconds of each repeat


def machine() -> list[tuple[str, str]]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        nproc = str(os.cpu_count())
    return [
        ("platform", platform.platform()),
        ("python", sys.version.split()[0] + f" ({platform.python_implementation()})"),
        ("sqlalchemy", sqlalchemy.__version__),
        ("cryptography", cryptography.__version__),
        ("sqlite", sqlite3.sqlite_version),
        ("nproc", nproc.strip()),
        ("cpu", cpu),
        ("sqla-envelope", code_version()),
        ("load average", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]


def code_version() -> str:
    """The commit of the checkout, with '+dirty' if sqla_envelope/ has local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "sqla_envelope"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def _ratio(results: Results, reference: str, phase: str, pick: str) -> float:
    """Throughput of ``phase`` over that of ``reference``: their times the other way round."""
    if pick == "best":
        return min(results[reference]) / min(results[phase])
    if pick == "median":
        return statistics.median(results[reference]) / statistics.median(results[phase])
    if pick != "paired":
        raise ValueError(pick)
    # paired: each repeat's own ratio (its two phases ran seconds apart, so slow
    # drifts in the VM's load cancel out), then the median of those
    return statistics.median(r / p for r, p in zip(results[reference], results[phase], strict=True))


def print_table(results: Results, rows: int, plain: dict[str, str], simple: dict[str, str]) -> None:
    """One line per phase: µs a row, rows/s, throughput against plain and the simple envelope.

    ``plain`` and ``simple`` name each phase's reference phase (an insert is
    compared with an insert, a select with a select).
    """
    print()
    print(
        f"{'phase':<26}{'best µs/row':>12}{'med µs/row':>11}{'best rows/s':>12}"
        f"{'/plain best':>12}{'med':>6}{'/simple best':>13}{'med':>6}  all (s)"
    )
    for phase, times in results.items():
        best, median = min(times), statistics.median(times)
        ratios = ""
        for reference in (plain[phase], simple[phase]):
            width = 12 if reference == plain[phase] else 13
            ratios += f"{_ratio(results, reference, phase, 'best'):>{width}.3f}"
            ratios += f"{_ratio(results, reference, phase, 'median'):>6.3f}"
        runs = " ".join(f"{t:.3f}" for t in times)
        print(
            f"{phase:<26}{best / rows * 1e6:>12.2f}{median / rows * 1e6:>11.2f}"
            f"{rows / best:>12,.0f}{ratios}  {runs}"
        )


@dataclass(frozen=True)
class Target:
    """A bar: ``phase`` against ``reference``, as a throughput ratio or as an extra cost.

    A ratio passes when throughput(phase) / throughput(reference) >= ``bar``; an
    extra cost when time(phase) / time(reference) - 1 <= ``bar``.
    """

    name: str
    phase: str
    reference: str
    bar: float
    extra_cost: bool = False

    def measure(self, results: Results, pick: str) -> float:
        ratio = _ratio(results, self.reference, self.phase, pick)
        return 1 / ratio - 1 if self.extra_cost else ratio

    def passes(self, value: float) -> bool:
        return value <= self.bar if self.extra_cost else value >= self.bar

    def show(self, value: float) -> str:
        return f"{value:+.1%}" if self.extra_cost else f"{value:.3f}"


def print_targets(results: Results, targets: list[Target]) -> bool:
    """Each target's best, median and paired figures and its verdicts; True if all pass on best."""
    print()
    print(
        f"{'target':<40}{'best':>8}{'median':>8}{'paired':>8}{'bar':>8}"
        "  verdict on best / on median"
    )
    ok = True
    for target in targets:
        best, median, paired = (
            target.measure(results, pick) for pick in ("best", "median", "paired")
        )
        bar = f"<={target.bar:.0%}" if target.extra_cost else f">={target.bar:.2f}"
        verdicts = ["PASS" if target.passes(value) else "FAIL" for value in (best, median)]
        ok = ok and target.passes(best)
        print(
            f"{target.name:<40}{target.show(best):>8}{target.show(median):>8}"
            f"{target.show(paired):>8}{bar:>8}  {verdicts[0]} / {verdicts[1]}"
        )
    return ok
