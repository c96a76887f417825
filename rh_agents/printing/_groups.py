"""What a ParallelEventPrinter keeps per parallel group, and how it names groups."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from rh_agents.core.parallel import GroupStatus, ParallelGroupTracker
from rh_agents.printing._format import EventView, as_int, clean

ITEM_STATE = {
    "started": "running",
    "completed": "completed",
    "recovered": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "interrupted": "cancelled",
    "retrying": "retrying",
}
GROUP_TERMINAL = {
    "completed": GroupStatus.COMPLETED,
    "failed": GroupStatus.FAILED,
    "cancelled": GroupStatus.CANCELLED,
    "interrupted": GroupStatus.CANCELLED,
}
PROGRESS_STEP = 25  # percent between plain progress lines
SUMMARY_BAR = 10  # blocks of the bar in group summaries


@dataclass(eq=False)
class GroupView:
    """What the printer keeps per group next to its public tracker."""

    tracker: ParallelGroupTracker
    order: int
    address: str | None = None
    parent: GroupView | None = None
    announced: bool = False  # a group-started event was seen
    finished: bool = False  # a terminal group event was seen
    told_total: int = 0
    max_workers: int | None = None
    retries: int = 0
    message: str | None = None
    duration: float | None = None
    timed_out: bool = False
    last_step: int = 0
    items: dict[int | str, str] = field(default_factory=dict)
    states: Counter[str] = field(default_factory=Counter)
    errors: dict[int | str, str] = field(default_factory=dict)
    anonymous: int = 0
    highest_index: int = -1  # item index n implies at least n + 1 items

    item_label: str | None = None  # the item of the enclosing group it runs in

    @property
    def label(self) -> str:
        """``chunks``, or ``doc-2 › chunks`` for a group run by an item of another."""
        name = clean(self.tracker.name or self.tracker.group_id, 60)
        return f"{self.item_label} › {name}" if self.item_label else name

    @property
    def level(self) -> int:
        level, parent = 0, self.parent
        while parent is not None:
            level, parent = level + 1, parent.parent
        return level

    @property
    def running(self) -> int:
        return self.states["running"]

    @property
    def finished_items(self) -> int:
        t = self.tracker
        return t.completed + t.failed + t.cancelled

    @property
    def shown(self) -> bool:
        """Whether the group has a live bar."""
        return not self.finished and (
            self.announced or self.running > 0 or self.states["retrying"] > 0
        )


def group_address(ev: EventView) -> str | None:
    """The group address of an item event: ``a/parallel:x[3]/tool`` -> ``a/parallel:x``."""
    if ev.parallel_index is None or not ev.address:
        return None
    marker = f"[{ev.parallel_index}]"
    at = ev.address.rfind(marker + "/")
    if at < 0 and ev.address.endswith(marker):
        at = len(ev.address) - len(marker)
    if at > 0:
        return ev.address[:at]
    # An item added while its group ran: its segment is keyed by who added it
    # (``[3.0]``, ``[+1]``), not by its index; it is the last item segment.
    ends = [found.end(1) for found in _ITEM_SEGMENT.finditer(ev.address)]
    return ev.address[: ends[-1]] if ends else None


_ITEM_SEGMENT = re.compile(r"(?:^|/)(parallel:[^/\[\]]*)\[[0-9.+]+\](?=/|$)")
"""An item segment of an address: the group's segment, then ``[key]``."""


SEGMENT_SUFFIX = re.compile(r"#\d+$")


def item_label(address: str) -> str | None:
    """The item a nested group runs in, from the group's address.

    ``orchestrator/parallel:documents[1]/document[doc-2]/parallel:chunks`` gives
    ``doc-2`` (the tag of the item's invocation), ``a/parallel:outer[2]/section/
    parallel:inner`` gives ``outer 3`` (the enclosing group and the item's position);
    a group outside any other group gives None.
    """
    segments = [SEGMENT_SUFFIX.sub("", s) for s in address.split("/")[:-1]]
    for at in range(len(segments) - 1, -1, -1):
        segment = segments[at]
        if not (segment.startswith("parallel:") and segment.endswith("]")):
            continue
        name, _, index = segment[len("parallel:") : -1].rpartition("[")
        invocation = segments[at + 1] if at + 1 < len(segments) else ""
        if invocation.endswith("]") and "[" in invocation:
            tag = invocation[invocation.index("[") + 1 : -1]
            if tag:
                return clean(tag, 40)
        position = as_int(index)
        return clean(f"{name} {position + 1}" if position is not None else name, 40)
    return None


def categorize(errors: list[str]) -> str:
    if not errors:
        return ""
    kinds = Counter(error.partition(":")[0] for error in errors)
    parts = [f"{kind} ({n})" for kind, n in kinds.most_common()]
    return f"{len(errors)} failed: " + ", ".join(parts)
