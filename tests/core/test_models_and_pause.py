"""Small private building blocks the core relies on, pinned directly: models built
without validation (``_models``), the private attributes of a new event, and the signal
of a paused run (``_pause``)."""

from __future__ import annotations

import inspect
import pickle
import time
from typing import Any

import pytest
from pydantic import BaseModel, PrivateAttr, ValidationError

from rh_agents import LLM, Agent, ExecutionEvent, Tool
from rh_agents.core import events
from rh_agents.core._models import assemble, clone, set_extra, set_fields_set, set_private
from rh_agents.core._pause import Interrupted, PendingInterrupt
from rh_agents.core.result import ExecutionResult


def test_a_clone_is_a_complete_model_equal_to_a_validated_one() -> None:
    original = ExecutionResult(result=[1], ok=True, name="a")
    copied = clone(original, name="b")
    assert type(copied) is ExecutionResult and copied is not original
    assert copied.__pydantic_extra__ is None and copied.__pydantic_private__ is None
    assert copied == ExecutionResult(result=[1], ok=True, name="b")
    assert copied.model_fields_set == {"result", "ok", "name"}
    assert copied.result is original.result  # shallow
    assert original.name == "a"
    assert pickle.loads(pickle.dumps(copied)) == copied
    assert "name='b'" in repr(copied)


def test_assemble_copies_the_private_attributes_it_is_given() -> None:
    private = {"_x": 1}
    fields = dict(ExecutionResult(ok=True).__dict__)
    built = assemble(ExecutionResult, fields, set(), private)
    assert built.__pydantic_private__ == {"_x": 1}
    assert built.__pydantic_private__ is not private
    assert assemble(ExecutionResult, dict(fields), set(), None).__pydantic_private__ is None


def test_the_slot_setters_set_what_object_setattr_would() -> None:
    built = ExecutionResult.__new__(ExecutionResult)
    object.__setattr__(built, "__dict__", dict(ExecutionResult(ok=True).__dict__))
    set_fields_set(built, {"ok"})
    set_extra(built, None)
    set_private(built, None)
    assert built == ExecutionResult(ok=True) and built.model_fields_set == {"ok"}


async def _echo(input_data: Any, extra_context: Any, state: Any) -> Any:
    return input_data


_TOOL = Tool(name="echo", description="returns its input", handler=_echo)


def _declared_defaults(cls: type[ExecutionEvent[Any]]) -> dict[str, Any]:
    return {name: a.get_default() for name, a in cls.__private_attributes__.items()}


def test_a_new_event_gets_its_own_copy_of_the_private_defaults() -> None:
    first, second = ExecutionEvent(actor=_TOOL), ExecutionEvent(actor=_TOOL)
    assert first.__pydantic_private__ == _declared_defaults(ExecutionEvent)
    assert first.__pydantic_private__ is not second.__pydantic_private__
    first._result_type = "mine"
    assert second._result_type is None
    assert ExecutionEvent(actor=_TOOL)._result_type is None


def test_a_new_event_takes_its_private_defaults_from_the_core_not_pydantic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pydantic calls model_post_init by name on each new instance: the replacement in
    # core.events is what runs (if pydantic stopped calling it, this fails).
    assert ExecutionEvent.__pydantic_post_init__ == "model_post_init"
    marked = dict(events._NO_PRIVATE, _actor_version="marked")
    monkeypatch.setattr(events, "_NO_PRIVATE", marked)
    assert ExecutionEvent(actor=_TOOL)._actor_version == "marked"
    assert ExecutionEvent.model_validate({"actor": _TOOL})._actor_version == "marked"


def test_subclasses_and_constructions_without_validation_keep_pydantics_defaults() -> None:
    class Tagged(ExecutionEvent[Any]):
        _tag: str = PrivateAttr(default="t")

    tagged = Tagged(actor=_TOOL)
    assert tagged.__pydantic_private__ == _declared_defaults(Tagged)
    assert tagged._tag == "t"
    assert ExecutionEvent[int](actor=_TOOL).__pydantic_private__ == _declared_defaults(
        ExecutionEvent
    )
    constructed = ExecutionEvent.model_construct(actor=_TOOL)
    assert constructed.__pydantic_private__ == _declared_defaults(ExecutionEvent)
    copied = ExecutionEvent(actor=_TOOL).model_copy()
    assert copied.__pydantic_private__ == _declared_defaults(ExecutionEvent)


