"""Shared pieces of the benchmarks: configuration, side-by-side timing, targets, results
and the description of the machine."""

from __future__ import annotations

import gc
import importlib.util
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

PACKAGES = (
    "rh_agents",
    "pydantic",
    "pydantic_core",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "prometheus_client",
    "aiometer",
    "anyio",
    "pyinstrument",
    "dask",
    "distributed",
)

PASS, MISS, INFO, SKIP = "PASS", "MISS", "INFO", "SKIP"


@dataclass(frozen=True)
class Config:
    """How big and how often: ``quick`` shrinks sizes and rounds to run in under a minute."""

    quick: bool = False
    rounds: int | None = None
    """Overrides every benchmark's number of rounds when set."""

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full

    def n_rounds(self, quick: int, full: int) -> int:
        return self.rounds if self.rounds else (quick if self.quick else full)


def installed(module: str) -> bool:
    """Whether an optional competitor (aiometer, anyio, pyinstrument) can be imported."""
    return importlib.util.find_spec(module) is not None


# --------------------------------------------------------------------------- timing

Contender = Callable[[], Awaitable[float]]
"""Runs one measurement and returns the seconds of its timed part (setup excluded)."""


async def side_by_side(
    contenders: dict[str, Contender],
    rounds: int,
    *,
    warmup: int = 1,
    collect: bool = True,
    seed: int = 1,
) -> dict[str, list[float]]:
    """Run every contender once per round, in a shuffled order, and return all times.

    Interleaving puts the contenders under the same machine conditions (a noisy neighbour
    slows a whole round, not one contender); ``gc.collect()`` before each measurement keeps
    one contender's garbage from being collected on another's clock.
    """
    rng = random.Random(seed)
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            await contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            if collect:
                gc.collect()
            times[name].append(await contenders[name]())
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of numerator/denominator (both measured in the same round)."""
    return median([a / b for a, b in zip(numerator, denominator, strict=True)])


def spread(values: Sequence[float]) -> str:
    """min..max of the rounds, for the detail column."""
    return f"{min(values) * 1e3:.1f}..{max(values) * 1e3:.1f} ms"


class GcTimer:
    """``with GcTimer() as gt: ...`` then ``gt.seconds``: time spent in the cyclic garbage
    collector meanwhile (through ``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._start = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.collections[info["generation"]] += 1

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


async def timed_run(
    work: Callable[[], Awaitable[Any]], after: Callable[[], None] | None = None
) -> tuple[Any, float, float]:
    """Await ``work()`` (then call ``after``, e.g. a span flush, still on the clock) and
    return its result, the seconds it took and the seconds the garbage collector took
    meanwhile."""
    with GcTimer() as collector:
        start = time.perf_counter()
        result = await work()
        if after is not None:
            after()
        took = time.perf_counter() - start
    return result, took, collector.seconds


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``."""

    seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Target:
    """A bound on a measured value, e.g. ``Target("<=", 1.0)``."""

    op: str
    bound: float
    unit: str = "x"

    def check(self, value: float) -> bool:
        return {
            "<=": value <= self.bound,
            "<": value < self.bound,
            ">=": value >= self.bound,
            ">": value > self.bound,
            "==": value == self.bound,
        }[self.op]

    def __str__(self) -> str:
        return f"{self.op} {format_value(self.bound, self.unit)}"


@dataclass
class Row:
    """One line of the results table."""

    case: str
    value: float | None
    unit: str
    target: str | None = None
    status: str = INFO
    detail: str = ""


def measured(
    case: str, value: float, unit: str, target: Target | None = None, detail: str = ""
) -> Row:
    """A row, with PASS/MISS when it has a target (INFO otherwise)."""
    if target is None:
        return Row(case, value, unit, None, INFO, detail)
    return Row(case, value, unit, str(target), PASS if target.check(value) else MISS, detail)


def skipped(case: str, reason: str, target: Target | None = None) -> Row:
    """A row that could not be measured (e.g. a competitor that is not installed)."""
    return Row(case, None, "", str(target) if target else None, SKIP, reason)


@dataclass
class BenchResult:
    id: str
    title: str
    measures: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    profile: str | None = None

    @property
    def missed(self) -> bool:
        return any(row.status == MISS for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.1f} %"
    if unit in ("ev/s", "items/s"):
        return f"{value:,.0f} {unit}"
    if unit == "B/item" or unit == "B/event":
        return f"{value:,.0f} {unit}"
    if unit in ("µs/event", "µs/item", "µs"):
        return f"{value:.1f} {unit}"
    if unit == "spans":
        return f"{value:,.0f} spans"
    return f"{value:g} {unit}".strip()


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def environment() -> dict[str, Any]:
    """The machine, interpreter, package versions and source revision of this run."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    dirty = _git("status", "--porcelain", "--", "rh_agents")
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "cpu": _cpu_model(),
        "cores": usable_cores(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "packages": versions,
        "git_commit": _git("rev-parse", "--short", "HEAD") or "unknown",
        "rh_agents_modified": bool(dirty),
        "load_average": load_average(),
    }


def load_average() -> str:
    """The 1, 5 and 15-minute load averages (other processes competing for the cores)."""
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:  # pragma: no cover - not Unix
        return "n/a"
