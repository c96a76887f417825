"""What the printers share: how an event looks on one line, durations, bars, wrapping.

Every published object is first turned into an :class:`EventView` (:func:`normalize`),
which tolerates events of unknown shape (dicts, objects with missing fields, anything
else), so the printers format whatever reaches them and never raise into the bus.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from rich.cells import cell_len
from rich.text import Text

# status value -> (symbol, word, rich style)
STATUS_LOOK: dict[str, tuple[str, str, str]] = {
    "started": ("▶", "started", "cyan"),
    "completed": ("✔", "completed", "green"),
    "failed": ("✖", "failed", "bold red"),
    "recovered": ("↺", "recovered", "blue"),
    "retrying": ("↻", "retrying", "yellow"),
    "cancelled": ("⊘", "cancelled", "magenta"),
    "cancelling": ("⊘", "cancelling", "magenta"),
    "interrupted": ("‖", "interrupted", "magenta"),
    "awaiting": ("…", "awaiting", "cyan"),
    "human_intervention": ("!", "needs human", "yellow"),
}
UNKNOWN_LOOK = ("?", "unknown", "dim")
DIVERGENCE_LOOK = ("⚠", "diverged", "bold yellow")
STATUS_ORDER = list(STATUS_LOOK)

# Control characters (C0 except tab, DEL, C1) never reach the output: a message that
# carries an escape sequence must not put escape codes on a pipe.
CONTROL_CHARS = {c: "?" for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]}
CONTROL_CHARS[ord("\t")] = " "

FULL_BLOCK = "█"
EMPTY_BLOCK = "░"
CANCELLED_BLOCK = "▒"
# Where the words of a printed line start: after a timestamp, the indentation and a
# one-character status symbol.
LINE_LEAD = re.compile(r"(?:\d\d:\d\d:\d\d\.\d{3} )? *(?:\S )?")


def clean(value: Any, limit: int = 500) -> str:
    """One printable line: the first line of ``value``, control characters replaced."""
    text = value if isinstance(value, str) else str(value)
    text = text.strip()
    first, sep, _rest = text.partition("\n")
    text = first.rstrip("\r") + (" …" if sep else "")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.translate(CONTROL_CHARS)


def field_of(obj: Any, name: str) -> Any:
    """``obj[name]`` for mappings, ``obj.name`` otherwise; None when absent or broken."""
    try:
        if isinstance(obj, Mapping):
            return obj.get(name)
        return getattr(obj, name, None)
    except Exception:
        return None


def text_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Enum):
        value = value.value
    return value if isinstance(value, str) else str(value)


def as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def as_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    number = as_float(value)
    return int(number) if number is not None and number.is_integer() else None


def format_duration(seconds: float) -> str:
    """``0.4ms``, ``12.3ms``, ``1.23s``, ``2m05s``, ``1h02m``."""
    seconds = max(0.0, seconds)
    if seconds < 1.0:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 60.0:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def short_duration(seconds: float) -> str:
    """Compact form for live bars: ``36ms``, ``1.2s``, ``2m05s``."""
    seconds = max(0.0, seconds)
    if seconds < 1.0:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60.0:
        return f"{seconds:.1f}s"
    return format_duration(seconds)


def format_timestamp(timestamp: float | None) -> str:
    ts = time.time() if timestamp is None else timestamp
    try:
        local = time.localtime(ts)
    except (OverflowError, OSError, ValueError):
        local = time.localtime()
        ts = time.time()
    millis = int((ts % 1) * 1000)
    return time.strftime("%H:%M:%S", local) + f".{millis:03d}"


def bar_text(fraction: float, width: int, cancelled: float = 0.0) -> str:
    """``width`` blocks: full for the ``fraction`` done, then shaded for the
    ``cancelled`` fraction (items that never ran to an end), light for the rest."""
    width = max(0, width)
    fraction = min(1.0, max(0.0, fraction))
    filled = width if fraction >= 1.0 else min(width - 1, int(width * fraction))
    filled = max(0, filled)
    cancelled = min(1.0 - fraction, max(0.0, cancelled))
    shaded = width - filled if fraction + cancelled >= 1.0 else int(width * cancelled)
    shaded = max(0, min(width - filled, shaded))
    return FULL_BLOCK * filled + CANCELLED_BLOCK * shaded + EMPTY_BLOCK * (width - filled - shaded)


def percent_text(fraction: float) -> str:
    fraction = min(1.0, max(0.0, fraction))
    # floor, so that 100% is shown only when everything finished
    return f"{math.floor(fraction * 100 + 1e-9)}%"


def event_time(ev: EventView) -> float | None:
    """When the status change happened: events carry their start time, so a finished
    event's time is its start plus its execution time."""
    if ev.timestamp is not None and ev.execution_time is not None and ev.status != "started":
        return ev.timestamp + ev.execution_time
    return ev.timestamp


