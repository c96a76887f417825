"""Every misuse gives a clear, specific error that says what to do (docs/errors.md).

One table row per misuse: what the code does wrong, the exception it must raise (or, for
mistakes inside a handler, the exception on the failed result), a pattern naming what
went wrong and a pattern telling what to do instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from rh_agents.core.actors import LLM, Tool
from rh_agents.core.cache import UncacheableInputError
from rh_agents.core.errors import (
    DuplicateNameError,
    ImmutableEventError,
    InputValidationError,
    InvalidArgumentError,
    InvalidWorkError,
    LifecycleError,
    OutputValidationError,
    ResultSerializationError,
    RhAgentsError,
    SnapshotMismatchError,
    StateCorruptedError,
    StateNotFoundError,
)
from rh_agents.core.events import ExecutionEvent
from rh_agents.core.execution import EventBus, ExecutionState
from rh_agents.core.limiter import Limiter
from rh_agents.core.state_recovery import StateMetadata
from rh_agents.state_backends import InMemoryStateBackend, SQLiteStateBackend
from rh_agents.telemetry import MetricsPortInUseError, Telemetry, setup
from rh_agents.testing import FakeClock


class Query(BaseModel):
    text: str


class Answer(BaseModel):
    text: str
    score: float


async def _echo(data: Any, extra: Any, state: Any) -> Any:
    return data


async def _nothing() -> None:
    return None


def _state(**kw: Any) -> ExecutionState:
    return ExecutionState(**kw)


async def _in_group(body: Callable[[Any], Awaitable[Any]], **options: Any) -> None:
    state = _state()
    async with state.parallel(**options) as group:
        await body(group)


async def _failed_result(tool: Tool, data: Any, **state_kw: Any) -> None:
    """Run the tool; raise the exception carried by its failed result."""
    result = await ExecutionEvent(actor=tool)(data, {}, _state(**state_kw))
    assert not result.ok
    assert result.exception is not None
    raise result.exception


# ------------------------------------------------------------------------- misuses


def max_workers(value: Any) -> Callable[[], Any]:
    return lambda: _state().parallel(max_workers=value)


def timeout(value: Any) -> Callable[[], Any]:
    return lambda: _state().parallel(timeout=value)


async def coroutine_in_retrying_group() -> None:
    async def body(group: Any) -> None:
        group.add(_nothing())

    await _in_group(body, max_retries=2)


async def duplicate_names() -> None:
    async def body(group: Any) -> None:
        group.add(_nothing, name="a")
        group.add(_nothing, name="a")

    await _in_group(body)


async def add_after_gather() -> None:
    async def body(group: Any) -> None:
        await group.gather()
        group.add(_nothing)

    await _in_group(body)


async def gather_outside() -> None:
    await _state().parallel().gather()


async def stream_twice() -> None:
    async def body(group: Any) -> None:
        group.add(_nothing)
        async for _ in group.stream():
            pass
        async for _ in group.stream():
            pass

    await _in_group(body)


async def enter_twice() -> None:
    group = _state().parallel()
    async with group:
        pass
    async with group:
        pass


async def not_awaitable() -> None:
    async def body(group: Any) -> None:
        group.add(42)

    await _in_group(body)


def sync_handler() -> None:
    def handler(data: Any, extra: Any, state: Any) -> Any:
        return data

    Tool(name="sync", handler=handler)


async def wrong_output() -> None:
    async def handler(data: Any, extra: Any, state: Any) -> Any:
        return {"text": "x"}  # no score

    await _failed_result(Tool(name="answer", output_model=Answer, handler=handler), None)


async def invalid_input() -> None:
    tool = Tool(name="search", input_model=Query, handler=_echo)
    await _failed_result(tool, {"txt": "typo"})


async def cyclic_result() -> None:
    async def handler(data: Any, extra: Any, state: Any) -> Any:
        node: dict[str, Any] = {"name": "a"}
        node["self"] = node
        return node

    await _failed_result(
        Tool(name="graph", handler=handler), None, state_backend=InMemoryStateBackend()
    )


async def oversized_result() -> None:
    async def handler(data: Any, extra: Any, state: Any) -> Any:
        return {"blob": "x" * 2000}

    await _failed_result(
        Tool(name="dump", handler=handler),
        None,
        state_backend=InMemoryStateBackend(),
        max_result_bytes=1000,
    )


def snapshot_of_another_program() -> None:
    backend = InMemoryStateBackend()
    ExecutionState(
        state_id="run", state_backend=backend, metadata=StateMetadata(pipeline_name="billing")
    ).save_checkpoint()
    ExecutionState.load_from_state_id("run", backend, pipeline_name="triage")


async def other_input_on_resume() -> None:
    backend = InMemoryStateBackend()
    tool = Tool(name="search", input_model=Query, handler=_echo)
    first = ExecutionState(state_id="run", state_backend=backend)
    await ExecutionEvent(actor=tool)(Query(text="cats"), {}, first)
    resumed = ExecutionState.load_from_state_id("run", backend)
    await ExecutionEvent(actor=tool)(Query(text="dogs"), {}, resumed)


def metrics_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        setup(metrics_port=port, registry=CollectorRegistry(), exporters=[], trace_file=None)


async def tag_with_address_characters() -> None:
    await ExecutionEvent(actor=Tool(name="t", handler=_echo), tag="a/b")(None, {}, _state())


async def event_without_state() -> None:
    await ExecutionEvent(actor=Tool(name="t", handler=_echo))(None, {})


async def sleep_outside_clock() -> None:
    await FakeClock().sleep(1)


def not_a_history(tmp: Any) -> None:
    import sqlite3

    path = tmp / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    SQLiteStateBackend(path)


async def add_a_running_task() -> None:
    async def work() -> int:
        return 1

    async with _state().parallel() as p:
        task = asyncio.ensure_future(work())
        try:
            p.add(task)
        finally:
            await task


async def add_one_coroutine_twice() -> None:
    async def work() -> int:
        return 1

    async with _state().parallel() as p:
        coro = work()
        p.add(coro)
        p.add(coro)


async def change_a_history_entry() -> None:
    state = _state()
    await ExecutionEvent(actor=Tool(name="t", handler=_echo))(1, {}, state)
    state.history["t"].result = 2


def plain_with() -> None:
    with _state().parallel():  # type: ignore[attr-defined]
        pass  # pragma: no cover - never entered


def breaker_with_other_settings() -> None:
    state = _state()
    state.parallel(circuit_breaker="search-api", circuit_breaker_threshold=3)
    state.parallel(circuit_breaker="search-api", circuit_breaker_threshold=5)


async def uncacheable_extra_context() -> None:
    result = await ExecutionEvent(actor=LLM(name="llm", handler=_echo))(
        "hi", {"client": socket.socket}, _state()
    )
    assert result.exception is not None
    raise result.exception


@dataclass(frozen=True)
class Misuse:
    id: str
    run: Callable[..., Any]
    error: type[BaseException]
    what: str  # regex: names the problem
    fix: str  # regex: says what to do


MISUSES = [
    Misuse(
        "max_workers=0",
        max_workers(0),
        InvalidArgumentError,
        r"max_workers must be a positive integer, got 0",
        r"Use 1 to run the items one at a time",
    ),
    Misuse(
        "max_workers negative",
        max_workers(-3),
        InvalidArgumentError,
        r"max_workers .* got -3",
        r"Use 1",
    ),
    Misuse(
        "max_workers not an int",
        max_workers("4"),
        InvalidArgumentError,
        r"max_workers .* got '4'",
        r"Use 1",
    ),
    Misuse(
        "max_workers a float",
        max_workers(2.5),
        InvalidArgumentError,
        r"max_workers .* got 2.5",
        r"Use 1",
    ),
    Misuse(
        "negative timeout",
        timeout(-1),
        InvalidArgumentError,
        r"timeout must be a positive number of seconds or None, got -1",
        r"or None",
    ),
    Misuse(
        "NaN timeout", timeout(math.nan), InvalidArgumentError, r"timeout .* got nan", r"or None"
    ),
    Misuse(
        "negative max_retries",
        lambda: _state().parallel(max_retries=-1),
        InvalidArgumentError,
        r"max_retries must be an integer >= 0",
        r"Use 0 for no retries",
    ),
    Misuse(
        "unknown error_strategy",
        lambda: _state().parallel(error_strategy="sometimes"),
        InvalidArgumentError,
        r"Unknown error_strategy 'sometimes'",
        r"use ErrorStrategy.FAIL_SLOW or ErrorStrategy.FAIL_FAST",
    ),
    Misuse(
        "breaker threshold 0",
        lambda: _state().parallel(circuit_breaker_threshold=0),
        InvalidArgumentError,
        r"circuit_breaker_threshold must be a positive integer",
        r"Or pass None",
    ),
    Misuse(
        "retries without a factory",
        coroutine_in_retrying_group,
        InvalidWorkError,
        r"is a coroutine object, which can run only once",
        r"Pass a factory instead",
    ),
    Misuse(
        "duplicate item names",
        duplicate_names,
        DuplicateNameError,
        r"already has an item named 'a'",
        r"choose another name",
    ),
    Misuse(
        "add after gather",
        add_after_gather,
        LifecycleError,
        r"Cannot add to parallel group .* after its results were collected",
        r"open a new group",
    ),
    Misuse(
        "gather outside the context manager",
        gather_outside,
        LifecycleError,
        r"gather\(\) must be called inside",
        r"async with state.parallel",
    ),
    Misuse(
        "stream twice",
        stream_twice,
        LifecycleError,
        r"stream\(\) can be used once per group",
        r"Use p.results",
    ),
    Misuse(
        "group entered twice",
        enter_twice,
        LifecycleError,
        r"can be entered only once",
        r"open a new one with state.parallel",
    ),
    Misuse(
        "non-awaitable work",
        not_awaitable,
        InvalidWorkError,
        r"takes a coroutine object or a zero-argument callable",
        r"returning an awaitable",
    ),
    Misuse(
        "non-async handler",
        sync_handler,
        InvalidWorkError,
        r"handler of actor 'sync' must be an async function",
        r"async def handler\(input_data, extra_context, execution_state\)",
    ),
    Misuse(
        "result not matching output_model",
        wrong_output,
        OutputValidationError,
        r"'answer' returned a dict that does not match its output_model Answer",
        r"Return a Answer or data that validates into it",
    ),
    Misuse(
        "input failing validation",
        invalid_input,
        InputValidationError,
        r"Input for actor 'search' does not match its input_model Query",
        r"Pass a Query or data that validates into it",
    ),
    Misuse(
        "cyclic result",
        cyclic_result,
        ResultSerializationError,
        r"result of actor 'graph' .* cannot be stored",
        r"return a copy without the back",
    ),
    Misuse(
        "oversized result",
        oversized_result,
        ResultSerializationError,
        r"'dump' is \d+ bytes when encoded .* over max_result_bytes=1000",
        r"artifact .* or raise ExecutionState\(max_result_bytes",
    ),
    Misuse(
        "max_result_bytes=0",
        lambda: _state(max_result_bytes=0),
        InvalidArgumentError,
        r"max_result_bytes must be a positive integer",
        r"or None for no limit",
    ),
    Misuse(
        "invalid replay mode",
        lambda: _state(replay_mode="fast"),
        InvalidArgumentError,
        r"Unknown replay_mode 'fast'",
        r"use one of: normal, republish_all, validation",
    ),
    Misuse(
        "snapshot of another program",
        snapshot_of_another_program,
        SnapshotMismatchError,
        r"written by pipeline 'billing', not by 'triage'",
        r"start a fresh run",
    ),
    Misuse(
        "another input on resume",
        other_input_on_resume,
        SnapshotMismatchError,
        r"completed at 'search' .* with a different input",
        r"Start a fresh run",
    ),
    Misuse(
        "unknown state id",
        lambda: ExecutionState.load_from_state_id("nope", InMemoryStateBackend()),
        StateNotFoundError,
        r"No state 'nope'",
        r"Start a fresh run, or pass the id of an existing state",
    ),
    Misuse(
        "checkpoint without a backend",
        lambda: _state().save_checkpoint(),
        LifecycleError,
        r"save_checkpoint\(\) needs a state_backend",
        r"pass one to ExecutionState",
    ),
    Misuse(
        "a database that is not a history",
        not_a_history,
        StateCorruptedError,
        r"is not an rh_agents history \(it holds the tables users\)",
        r"Point rh_agents at a new file",
    ),
    Misuse(
        "metrics port in use",
        metrics_port_in_use,
        MetricsPortInUseError,
        r"Cannot serve /metrics on 127.0.0.1:\d+: the port is already in use",
        r"Pass another metrics_port \(0 picks a free one\)",
    ),
    Misuse(
        "tag with address characters",
        tag_with_address_characters,
        InvalidArgumentError,
        r"Tag 'a/b' .* contains one of",
        r"use another tag",
    ),
    Misuse(
        "event called without a state",
        event_without_state,
        InvalidArgumentError,
        r"needs the ExecutionState",
        r"await event\(input_data, extra_context, ",
    ),
    Misuse(
        "event without an actor",
        lambda: asyncio.run(ExecutionEvent()(None, {}, _state())),
        InvalidArgumentError,
        r"has no actor",
        r"ExecutionEvent\(actor=\.\.\.\)",
    ),
    Misuse(
        "pop_context without push",
        lambda: _state().pop_context(),
        LifecycleError,
        r"pop_context\(\) was called more often than push_context\(\)",
        r"pop only what this task pushed",
    ),
    Misuse(
        "subscribing a non-callable",
        lambda: EventBus().subscribe(42),
        InvalidArgumentError,
        r"Cannot subscribe 42",
        r"pass a callable taking the event",
    ),
    Misuse(
        "subscriber_timeout=0",
        lambda: EventBus(subscriber_timeout=0),
        InvalidArgumentError,
        r"subscriber_timeout must be a positive number of seconds",
        r"or None",
    ),
    Misuse(
        "limiter without capacity",
        lambda: Limiter("llm", 0),
        InvalidArgumentError,
        r"max_concurrency of limiter 'llm'",
        r"must be an integer >= 1",
    ),
    Misuse(
        "blank group name",
        lambda: _state().parallel(name="  "),
        InvalidArgumentError,
        r"group's name must not be empty or blank",
        r"leave name= out for an unnamed group",
    ),
    Misuse(
        "group name with address characters",
        lambda: _state().parallel(name="x#1"),
        InvalidArgumentError,
        r"group name 'x#1' contains '#'",
        r"Use letters, digits",
    ),
    Misuse(
        "limiter given by name",
        lambda: _state().parallel(limiter="openai"),
        InvalidArgumentError,
        r"limiter must be a Limiter object, got the string 'openai'",
        r"pass `limiter=shared` to every group",
    ),
    Misuse(
        "a running Task added to a group",
        add_a_running_task,
        InvalidWorkError,
        r"is an asyncio Task, which is already running",
        r"Pass a factory that starts the work instead",
    ),
    Misuse(
        "one coroutine object added twice",
        add_one_coroutine_twice,
        InvalidWorkError,
        r"is the same coroutine object as item 0",
        r"Create one per item, or pass a factory",
    ),
    Misuse(
        "changing a history entry",
        change_a_history_entry,
        ImmutableEventError,
        r"Cannot set 'result' on the event of 't' \(completed\)",
        r"Change a copy: event.model_copy",
    ),
    Misuse(
        "executor given by name",
        lambda: _state().parallel(executor="process"),
        InvalidArgumentError,
        r"executor must be an executor object, got the string 'process'",
        r"ProcessPoolItemExecutor\(max_workers=4\) as pool:` and pass `executor=pool`",
    ),
    Misuse(
        "an exception instance as non_retryable",
        lambda: _state().parallel(max_retries=1, non_retryable=ValueError("x")),
        InvalidArgumentError,
        r"non_retryable takes an exception class .* got ValueError\('x'\)",
        r"Pass classes, not instances",
    ),
    Misuse(
        "a shared breaker asked for with other settings",
        breaker_with_other_settings,
        InvalidArgumentError,
        r"'search-api' already exists with failure_threshold=3.* asks for failure_threshold=5",
        r"pass the same settings, or none to share the existing breaker",
    ),
    Misuse(
        "a group opened with a plain with",
        plain_with,
        LifecycleError,
        r"A parallel group is an async context manager",
        r"use `async with state.parallel\(...\) as p:` inside an `async def`",
    ),
    Misuse(
        "an extra_context without a JSON form for a cacheable actor",
        uncacheable_extra_context,
        UncacheableInputError,
        r"extra_context of actor 'llm' cannot be part of its cache key: .* 'client'",
        r"cache_key=lambda input_data, extra_context: .* or make it cacheable=False",
    ),
    Misuse(
        "FakeClock slept outside its block",
        sleep_outside_clock,
        LifecycleError,
        r"outside its `async with` block",
        r"Use `async with FakeClock\(\) as clock:`",
    ),
]


def _run(misuse: Misuse, tmp_path: Any) -> None:
    import inspect

    fn = misuse.run
    args = (tmp_path,) if inspect.signature(fn).parameters else ()
    outcome = fn(*args)
    if inspect.isawaitable(outcome):
        asyncio.run(outcome)  # type: ignore[arg-type]


@pytest.mark.parametrize("misuse", MISUSES, ids=[m.id for m in MISUSES])
def test_each_misuse_gives_a_clear_specific_error(misuse: Misuse, tmp_path: Any) -> None:
    with pytest.raises(misuse.error) as info:
        _run(misuse, tmp_path)
    message = str(info.value)
    assert isinstance(info.value, RhAgentsError)
    assert type(info.value) is misuse.error  # the specific class, not a parent
    import re

    assert re.search(misuse.what, message), f"{message!r} does not say what went wrong"
    assert re.search(misuse.fix, message), f"{message!r} does not say what to do"


def test_the_table_covers_at_least_twenty_misuses() -> None:
    assert len(MISUSES) >= 20
    print(f"misuses covered: {len(MISUSES) + 2}")  # + the two below


def test_an_actor_name_with_address_characters_is_a_clear_error() -> None:
    # pydantic reports validator errors as a ValidationError (a ValueError) that carries
    # the library's message.
    with pytest.raises(ValueError, match=r"Actor name 'a/b' contains '/'.*Use letters, digits"):
        Tool(name="a/b", handler=_echo)


def test_label_cardinality_overflow_is_folded_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    telemetry = Telemetry(registry=CollectorRegistry(), max_label_values=3)
    state = ExecutionState(telemetry=telemetry)

    async def run() -> None:
        for number in range(6):  # ids as actor names: the misuse
            tool = Tool(name=f"user-{number}", handler=_echo)
            await ExecutionEvent(actor=tool)(None, {}, state)

    with caplog.at_level(logging.WARNING, logger="rh_agents.telemetry"):
        asyncio.run(run())
    warnings = [r.getMessage() for r in caplog.records if "distinct values" in r.getMessage()]
    assert len(warnings) == 1
    assert "reached 3 distinct values" in warnings[0]
    assert "Use names, not ids, as actor and group names" in warnings[0]
    registry = telemetry.registry
    assert registry is not None
    names = {
        s.labels["name"]
        for m in registry.collect()
        for s in m.samples
        if s.name == "rh_agents_events_total"
    }
    assert names == {"user-0", "user-1", "user-2", "_other"}


# ------------------------------------------------------------- the exception tree


def _documented_tree(text: str) -> dict[str, str]:
    """name -> parent name, from a drawn tree (``├── Name``, indented by 4 per level)."""
    import re

    parents: dict[str, str] = {}
    stack: list[str] = []
    base = 0
    for line in text.splitlines():
        if line.strip() == "RhAgentsError":
            stack = ["RhAgentsError"]
            base = line.index("R")
            continue
        found = re.search(r"[├└]── (\w+)", line)
        if not found or not stack:
            continue
        depth = (found.start() - base) // 4 + 1
        del stack[depth:]
        parents[found.group(1)] = stack[-1]
        stack.append(found.group(1))
    return parents


def _all_error_classes() -> dict[str, type[BaseException]]:
    import importlib
    import pkgutil

    import rh_agents

    for module in pkgutil.walk_packages(rh_agents.__path__, "rh_agents."):
        if ".demo" not in module.name:
            importlib.import_module(module.name)
    found: dict[str, type[BaseException]] = {}
    todo: list[type[BaseException]] = [RhAgentsError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            # EventFailedError[ValueError] and the like are made at run time by
            # EventFailedError.caused_by (FAIL_FAST), documented under EventFailedError.
            derived = "[" in sub.__name__
            if sub.__module__.startswith("rh_agents") and ".demo" not in sub.__module__:
                if not derived:
                    found[sub.__name__] = sub
                todo.append(sub)
    return found


def test_the_classes_made_for_fail_fast_are_not_in_the_tree() -> None:
    from rh_agents.core.errors import EventFailedError

    made = EventFailedError.caused_by("Item 0 failed: x", None, KeyError("x"))
    assert type(made).__name__ == "EventFailedError[KeyError]"
    assert "EventFailedError[KeyError]" not in _all_error_classes()


def test_the_documented_exception_tree_matches_the_classes() -> None:
    from pathlib import Path

    import rh_agents.core.errors as errors_module

    assert errors_module.__doc__ is not None
    from_docstring = _documented_tree(errors_module.__doc__)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    assert _documented_tree(docs) == from_docstring, "docs/errors.md and errors.py differ"
    classes = _all_error_classes()
    assert set(from_docstring) == set(classes), set(from_docstring) ^ set(classes)
    for name, parent in from_docstring.items():
        bases = [b.__name__ for b in classes[name].__bases__]
        assert bases[0] == parent, f"{name} derives from {bases}, the tree says {parent}"
