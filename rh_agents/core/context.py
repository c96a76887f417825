"""Context-local invocation paths: where every address comes from.

Each running invocation owns a :class:`Frame`, held in a ``ContextVar``. A child
invocation takes its address from its parent frame plus its own segment and an ordinal
counted per parent, so two sequential calls of one actor under one parent get
``.../search`` and ``.../search#1``. Because the path is context-local (not a stack
shared on the state), concurrent tasks never see each other's frames, and because
ordinals are taken when an invocation starts (asyncio starts tasks in creation order),
the same program gives the same addresses on every run whatever the completion order.

Parallel groups add two kinds of frame: the group frame (``.../parallel:docs``) and one
item frame per item (``.../parallel:docs[3]``). An item's address depends only on its
index, never on when a worker picked it up.
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["SEPARATOR", "Frame", "current_frame", "group_id_for"]

SEPARATOR = "/"


@dataclass(slots=True, eq=False)
class Frame:
    """One node of the invocation path.

    Attributes:
        root: the root frame of the ExecutionState this frame belongs to.
        address: the full address of this node.
        parent: the enclosing frame (None for a root).
        group_id: set on the item frames of a parallel group.
        parallel_index: the item's index in its group (item frames only).
        pushed: set on frames added with ``ExecutionState.push_context``.
        outer: on a top-level call of one state made while a frame of another state's
            run was current (a call in a sub-state from inside a group item): that
            frame, so ``p.add()`` there still finds the item it runs in.
    """

    root: Frame | None
    address: str
    parent: Frame | None = None
    group_id: str | None = None
    parallel_index: int | None = None
    pushed: bool = False
    # Created on first use: most frames (an item's, a leaf call's) never have children.
    _counters: dict[str, int] | None = None
    _pushed: dict[str, Frame] | None = None
    outer: Frame | None = None

    @classmethod
    def new_root(cls, address: str = "") -> Frame:
        """A fresh root frame (one per ExecutionState)."""
        frame = cls(root=None, address=address)
        frame.root = frame
        return frame

    def next_segment(self, key: str) -> str:
        """Reserve the next ordinal for ``key`` under this frame and return the segment."""
        counters = self._counters
        if counters is None:
            counters = self._counters = {}
        ordinal = counters.get(key, 0)
        counters[key] = ordinal + 1
        return key if ordinal == 0 else f"{key}#{ordinal}"

    def join(self, segment: str) -> str:
        """The address of a child with ``segment``."""
        return f"{self.address}{SEPARATOR}{segment}" if self.address else segment

    def child(self, key: str) -> Frame:
        """A new child frame with the next ordinal for ``key``."""
        return self._under(self.join(self.next_segment(key)), None, None)

    def _under(self, address: str, group_id: str | None, index: int | None) -> Frame:
        # Built field by field: one frame per invocation and per group item makes this
        # a hot path, and the generated __init__ costs twice as much.
        frame = _new_frame(Frame)
        frame.root = self.root
        frame.address = address
        frame.parent = self
        frame.group_id = group_id
        frame.parallel_index = index
        frame.pushed = False
        frame._counters = None
        frame._pushed = None
        frame.outer = None
        return frame

    def pushed_child(self, name: str) -> Frame:
        """The frame of ``push_context(name)`` under this frame.

        Pushing the same name again under the same frame re-enters the same frame, so
        its children keep counting ordinals and never reuse an address.
        """
        pushed = self._pushed
        if pushed is None:
            pushed = self._pushed = {}
        frame = pushed.get(name)
        if frame is None:
            frame = Frame(
                root=self.root,
                address=self.join(name),
                parent=self,
                pushed=True,
            )
            pushed[name] = frame
        return frame

    def item(self, index: int, group_id: str, key: str | None = None) -> Frame:
        """The frame of item ``index`` of the parallel group whose frame this is; its
        address ends in ``[key]`` (default: the index; see ``Item.key``)."""
        return self._under(f"{self.address}[{index if key is None else key}]", group_id, index)

    @property
    def segments(self) -> list[str]:
        """The address split into its segments."""
        return self.address.split(SEPARATOR) if self.address else []


_new_frame = object.__new__

current_frame: ContextVar[Frame | None] = ContextVar("rh_agents_current_frame", default=None)


def group_id_for(address: str) -> str:
    """The deterministic id of the group at ``address`` (stable across runs)."""
    return "g-" + hashlib.blake2b(address.encode(), digest_size=8).hexdigest()