def env_no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False


@dataclass(slots=True)
class EventView:
    """A normalized view of whatever was published (ExecutionEvent, dict, anything)."""

    raw: Any
    known: bool
    kind: str
    status: str
    name: str | None
    event_type: str | None
    address: str
    timestamp: float | None
    execution_time: float | None
    message: str | None
    detail: str | None
    error_type: str | None
    from_cache: bool
    is_replayed: bool
    group_id: str | None
    parallel_index: int | None
    is_parallel: bool
    retry_attempt: int
    retry_delay: float | None
    original_error: str | None
    metadata: dict[str, Any]

    @property
    def depth(self) -> int:
        return self.address.count("/") if self.address else 0


def normalize(event: Any) -> EventView:
    get = field_of
    status = text_value(get(event, "execution_status"))
    if status is None:
        status = text_value(get(event, "status"))
    kind = text_value(get(event, "kind"))
    address = text_value(get(event, "address"))
    name = text_value(get(event, "actor_name"))
    if name is None:
        actor = get(event, "actor")
        name = actor if isinstance(actor, str) else text_value(get(actor, "name"))
    if name is None:
        candidate = get(event, "name")
        name = candidate if isinstance(candidate, str) else None
    metadata = get(event, "metadata")
    known = any(v is not None for v in (status, kind, address, name))
    group_id = text_value(get(event, "group_id"))
    return EventView(
        raw=event,
        known=known,
        kind=(kind or "event").lower(),
        status=(status or "unknown").lower(),
        name=name,
        event_type=text_value(get(event, "event_type")),
        address=address or "",
        timestamp=as_float(get(event, "timestamp")),
        execution_time=as_float(get(event, "execution_time")),
        message=text_value(get(event, "message")),
        detail=text_value(get(event, "detail")),
        error_type=text_value(get(event, "error_type")),
        from_cache=get(event, "from_cache") is True,
        is_replayed=get(event, "is_replayed") is True,
        group_id=group_id or None,
        parallel_index=as_int(get(event, "parallel_index")),
        is_parallel=get(event, "is_parallel") is True,
        retry_attempt=as_int(get(event, "retry_attempt")) or 0,
        retry_delay=as_float(get(event, "retry_delay")),
        original_error=text_value(get(event, "original_error")),
        metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
    )


# ----------------------------------------------------------------------- EventPrinter


def ordered_counts(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    known = [(s, counts[s]) for s in STATUS_ORDER if counts.get(s)]
    rest = sorted((s, n) for s, n in counts.items() if s not in STATUS_LOOK and n)
    return known + rest


def status_count(status: str, n: int) -> str:
    return f"{n} {status.replace('_', ' ')}"


def fitting_end(text: str, start: int, cells: int) -> int:
    """The end offset of the longest piece of ``text`` from ``start`` within ``cells``."""
    end, used = start, 0
    while end < len(text):
        used += cell_len(text[end])
        if used > cells:
            break
        end += 1
    return end


def wrap_text(text: Text, width: int) -> list[Text]:
    """``text`` folded at spaces into lines of at most ``width`` cells. Continuation
    lines are indented two columns past where the first line's words start (after a
    timestamp, the indentation and a status symbol), or four on a narrow terminal."""
    plain = text.plain
    lead_match = LINE_LEAD.match(plain)
    lead = lead_match.end() if lead_match else 0
    pad = lead + 2 if lead + 2 <= width // 2 else 4
    offsets: list[int] = []
    start, room, floor = 0, width, lead
    while cell_len(plain[start:]) > room:
        cut = fitting_end(plain, start, room)
        space = plain.rfind(" ", floor + 1, cut + 1)
        end = space if space > start else max(cut, start + 1)
        start = end
        while start < len(plain) and plain[start] == " ":
            start += 1
        offsets += [end, start] if start > end else [end]
        room, floor = width - pad, start
    lines: list[Text] = []
    for part in text.divide(offsets):
        if not part.plain.strip(" "):
            continue
        if lines:
            line = Text(" " * pad)
            line.append_text(part)
            part = line
        lines.append(part)
    return lines


# ------------------------------------------------------------- ParallelEventPrinter
