"""TokenUsage and the automatic pickup of a response's usage, unit by unit.

The telemetry tests (tests/telemetry/test_telemetry_usage.py) follow usage from a handler
to spans, metrics and the journal; these pin the edges of the values themselves: what a
provider response of each shape yields, what a stored usage reads back as, and how a
running total is split per attempt.
"""

from __future__ import annotations

import copy
import logging
import pickle
from dataclasses import dataclass
from typing import Any

import pytest

from rh_agents.core.errors import StateCorruptedError
from rh_agents.core.usage import TokenUsage, usage_from_result


def test_since_is_what_was_reported_after_an_earlier_total() -> None:
    earlier = TokenUsage(
        input_tokens=10, output_tokens=2, response_model="m", finish_reasons=("a",)
    )
    later = TokenUsage(
        input_tokens=15, output_tokens=5, response_model="m", finish_reasons=("a", "stop")
    )
    assert later.since(earlier) == TokenUsage(
        input_tokens=5, output_tokens=3, response_model=None, finish_reasons=("stop",)
    )
    other = later.model_copy(update={"response_model": "n"})
    assert other.since(earlier).response_model == "n"  # a model reported since
    assert later.since(None) is later


def test_a_usage_built_without_validation_behaves_like_a_validated_one() -> None:
    built = TokenUsage(input_tokens=1) + TokenUsage(output_tokens=2, response_model="m")
    validated = TokenUsage(input_tokens=1, output_tokens=2, response_model="m")
    assert built == validated and hash(built) == hash(validated)
    assert built.model_fields_set == set()
    assert built.model_dump(exclude_unset=True) == {}
    assert built.model_dump() == validated.model_dump()
    assert pickle.loads(pickle.dumps(built)) == validated
    assert copy.deepcopy(built) == validated
    assert built.model_copy(update={"output_tokens": 3}).output_tokens == 3


def test_a_stored_usage_reads_back_with_defaults_for_what_it_lacks() -> None:
    assert TokenUsage.from_record(None) is None
    assert TokenUsage.from_record({}) == TokenUsage()
    assert TokenUsage.from_record({"input_tokens": 3}) == TokenUsage(input_tokens=3)
    assert TokenUsage.from_record({"output_tokens": 4}) == TokenUsage(output_tokens=4)
    assert TokenUsage.from_record(
        {"input_tokens": 1, "output_tokens": 2, "response_model": "", "finish_reasons": "stop"}
    ) == TokenUsage(input_tokens=1, output_tokens=2, finish_reasons=("stop",))
    usage = TokenUsage(input_tokens=1, output_tokens=2, response_model="m", finish_reasons=("x",))
    assert TokenUsage.from_record(usage.to_record()) == usage


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        ([1, 2], "it is a list"),
        ({"input_tokens": -1}, "token counts must be non-negative integers, got -1"),
        ({"output_tokens": True}, "token counts must be non-negative integers, got True"),
        ({"response_model": 7}, "response_model must be a string, got int"),
        ({"finish_reasons": ["stop", 3]}, "finish reasons must be strings, got int"),
    ],
)
def test_a_damaged_stored_usage_names_its_record_and_the_problem(stored: Any, problem: str) -> None:
    with pytest.raises(StateCorruptedError) as caught:
        TokenUsage.from_record(stored, 12)
    assert str(caught.value) == (
        f"The token usage of history record 12 cannot be read ({problem}); the history "
        "was written by another program or is damaged."
    )


# --------------------------------------------------------------- automatic pickup


@dataclass
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class Choice:
    finish_reason: Any


@dataclass
class Completion:
    usage: Any
    model: Any = None
    choices: Any = None


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            {"usage": {"prompt_tokens": 5, "completion_tokens": 2}, "model": "m"},
            TokenUsage(input_tokens=5, output_tokens=2, response_model="m"),
        ),
        ({"usage": {"prompt_tokens": 5}}, TokenUsage(input_tokens=5)),
        ({"usage": {"completion_tokens": 2}}, TokenUsage(output_tokens=2)),
        # zero is a count: an all-zero usage is a usage, and a zero input_tokens is not
        # skipped for a later key
        ({"usage": {"input_tokens": 0, "output_tokens": 0}}, TokenUsage()),
        ({"usage": {"input_tokens": 0, "prompt_tokens": 7}}, TokenUsage()),
        ({"usage": {"input_tokens": -1, "prompt_tokens": 7}}, TokenUsage(input_tokens=7)),
        ({"usage": {"input_tokens": True, "output_tokens": 1}}, TokenUsage(output_tokens=1)),
        ({"usage": {"input_tokens": "5"}}, None),
        ({"usage": None}, None),
        ({"model": "m"}, None),
        (
            {"usage": {"input_tokens": 1}, "model": ""},
            TokenUsage(input_tokens=1, response_model=None),
        ),
        ({"usage": {"input_tokens": 1}, "model": 4}, TokenUsage(input_tokens=1)),
        (
            {"usage": {"input_tokens": 1}, "finish_reason": "length"},
            TokenUsage(input_tokens=1, finish_reasons=("length",)),
        ),
        (
            {"usage": {"input_tokens": 1}, "stop_reason": "end_turn", "finish_reason": "x"},
            TokenUsage(input_tokens=1, finish_reasons=("end_turn", "x")),
        ),
        (
            {"usage": {"input_tokens": 1}, "stop_reason": "", "finish_reason": 3},
            TokenUsage(input_tokens=1),
        ),
        (
            Completion(
                usage=Usage(3, 4),
                model="gpt",
                choices=[Choice("stop"), Choice(""), Choice(None), Choice(2), Choice("length")],
            ),
            TokenUsage(
                input_tokens=3,
                output_tokens=4,
                response_model="gpt",
                finish_reasons=("stop", "length"),
            ),
        ),
        (
            Completion(usage=Usage(3, 4), choices="stop"),
            TokenUsage(input_tokens=3, output_tokens=4),
        ),
        (None, None),
        ("usage", None),
        (b"usage", None),
        (3, None),
        ([{"usage": {"input_tokens": 1}}], None),
        (({"usage": {"input_tokens": 1}},), None),
    ],
)
def test_usage_from_result_reads_the_shapes_providers_return(
    response: Any, expected: TokenUsage | None
) -> None:
    assert usage_from_result(response) == expected


def test_a_response_whose_attributes_raise_has_no_usage_and_says_why_in_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Exploding:
        @property
        def usage(self) -> Any:
            raise RuntimeError("lazy attribute failed")

    with caplog.at_level(logging.DEBUG, logger="rh_agents.usage"):
        assert usage_from_result(Exploding()) is None
    (record,) = caplog.records
    assert record.getMessage() == "Could not read a usage from a Exploding"
    assert record.exc_info is not None and "lazy attribute failed" in str(record.exc_info[1])


def test_a_damaged_usage_read_without_a_position_is_record_zero() -> None:
    with pytest.raises(StateCorruptedError, match=r"^The token usage of history record 0 "):
        TokenUsage.from_record("garbage")
