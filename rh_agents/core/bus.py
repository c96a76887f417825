"""EventBus: publish/subscribe of execution events, and streams of them.

Every status change of a run is published once, as one immutable snapshot, to every
subscriber (printers, streamers, telemetry, the application) and to every open stream.
A subscriber that raises or stalls is isolated: it never fails the actor, causes a
re-run or holds the run hostage (see :class:`EventBus`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any

from rh_agents.core._aio import cancel_and_wait
from rh_agents.core.errors import InvalidArgumentError
from rh_agents.core.types import ExecutionStatus

__all__ = [
    "DEFAULT_SUBSCRIBER_QUEUE_SIZE",
    "DEFAULT_SUBSCRIBER_TIMEOUT",
    "EventBus",
    "EventStream",
]

# The logger keeps the name of the module the bus came from (users configure it).
logger: logging.Logger = logging.getLogger("rh_agents.execution")

Subscriber = Callable[[Any], Any]


class _Subscriber:
    __slots__ = (
        "busy_since",
        "detached",
        "dropped",
        "errors",
        "fn",
        "inline_seconds",
        "is_async",
        "key",
        "overflowed",
        "pending",
        "queue",
        "task",
        "timeouts",
    )

    def __init__(self, key: Any, fn: Callable[[Any], Any]) -> None:
        self.key = key
        self.fn = fn
        target: Any = fn
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            target.__call__
        )
        self.errors = 0
        self.timeouts = 0
        self.dropped = 0
        self.inline_seconds = 0.0
        self.pending = 0  # inline deliveries in progress (concurrent publishers)
        self.busy_since = 0.0  # loop time since which one has been in progress
        self.detached = False
        self.overflowed = False  # its queue was full once (logged)
        self.queue: deque[Any] = deque()
        self.task: asyncio.Task[None] | None = None


DEFAULT_SUBSCRIBER_TIMEOUT = 5.0
"""Seconds one async subscriber may hold up a run in total before it is detached."""

DEFAULT_SUBSCRIBER_QUEUE_SIZE = 10_000
"""Events buffered per detached subscriber before further events are dropped for it."""


class EventBus:
    """Publish/subscribe of execution events.

    Subscribers are sync or async callables, or objects with a ``print_event`` method
    (printers). Each published event is one immutable snapshot shared by all
    subscribers. A subscriber that raises is logged (with its traceback the first time)
    and isolated: it never fails the actor, never causes a re-run and never stops the
    other subscribers.

    A subscriber cannot hold a run hostage. An async subscriber is awaited inline, so it
    has seen an event before the run goes on, until it has held up publishing for
    ``subscriber_timeout`` seconds in total. Publishers awaiting it side by side (the
    workers of a group) hold the run up once, not once each: the time charged is the
    time during which at least one delivery to it was in progress, so a fast subscriber
    receives every event inline, in publish order, however many workers publish. When
    the allowance is used up, the deliveries in progress are cut off and it is logged
    once and *detached*: from then on it receives the events in the background, in
    order, from a queue of at most ``subscriber_queue_size`` events drained by a task
    the bus owns (each delivery still cut off after ``subscriber_timeout``); when that
    queue is full, further progress events are dropped for that subscriber only, never a
    terminal one. Every event a subscriber does not receive in full is counted in
    :attr:`dropped_events` (and the first loss logged). So an async subscriber adds at
    most ``subscriber_timeout`` seconds to a run, however slow or stuck it is. Sync
    subscribers (the printers) run inline on the event loop, cannot be interrupted and
    never lose an event: keep them fast. :meth:`aclose` stops the background deliveries
    cleanly.

    Args:
        subscriber_timeout: the budget in seconds per async subscriber (default 5);
            None awaits async subscribers without any bound.
        subscriber_queue_size: events buffered per detached subscriber (default 10 000).

    Example:
        >>> bus = EventBus()
        >>> seen = []
        >>> _ = bus.subscribe(seen.append)
    """

    def __init__(
        self,
        subscriber_timeout: float | None = DEFAULT_SUBSCRIBER_TIMEOUT,
        subscriber_queue_size: int = DEFAULT_SUBSCRIBER_QUEUE_SIZE,
    ) -> None:
        if subscriber_timeout is not None and (
            isinstance(subscriber_timeout, bool)
            or not isinstance(subscriber_timeout, int | float)
            or not math.isfinite(subscriber_timeout)
            or subscriber_timeout <= 0
        ):
            raise InvalidArgumentError(
                f"subscriber_timeout must be a positive number of seconds or None (no "
                f"bound), got {subscriber_timeout!r}. The default is "
                f"{DEFAULT_SUBSCRIBER_TIMEOUT:g}."
            )
        if (
            isinstance(subscriber_queue_size, bool)
            or not isinstance(subscriber_queue_size, int)
            or subscriber_queue_size < 1
        ):
            raise InvalidArgumentError(
                f"subscriber_queue_size must be a positive integer, got "
                f"{subscriber_queue_size!r}. The default is {DEFAULT_SUBSCRIBER_QUEUE_SIZE}."
            )
        self.subscriber_timeout: float | None = (
            float(subscriber_timeout) if subscriber_timeout is not None else None
        )
        self.subscriber_queue_size: int = subscriber_queue_size
        self._subscribers: tuple[_Subscriber, ...] = ()
        self._streams: list[EventStream] = []
        # the background delivery tasks, and whom each serves (maybe unsubscribed since)
        self._tasks: dict[asyncio.Task[None], _Subscriber] = {}
        self.subscriber_errors: int = 0
        """Exceptions raised by subscribers, over all of them."""
        self.subscriber_timeouts: int = 0
        """Deliveries cut off (that event is lost for that subscriber): inline when the
        subscriber's budget ran out, or in the background after ``subscriber_timeout``."""
        self.dropped_events: int = 0
        """Events some subscriber did not receive in full, over all of them: dropped from
        a detached subscriber's full queue (never a terminal event), cut off by the
        ``subscriber_timeout``, or left queued when the bus was closed."""

    def subscribe(self, handler: Any) -> Any:
        """Add a subscriber; returns it, so this works as a decorator."""
        fn = handler if callable(handler) else getattr(handler, "print_event", None)
        if fn is None or not callable(fn):
            raise InvalidArgumentError(
                f"Cannot subscribe {handler!r}: pass a callable taking the event, or an "
                "object with a print_event(event) method."
            )
        self._subscribers = (*self._subscribers, _Subscriber(handler, fn))
        return handler

    def unsubscribe(self, handler: Any) -> None:
        """Remove a subscriber added with :meth:`subscribe` (no error if absent).

        Events already queued for a detached subscriber are still delivered.
        """
        self._subscribers = tuple(s for s in self._subscribers if s.key is not handler)

    @property
    def subscribers(self) -> list[Any]:
        """The current subscribers, in subscription order."""
        return [s.key for s in self._subscribers]

    def subscriber_stats(self) -> list[dict[str, Any]]:
        """Per subscriber: errors, timeouts, inline seconds, detached, queued, dropped."""
        return [
            {
                "subscriber": s.key,
                "errors": s.errors,
                "timeouts": s.timeouts,
                "inline_seconds": s.inline_seconds,
                "detached": s.detached,
                "queued": len(s.queue),
                "dropped": s.dropped,
            }
            for s in self._subscribers
        ]

    def has_listeners(self) -> bool:
        """Whether publishing can reach anyone: a subscriber, an open stream, or (for a
        subclass of EventBus) wherever the subclass publishes."""
        return bool(self._subscribers or self._streams) or type(self) is not EventBus

    async def publish(self, event: Any) -> None:
        """Deliver ``event`` to every subscriber and every open stream."""
        for sub in self._subscribers:
            if sub.detached:
                self._enqueue(sub, event)
                continue
            try:
                if sub.is_async:
                    await self._inline(sub, sub.fn(event))
                else:
                    outcome = sub.fn(event)
                    if inspect.isawaitable(outcome):
                        await self._inline(sub, outcome)
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                self._report(sub)  # the subscriber's own cancellation is its error
            except Exception:
                self._report(sub)
        for stream in self._streams:
            stream._offer(event)

    async def _inline(self, sub: _Subscriber, awaitable: Awaitable[Any]) -> None:
        limit = self.subscriber_timeout
        if limit is None:
            await awaitable
            return
        # The allowance is charged for the time the run was held up by this subscriber:
        # while several publishers await it side by side, that time passes once, not once
        # per delivery. So every delivery in progress shares one deadline.
        loop = asyncio.get_running_loop()
        if sub.pending == 0:
            sub.busy_since = loop.time()
        sub.pending += 1
        scope = asyncio.timeout_at(sub.busy_since + limit - sub.inline_seconds)
        try:
            async with scope:
                await awaitable
        except TimeoutError:
            if not scope.expired():
                raise  # the subscriber's own TimeoutError: reported as an error
            self._timed_out(sub)
            self._detach(sub)
        finally:
            sub.pending -= 1
            if sub.pending == 0:
                sub.inline_seconds += loop.time() - sub.busy_since
                if sub.inline_seconds >= limit:
                    self._detach(sub)

    def _timed_out(self, sub: _Subscriber) -> None:
        """A delivery was cut off: that event is lost for ``sub``, and counted."""
        sub.timeouts += 1
        self.subscriber_timeouts += 1
        self._lost(sub, 1)
        if sub.timeouts == 1:
            logger.warning(
                "A delivery to event subscriber %r was cut off after its time allowance "
                "(subscriber_timeout %gs); that event is lost for it (counted in "
                "EventBus.dropped_events).",
                sub.key,
                self.subscriber_timeout,
            )
        else:
            logger.debug("Event subscriber %r was cut off again", sub.key)

    def _detach(self, sub: _Subscriber) -> None:
        if not sub.detached:
            sub.detached = True
            logger.warning(
                "Event subscriber %r held up the run for %gs in total (subscriber_timeout); "
                "it now receives events in the background (at most %d queued, further "
                "events dropped for it) so it cannot stall the run.",
                sub.key,
                self.subscriber_timeout,
                self.subscriber_queue_size,
            )

    def _enqueue(self, sub: _Subscriber, event: Any) -> None:
        if len(sub.queue) >= self.subscriber_queue_size and not is_terminal(event):
            self._lost(sub, 1)
            if not sub.overflowed:
                sub.overflowed = True
                logger.warning(
                    "Event subscriber %r is too slow: its queue of %d events is full, so "
                    "events are dropped for it, all but terminal ones (counted in "
                    "EventBus.dropped_events).",
                    sub.key,
                    self.subscriber_queue_size,
                )
            return
        sub.queue.append(event)
        if sub.task is None or sub.task.done():
            task = asyncio.get_running_loop().create_task(
                self._drain(sub), name=f"rh_agents subscriber {sub.key!r:.40}"
            )
            sub.task = task
            self._tasks[task] = sub
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _drain(self, sub: _Subscriber) -> None:
        limit = self.subscriber_timeout
        while sub.queue:
            event = sub.queue.popleft()
            scope = asyncio.timeout(limit)
            try:
                async with scope:
                    outcome = sub.fn(event)
                    if inspect.isawaitable(outcome):
                        await outcome
            except TimeoutError:
                if scope.expired():
                    self._timed_out(sub)
                else:
                    self._report(sub)  # the subscriber's own TimeoutError: an error
            except asyncio.CancelledError:
                if _being_cancelled():
                    self._lost(sub, 1)  # the delivery the bus's closing cut short
                    raise
                self._report(sub)
            except Exception:
                self._report(sub)

    def _lost(self, sub: _Subscriber, count: int) -> None:
        sub.dropped += count
        self.dropped_events += count

    def _report(self, sub: _Subscriber) -> None:
        sub.errors += 1
        self.subscriber_errors += 1
        if sub.errors == 1:
            logger.exception(
                "Event subscriber %r raised; it is isolated and the run continues "
                "(further errors from it are logged at debug level).",
                sub.key,
            )
        else:
            logger.debug("Event subscriber %r raised again", sub.key, exc_info=True)

    def _drainers(self) -> list[asyncio.Task[None]]:
        return [task for task in self._tasks if not task.done()]

    async def drain(self, within: float | None = None) -> bool:
        """Wait until detached subscribers have received their queued events.

        Returns False when ``within`` seconds passed first (nothing is cancelled).
        """
        tasks = self._drainers()
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=within)
        return not pending

    async def aclose(self, grace: float = 0.0) -> None:
        """End every stream and stop the background deliveries cleanly.

        Queued events of detached subscribers get ``grace`` seconds (default none) to
        be delivered; what is left is dropped (counted in :attr:`dropped_events`), and the
        delivery tasks are cancelled and awaited, so none outlives this call.
        """
        self.close()
        if grace > 0:
            await self.drain(grace)
        # An unsubscribed subscriber may still have events queued (they are delivered
        # until the bus is closed): what is left of them is dropped and counted too.
        for sub in {*self._subscribers, *self._tasks.values()}:
            self._lost(sub, len(sub.queue))
            sub.queue.clear()
        await cancel_and_wait(self._drainers())

    def stream(self, maxsize: int = 0) -> EventStream:
        """An async iterator over events published from now on.

        The stream is registered when this method is called (not on first iteration),
        so nothing published in between is missed. It ends after :meth:`close`, or when
        closed with ``aclose()`` / by leaving an ``async with`` block.

        Example:
            >>> async for event in bus.stream():  # doctest: +SKIP
            ...     print(event.address, event.execution_status)
        """
        stream = EventStream(self, maxsize)
        self._streams.append(stream)
        return stream

    def _drop(self, stream: EventStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def close(self) -> None:
        """End every open stream after the events already queued."""
        for stream in list(self._streams):
            stream._end()
            self._drop(stream)


_END = object()

_TERMINAL = frozenset(
    {
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.CANCELLED,
        ExecutionStatus.INTERRUPTED,
        ExecutionStatus.RECOVERED,
    }
)


def is_terminal(event: Any) -> bool:
    """Whether ``event`` ends an invocation or a group (never dropped for a full queue)."""
    return getattr(event, "execution_status", None) in _TERMINAL


def _being_cancelled() -> bool:
    """Whether the current task has been asked to stop (not a CancelledError of its own)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class EventStream:
    """Events of one :meth:`EventBus.stream` call, in publish order.

    With a ``maxsize``, a reader that falls behind misses the progress events published
    while its queue is full (counted in :attr:`dropped`), never a terminal one: events
    whose status ends an invocation or group (completed, failed, cancelled, interrupted,
    recovered) are queued beyond ``maxsize``.
    """

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._maxsize = maxsize
        self._queue: asyncio.Queue[Any] = asyncio.Queue()  # maxsize enforced by _offer
        self._closed = False
        self.dropped: int = 0
        """Events not delivered because the stream's queue (``maxsize``) was full."""

    def _offer(self, event: Any) -> None:
        # A full stream (a reader that fell behind) must never fail the publisher.
        if 0 < self._maxsize <= self._queue.qsize() and not is_terminal(event):
            self.dropped += 1
            if self.dropped == 1:
                logger.warning(
                    "An event stream is full (maxsize=%d); events are dropped for it "
                    "until its reader catches up (terminal events are always kept).",
                    self._maxsize,
                )
            return
        self._queue.put_nowait(event)

    def _end(self) -> None:
        self._queue.put_nowait(_END)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._closed = True
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Stop receiving events (a reader ends after the events already queued)."""
        if not self._closed:
            self._closed = True
            self._end()  # wakes a reader waiting in another task
        self._bus._drop(self)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
