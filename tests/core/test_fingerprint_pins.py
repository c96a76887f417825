"""Golden input fingerprints: a change of encoding is a deliberate, versioned decision.

A resumed run replays a recorded result only when the input's fingerprint matches the
one recorded with it (``input_hash``). Every history written so far holds fingerprints
of this encoding (sorted-key compact JSON, BLAKE2b with a 12-byte digest, written as
16 characters of URL-safe base64 since the journal format of version 2): a change of
separators, digest size, set order or model dumping would make each stored history
refuse to replay. So the values are pinned here, for every kind of input a user passes.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import math
from typing import Any

import pytest
from conftest import outputs_under_hash_seeds
from pydantic import BaseModel

from rh_agents.core.history import input_fingerprint


class Query(BaseModel):
    text: str
    limit: int = 3


class Point(BaseModel, frozen=True):
    y: int
    x: int


class Outer(BaseModel):
    query: Query
    tags: set[str]


def _cycle() -> list[Any]:
    items: list[Any] = []
    items.append(items)
    return items


GOLDEN: list[tuple[str, Any, str]] = [
    ("none", None, "2fFvbvmlvBqcCiyY"),
    ("bool", True, "0JE4Y0QTZKYfyt4Y"),
    ("int", 42, "JfxckGbZd-RpjlGb"),
    ("float", 1.5, "9G9_M01N7IctGrBe"),
    ("str", "hello", "9FrBs4mKEzhfDIaF"),
    ("unicode", "héllo wörld ✓ 日本", "_VvEnR2uId3_ZcYJ"),
    ("list", [1, "a", None], "8vD7T2ufO5-BdnHG"),
    ("tuple is a list", (1, "a", None), "8vD7T2ufO5-BdnHG"),
    ("dict", {"b": 1, "a": [1, 2]}, "HvTVG5mKYfbJqr-J"),
    ("nested dict", {"z": {"y": [{"x": 1}]}}, "SHvq0yCHVfab0nEv"),
    ("mixed key types", {1: "a", "b": 2}, "W-5lKHxD7Gj6crrX"),
    (
        "mixed keys, nested, with a set",
        {"outer": {2: "x", "k": {1, 2}}},
        "NDU30KxczVJZl5xC",
    ),
    ("set of str", {"b", "a", "c"}, "bJpQtw_1EIVoHAND"),
    ("frozenset", frozenset({3, 1, 2}), "8VIzAY2p2ESy8iD_"),
    ("set in a dict", {"s": {"y", "x"}}, "YhpAj8xvnhE-zd3a"),
    ("nan", math.nan, "LYWr0N3cSFDsvi6V"),
    ("inf", math.inf, "f1wu5aPd507hovS3"),
    ("-inf", -math.inf, "-f9rNzt-_YUSLN3Z"),
    ("floats", [0.1, -0.0, 1e300], "iJ82URMXEkvncal9"),
    ("model", Query(text="x"), "6Hh-Abdy7_53iZ7C"),
    ("model in a dict", {"q": Query(text="x")}, "C2eIRmphqc8vtHBg"),
    (
        "model with a model and a set",
        Outer(query=Query(text="x"), tags={"b", "a"}),
        "4V-H5oJzhgNKK1Mn",
    ),
    (
        "datetime",
        datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC),
        "3cREP8kxCSkk486H",
    ),
    ("bytes", b"raw", "qoXvo59d6auTIF1p"),
    ("model under mixed keys", {1: Query(text="x"), "a": 1}, "vj3cVuloIb7i8jbC"),
    ("list and set under mixed keys", {1: [1, {"b", "a"}], "x": (2,)}, "RsR6ASTcdnmEJHE-"),
    (
        "date and bytes under mixed keys",
        {1: datetime.date(2026, 1, 2), "a": b"x"},
        "3DCM2Vv0Dg70Zp-0",
    ),
    ("set of mixed types", {1, "1", 2.5}, "EYxEpkGXU-iZIdfg"),
    ("set of tuples", {(1, 2), (0, 3)}, "Grgvu3FdG10URK_w"),
    ("list of a model and a set", [Query(text="y"), {"z"}], "f4OVLZjQ0lQn-kzD"),
    ("set of frozen models", {Point(y=1, x=2), Point(y=2, x=1)}, "TUeC9ETtNEnfym-K"),
    ("empty dict", {}, "v3jkqVO0Du4jjKLp"),
    ("empty list", [], "X-tZYnAYYlP59hfw"),
]


@pytest.mark.parametrize(
    ("value", "expected"), [(v, e) for _, v, e in GOLDEN], ids=[n for n, _, _ in GOLDEN]
)
def test_golden_fingerprints(value: Any, expected: str) -> None:
    assert input_fingerprint(value) == expected


def _digest(text: str) -> str:
    digest = hashlib.blake2b(text.encode("ascii"), digest_size=12).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")


@pytest.mark.parametrize(
    ("value", "json_text"),
    [
        ({"b": 1, "a": [1, 2]}, '{"a":[1,2],"b":1}'),
        ({1: "a", "b": 2}, '{"1":"a","b":2}'),
        ({"c", "a", "b"}, '["a","b","c"]'),
        ({"s": {2, 1}, "q": Query(text="x")}, '{"q":{"limit":3,"text":"x"},"s":[1,2]}'),
        ("ü", '"\\u00fc"'),
        ([math.nan, math.inf], "[NaN,Infinity]"),
    ],
)
def test_the_fingerprint_is_a_digest_of_compact_sorted_json(value: Any, json_text: str) -> None:
    """The encoding spelled out: what is hashed, and how."""
    assert input_fingerprint(value) == _digest(json_text)


def test_equal_inputs_in_any_order_have_one_fingerprint() -> None:
    assert input_fingerprint({"a": 1, "b": {2, 1}}) == input_fingerprint({"b": {1, 2}, "a": 1})
    assert input_fingerprint({1: "a", "b": 2}) == input_fingerprint({"b": 2, 1: "a"})
    assert input_fingerprint({"x", "y"}) != input_fingerprint({"x", "z"})


@pytest.mark.parametrize(
    "value",
    [object(), {"a": object()}, {1: object(), "a": 1}, {1, object()}, _cycle()],
    ids=["object", "object in a dict", "object under mixed keys", "object in a set", "cycle"],
)
def test_inputs_without_a_json_form_have_no_fingerprint(value: Any) -> None:
    assert input_fingerprint(value) is None


def test_sets_of_strings_fingerprint_alike_in_every_process() -> None:
    """Set order follows the process's hash seed; the fingerprint must not."""
    code = (
        "from rh_agents.core.history import input_fingerprint as f;"
        "print(f({'alpha', 'beta', 'gamma', 'delta'}), f({'k': frozenset({'x', 'y', 'z'})}))"
    )
    seen = outputs_under_hash_seeds(code, ("0", "1", "12345"))
    assert seen == {
        f"{input_fingerprint({'alpha', 'beta', 'gamma', 'delta'})} "
        f"{input_fingerprint({'k': frozenset({'x', 'y', 'z'})})}"
    }
