"""Two small private building blocks the core relies on, pinned directly: models built
without validation (``_models``) and the signal of a paused run (``_pause``)."""

from __future__ import annotations

import pickle

import pytest

from rh_agents.core._models import assemble, clone
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
