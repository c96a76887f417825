"""Golden input fingerprints: a change of encoding is a deliberate, versioned decision.

A resumed run replays a recorded result only when the input's fingerprint matches the
one recorded with it (``input_hash``). Every history written so far holds fingerprints
of this encoding (sorted-key compact JSON, BLAKE2b with a 12-byte digest): a change of
separators, digest size, set order or model dumping would make each stored history
refuse to replay. So the values are pinned here, for every kind of input a user passes.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import subprocess
import sys
from typing import Any

import pytest
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
    ("none", None, "d9f16f6ef9a5bc1a9c0a2c98"),
    ("bool", True, "d0913863441364a61fcade18"),
    ("int", 42, "25fc5c9066d977e4698e519b"),
    ("float", 1.5, "f46f7f334d4dec872d1ab05e"),
    ("str", "hello", "f45ac1b3898a13385f0c8685"),
    ("unicode", "héllo wörld ✓ 日本", "fd5bc49d1dae21ddff65c609"),
    ("list", [1, "a", None], "f2f0fb4f6b9f3b9f817671c6"),
    ("tuple is a list", (1, "a", None), "f2f0fb4f6b9f3b9f817671c6"),
    ("dict", {"b": 1, "a": [1, 2]}, "1ef4d51b998a61f6c9aabf89"),
    ("nested dict", {"z": {"y": [{"x": 1}]}}, "487bead3208755f69bd2712f"),
    ("mixed key types", {1: "a", "b": 2}, "5bee65287c43ec68fa72bad7"),
    (
        "mixed keys, nested, with a set",
        {"outer": {2: "x", "k": {1, 2}}},
        "343537d0ac5ccd5259979c42",
    ),
    ("set of str", {"b", "a", "c"}, "6c9a50b70ff51085681c0343"),
    ("frozenset", frozenset({3, 1, 2}), "f15233018da9d844b2f220ff"),
    ("set in a dict", {"s": {"y", "x"}}, "621a408fcc6f9e113ecdddda"),
    ("nan", math.nan, "2d85abd0dddc4850ecbe2e95"),
    ("inf", math.inf, "7f5c2ee5a3dde74ee1a2f4b7"),
    ("-inf", -math.inf, "f9ff6b373b7efd85122cddd9"),
    ("floats", [0.1, -0.0, 1e300], "889f36511317124be771a97d"),
    ("model", Query(text="x"), "e8787e01b772effe77899ec2"),
    ("model in a dict", {"q": Query(text="x")}, "0b6788466a61a9cf2fb47060"),
    (
        "model with a model and a set",
        Outer(query=Query(text="x"), tags={"b", "a"}),
        "e15f87e6827386034a2b5327",
    ),
    (
        "datetime",
        datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC),
        "ddc4443fc931092924e3ce87",
    ),
    ("bytes", b"raw", "aa85efa39f5de9ab93205d69"),
    ("model under mixed keys", {1: Query(text="x"), "a": 1}, "be3ddc56e96821bee2f236c2"),
    ("list and set under mixed keys", {1: [1, {"b", "a"}], "x": (2,)}, "46c47a0124dc76798424713e"),
    (
        "date and bytes under mixed keys",
        {1: datetime.date(2026, 1, 2), "a": b"x"},
        "dc308cd95bf40e0ef4669fb4",
    ),
    ("set of mixed types", {1, "1", 2.5}, "118c44a6419753e89921d7e0"),
    ("set of tuples", {(1, 2), (0, 3)}, "1ab82fbb715d1b5d1444aff0"),
    ("list of a model and a set", [Query(text="y"), {"z"}], "7f83952d98d0d25427fa4cc3"),
    ("set of frozen models", {Point(y=1, x=2), Point(y=2, x=1)}, "4d4782f444ed3449dfca6f8a"),
    ("empty dict", {}, "bf78e4a953b40eee238ca2e9"),
    ("empty list", [], "5feb596270186253f9f617f0"),
]


@pytest.mark.parametrize(
    ("value", "expected"), [(v, e) for _, v, e in GOLDEN], ids=[n for n, _, _ in GOLDEN]
)
def test_golden_fingerprints(value: Any, expected: str) -> None:
    assert input_fingerprint(value) == expected


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("ascii"), digest_size=12).hexdigest()


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
    seen = set()
    for seed in ("0", "1", "12345"):
        output = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        seen.add(output)
    assert seen == {
        f"{input_fingerprint({'alpha', 'beta', 'gamma', 'delta'})} "
        f"{input_fingerprint({'k': frozenset({'x', 'y', 'z'})})}\n"
    }
