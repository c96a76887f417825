"""How a group sums up its failures (``categorized_errors``, ``error_summary``), at the
edges: long messages, first sentences, errors added after the fact, unnamed groups."""

from __future__ import annotations

import pytest

from rh_agents.core.parallel.models import (
    ErrorStrategy,
    GroupStatistics,
    ParallelEventGroup,
    label_of,
    new_group,
)


def group_with(*failures: tuple[str, str]) -> ParallelEventGroup:
    group = ParallelEventGroup(name="g", max_workers=1)
    for error_type, message in failures:
        group._record_failure(error_type, message)
    return group


def test_a_message_is_cut_to_80_characters_with_an_ellipsis() -> None:
    exact = "x" * 80
    longer = "y" * 81
    group = group_with(("A", exact), ("B", longer))
    assert group.categorized_errors() == [("A", exact, 1), ("B", "y" * 77 + "...", 1)]


def test_only_the_first_sentence_counts() -> None:
    group = group_with(
        ("E", "Connection refused. Retry in 3 s"),
        ("E", "Connection refused; try later"),
        ("E", ". starts with a dot"),  # no first sentence to cut: kept whole
        ("E", "X. a one-letter first sentence"),
    )
    assert group.categorized_errors() == [
        ("E", "Connection refused", 2),
        ("E", ". starts with a dot", 1),
        ("E", "X", 1),
    ]


def test_errors_added_to_the_list_directly_are_counted() -> None:
    group = group_with(("E", "port 1 refused"))
    group.errors.append("E: port 2 refused")
    group.errors.append("F")
    assert group.categorized_errors() == [("E", "port N refused", 2), ("F", "", 1)]
    restored = ParallelEventGroup.model_validate_json(group.model_dump_json())
    assert restored.categorized_errors() == group.categorized_errors()


def test_a_group_is_named_by_its_name_then_its_id() -> None:
    assert label_of(ParallelEventGroup(name="docs", group_id="g-1")) == "docs"
    assert label_of(ParallelEventGroup(group_id="g-1")) == "g-1"
    assert label_of(ParallelEventGroup()) == "unnamed"


def test_statistics_refuse_unknown_keys_by_name() -> None:
    stats = GroupStatistics(in_flight=1, peak_in_flight=2, queued=3, delayed=0)
    with pytest.raises(KeyError) as caught:
        stats["running"]
    assert caught.value.args == ("running",)
    assert hash(stats) == hash(GroupStatistics(in_flight=1, peak_in_flight=2, queued=3, delayed=0))


@pytest.mark.parametrize(
    ("name", "workers", "strategy", "timeout"),
    [("g", 1, ErrorStrategy.FAIL_SLOW, None), (None, 32, ErrorStrategy.FAIL_FAST, 2.5)],
)
def test_a_group_built_by_the_fast_constructor_equals_a_validated_one(
    name: str | None, workers: int, strategy: ErrorStrategy, timeout: float | None
) -> None:
    # state.parallel() builds its group without validation; it must be the same model.
    fast = new_group(name, workers, strategy, timeout)
    slow = ParallelEventGroup(
        name=name, max_workers=workers, error_strategy=strategy, timeout=timeout
    )
    assert fast.model_dump() == slow.model_dump()
    assert list(fast.__dict__) == list(slow.__dict__)
    assert fast.model_fields_set == slow.model_fields_set
    # Nothing shared between groups: failures and fields set are each group's own.
    other = new_group(name, workers, strategy, timeout)
    fast._record_failure("ValueError", "bad")
    fast.model_fields_set.add("total")
    assert other.errors == [] and other.categorized_errors() == []
    assert "total" not in other.model_fields_set
    assert fast.error_summary() == ""  # counts are the run's: no failed item counted
    fast.failed = 1
    assert (
        fast.error_summary()
        == slow.model_copy(update={"failed": 1, "errors": ["ValueError: bad"]}).error_summary()
    )
