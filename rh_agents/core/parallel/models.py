"""The state of a parallel group as users and printers see it, and its enums."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, PrivateAttr

from rh_agents.core._models import assemble

if TYPE_CHECKING:
    import random

    from rh_agents.core.executors import ItemExecutor
    from rh_agents.core.policy import Policy

__all__ = [
    "ErrorStrategy",
    "GroupSettings",
    "GroupStatistics",
    "GroupStatus",
    "ParallelDisplayMode",
    "ParallelEventGroup",
    "ParallelGroupTracker",
    "bump",
    "label_of",
    "update",
]


class GroupStatus(str, Enum):
    """Lifecycle of a parallel group."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ErrorStrategy(str, Enum):
    """What a group does when an item fails."""

    FAIL_SLOW = "fail_slow"
    """Run every item; failures are ``ok=False`` results (the default)."""
    FAIL_FAST = "fail_fast"
    """Cancel the rest on the first failure and re-raise it."""


class ParallelDisplayMode(str, Enum):
    """How :class:`~rh_agents.printing.ParallelEventPrinter` shows groups."""

    REALTIME = "realtime"
    PROGRESS = "progress"


_NUMBERS = re.compile(r"\b0x[0-9a-f]+\b|\d+(?:\.\d+)?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.;](?:\s|$)")


def _first_sentence(message: str) -> str:
    text = message.strip().splitlines()[0] if message.strip() else ""
    end = _SENTENCE_END.search(text)
    if end is not None and end.start() > 0:
        text = text[: end.start()]
    return text