def _parts(event: ExecutionEvent[Any]) -> tuple[Any, ...]:
    """Everything a constructed event is made of but its timestamp (a clock reading)."""
    fields = dict(event.__dict__)
    fields.pop("timestamp")
    return (
        type(event),
        list(event.__dict__),  # the same keys in the same order: repr and dumps agree
        fields,
        event.__pydantic_fields_set__,
        event.__pydantic_private__,
        event.__pydantic_extra__,
    )


_AGENT = Agent(name="planner", handler=_echo)
_LLM = LLM(name="model", handler=_echo)


@pytest.mark.parametrize(
    "data",
    [
        {"actor": _TOOL},
        {"actor": _AGENT, "tag": "first"},
        {"actor": _LLM, "tag": ""},
    ],
    ids=["tool", "agent and tag", "llm and empty tag"],
)
def test_an_event_built_without_validation_equals_a_validated_one(
    data: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    validated = ExecutionEvent.model_validate(data)
    before = time.time()

    def refuse(self: Any, /, **kwargs: Any) -> None:  # proves no validation runs
        raise AssertionError("validated")

    monkeypatch.setattr(BaseModel, "__init__", refuse)
    built = ExecutionEvent(**data)
    assert _parts(built) == _parts(validated)
    # Validation keeps an actor as it is (BaseActor does not revalidate instances), so
    # the fast construction may too.
    assert built.actor is data["actor"] and validated.actor is data["actor"]
    assert before <= built.timestamp <= time.time()
    assert built.metadata == {} and built.metadata is not ExecutionEvent(**data).metadata
    assert built.model_dump(exclude={"actor", "timestamp"}) == validated.model_dump(
        exclude={"actor", "timestamp"}
    )


def test_any_other_construction_is_validated() -> None:
    assert _parts(ExecutionEvent()) == _parts(ExecutionEvent.model_validate({}))
    with_metadata = ExecutionEvent(actor=_TOOL, metadata={"k": 1})
    assert with_metadata.metadata == {"k": 1}
    assert with_metadata.model_fields_set == {"actor", "metadata"}
    for bad in (
        {"actor": _TOOL, "tag": 1},  # a tag must be a str
        {"actor": "echo"},  # an actor must be a BaseActor
        {"actor": _TOOL, "unknown": 1},  # extra="forbid"
    ):
        with pytest.raises(ValidationError):
            ExecutionEvent(**bad)
    # A subclass (and a parametrized ExecutionEvent[T]) is validated: its fields may differ.
    assert type(ExecutionEvent[int](actor=_TOOL)) is ExecutionEvent[int]


def test_validating_an_event_does_not_go_through_its_constructor() -> None:
    # pydantic calls a model's own __init__ when validating it (as a field, by
    # model_validate) unless it carries pydantic's marker of the base __init__.
    assert ExecutionEvent.__pydantic_custom_init__ is False
    # ... and its signature is still the fields' (what IDEs and help() show)
    assert list(inspect.signature(ExecutionEvent).parameters)[:4] == [
        "actor",
        "kind",
        "address",
        "tag",
    ]

    class Holder(BaseModel):
        event: ExecutionEvent[Any]

    held = Holder.model_validate({"event": {"actor": _TOOL, "tag": "t"}})
    assert held.event.tag == "t" and held.event.actor is _TOOL


def test_the_constructor_fills_in_exactly_the_fields_built_by_a_factory() -> None:
    # _fast_init calls these two factories itself: a field gaining a factory (or losing
    # one) switches the fast construction off instead of leaving the field unset.
    assert events._FACTORIES == {"metadata": dict, "timestamp": time.time}
    assert events._FAST_KEYS == {"actor", "tag"}


def test_a_pause_names_every_address_that_waits() -> None:
    pause = Interrupted(
        (PendingInterrupt("run/approve", {"q": 1}), PendingInterrupt("run/review", None))
    )
    assert str(pause) == (
        "The run is waiting for 2 answer(s) at 'run/approve', 'run/review'; give them with "
        "state.resume_with(...) and make the same call again to go on."
    )
    assert not isinstance(pause, Exception)  # handlers' `except Exception` let it through
    one = Interrupted((PendingInterrupt("a", 1),))
    assert Interrupted.merge([one]) is one
    merged = Interrupted.merge([one, pause])
    assert [p.address for p in merged.interrupts] == ["a", "run/approve", "run/review"]
    assert str(merged).startswith("The run is waiting for 3 answer(s) at 'a', 'run/approve'")
    with pytest.raises(Interrupted):
        raise merged