def _shorten(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def _normalize(message: str) -> str:
    """The category key of an error message: its first sentence, numbers as ``N``."""
    return _shorten(_NUMBERS.sub("N", _first_sentence(message)))


class ParallelEventGroup(BaseModel):
    """The state and counts of one parallel group (``p.group``).

    Attributes:
        group_id: deterministic id (from the parent address, name and ordinal).
        name: the group's name (None for unnamed groups).
        address: the group's address in the invocation tree.
        total / completed / failed / cancelled: item counts.
        retries: retries scheduled so far.
        status: PENDING, RUNNING, then COMPLETED, FAILED or CANCELLED.
        start_time / end_time: wall-clock timestamps (``time.time()``), for display.
        execution_time: seconds the group ran, measured on the state's clock (so a
            :class:`~rh_agents.testing.FakeClock` gives virtual seconds); None until the
            group has ended.
        errors: "Type: message" of every failed item, in completion order. The error
            categories are derived from it, so a group restored from JSON
            (``model_validate_json(group.model_dump_json())``) summarizes the same way.
        timed_out: whether the group's deadline passed.
    """

    group_id: str = ""
    name: str | None = None
    address: str = ""
    total: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    retries: int = 0
    status: GroupStatus = GroupStatus.PENDING
    start_time: float | None = None
    end_time: float | None = None
    execution_time: float | None = None
    error_strategy: ErrorStrategy = ErrorStrategy.FAIL_SLOW
    max_workers: int = 5
    timeout: float | None = None
    timed_out: bool = False
    errors: list[str] = Field(default_factory=list)

    # (type, normalized message) of each entry of ``errors``, in the same order: a cache,
    # built from ``errors`` when a group is restored, and whenever the two disagree.
    _kinds: list[tuple[str, str]] = PrivateAttr(default_factory=list)

    def model_post_init(self, context: Any, /) -> None:
        if self.errors:
            self._kinds = [_kind_of(entry) for entry in self.errors]

    @property
    def success_rate(self) -> float:
        """Completed items as a fraction of all items (1.0 for an empty group)."""
        return self.completed / self.total if self.total else 1.0

    def _record_failure(self, error_type: str, message: str) -> None:
        detail = message if message and message != error_type else ""
        self.errors.append(f"{error_type}: {detail}" if detail else error_type)
        self._kinds.append((error_type, _normalize(detail)))

    def categorized_errors(self) -> list[tuple[str, str, int]]:
        """(error type, message, count), most frequent first.

        Messages that differ only in numbers (ids, ports, status codes) form one category,
        shown with its numbers as ``N`` ("refused on port N"); a category whose messages
        are all the same shows that message as it is ("HTTP 503 Service Unavailable").
        """
        if len(self._kinds) != len(self.errors):
            self._kinds = [_kind_of(entry) for entry in self.errors]
        counts = Counter(self._kinds)
        shown: dict[tuple[str, str], set[str]] = {}
        for kind, entry in zip(self._kinds, self.errors, strict=True):
            detail = entry.partition(": ")[2]
            shown.setdefault(kind, set()).add(_shorten(_first_sentence(detail)))
        return [
            (kind, next(iter(shown[kind, msg])) if len(shown[kind, msg]) == 1 else msg, n)
            for (kind, msg), n in counts.most_common()
        ]

    def error_summary(self) -> str:
        """E.g. "3 of 10 events failed with 2 error types: ConnectionError 'refused' (2),
        TimeoutError (1)"; an empty string when nothing failed."""
        if not self.failed:
            return ""
        kinds = self.categorized_errors()
        parts = [f"{t} '{m}' ({n})" if m else f"{t} ({n})" for t, m, n in kinds]
        plural = "type" if len(kinds) == 1 else "types"
        return (
            f"{self.failed} of {self.total} events failed with {len(kinds)} error "
            f"{plural}: " + ", ".join(parts)
        )


def _kind_of(entry: str) -> tuple[str, str]:
    """The category of an ``errors`` entry ("Type: message" or "Type")."""
    error_type, _, detail = entry.partition(": ")
    return error_type, _normalize(detail)


class ParallelGroupTracker(BaseModel):
    """What a printer knows about a group from the events it has seen."""

    group_id: str
    name: str | None = None
    total: int = 0
    started: int = 0
    completed: int = 0
    failed: int = 0
    retrying: int = 0
    cancelled: int = 0
    status: GroupStatus = GroupStatus.RUNNING
    start_time: float = Field(default_factory=time.monotonic)
    end_time: float | None = None
    errors: list[str] = Field(default_factory=list)
    parent_group_id: str | None = None

    @property
    def is_complete(self) -> bool:
        """Whether the group has ended (or every known item has finished)."""
        if self.status in (GroupStatus.COMPLETED, GroupStatus.FAILED, GroupStatus.CANCELLED):
            return True
        return self.total > 0 and self.completed + self.failed + self.cancelled >= self.total

    @property
    def completion_percentage(self) -> float:
        """Finished items as a percentage of the total (0-100)."""
        if self.total <= 0:
            return 100.0 if self.is_complete else 0.0
        done = self.completed + self.failed + self.cancelled
        return min(100.0, 100.0 * done / self.total)

    @property
    def in_flight(self) -> int:
        """Items started and not yet finished."""
        return max(0, self.started - self.completed - self.failed - self.cancelled)


_NEW_GROUP: dict[str, Any] = {
    name: field.get_default(call_default_factory=True)
    for name, field in ParallelEventGroup.model_fields.items()
}
"""Every field of a fresh group's model at its declared default, in declaration order
(see :func:`new_group`, which copies it and sets the rest)."""


def new_group(
    name: str | None, max_workers: int, error_strategy: ErrorStrategy, timeout: float | None
) -> ParallelEventGroup:
    """A fresh group's model from checked settings, without validation (one per group);
    the same model as ``ParallelEventGroup(name=..., max_workers=..., error_strategy=...,
    timeout=...)``, explicitly-set fields included."""
    fields = _NEW_GROUP.copy()  # copying a built dict costs half of building it anew
    fields["name"] = name
    fields["error_strategy"] = error_strategy
    fields["max_workers"] = max_workers
    fields["timeout"] = timeout
    fields["errors"] = []
    return assemble(ParallelEventGroup, fields, set(_GROUP_FIELDS_SET), {"_kinds": []})


_GROUP_FIELDS_SET = frozenset({"name", "max_workers", "error_strategy", "timeout"})


def bump(group: ParallelEventGroup, count: str) -> None:
    """``group.<count> += 1`` without pydantic's assignment machinery (once per item)."""
    group.__dict__[count] += 1


def update(group: ParallelEventGroup, **fields: Any) -> None:
    """Set fields of the group's own model (values of the right types, no validation)."""
    group.__dict__.update(fields)


def label_of(group: ParallelEventGroup) -> str:
    """How messages name a group: its name, else its id."""
    return group.name or group.group_id or "unnamed"


@dataclass(slots=True)
class GroupSettings:
    """How a group runs its items, fixed when it starts running (never changed after:
    not frozen only because a frozen dataclass's ``__init__`` costs twice as much, once
    per group)."""

    max_workers: int
    error_strategy: ErrorStrategy
    timeout: float | None
    policy: Policy | None  # None: nothing to guard
    rng: random.Random | None
    executor: ItemExecutor | None


_STATISTICS_KEYS = ("in_flight", "peak_in_flight", "queued", "delayed")


@dataclass(frozen=True, slots=True, eq=False)
class GroupStatistics(Mapping[str, int]):
    """A point-in-time copy of a group's counts (``p.statistics()``).

    Also a read-only mapping of the same counts, so ``stats["in_flight"]``,
    ``dict(stats)`` and ``stats == {"in_flight": 0, ...}`` work as they did when
    ``statistics()`` returned a dict. The statistics of the group's guards are
    ``p.policy.statistics()``.

    Attributes:
        in_flight: items running now.
        peak_in_flight: the most items that ran at once.
        queued: items that have not started their first attempt.
        delayed: retries waiting out their backoff.
    """

    in_flight: int
    peak_in_flight: int
    queued: int
    delayed: int

    def __getitem__(self, key: str) -> int:
        if key not in _STATISTICS_KEYS:
            raise KeyError(key)
        value: int = getattr(self, key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(_STATISTICS_KEYS)

    def __len__(self) -> int:
        return len(_STATISTICS_KEYS)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.in_flight, self.peak_in_flight, self.queued, self.delayed))

    def as_dict(self) -> dict[str, int]:
        """The counts as a new dict."""
        return dict(self.items())
