"""The strict JSON parser at the edge and the capping of echoed values in 422 bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError

from src.routes.validation import MAX_JSON_DEPTH, echo, parse_json


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def refusal(body: bytes) -> dict[str, Any]:
    with pytest.raises(RequestValidationError) as caught:
        parse_json(body)
    [error] = caught.value.errors()
    return dict(error)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_numbers_that_are_not_finite_are_refused_naming_the_field(number: str) -> None:
    error = refusal(f'{{"job": {{"cpu_limit": {number}}}}}'.encode())
    assert error["loc"] == ("body", "job", "cpu_limit")
    assert error["type"] == "finite_number"
    assert number in error["msg"]


def test_lone_surrogates_are_refused_in_values_and_keys() -> None:
    assert refusal(b'{"name": "a\\ud800b"}')["loc"] == ("body", "name")
    assert refusal(b'{"items": ["ok", "\\udfff"]}')["loc"] == ("body", "items", 1)
    assert refusal(b'{"data": {"\\ud800": 1}}')["loc"] == ("body", "data", "\ud800")
    assert refusal(b'"\\ud800"')["loc"] == ("body",)


def test_surrogate_pairs_and_unicode_are_text() -> None:
    assert parse_json(b'{"smile": "\\ud83d\\ude00", "raw": "\xc3\xa9"}') == {
        "smile": "\U0001f600",
        "raw": "\u00e9",
    }


def test_nesting_is_bounded() -> None:
    deepest = json.dumps(nested(MAX_JSON_DEPTH - 1)).encode()  # the body counts as a level
    assert parse_json(deepest) == nested(MAX_JSON_DEPTH - 1)
    error = refusal(json.dumps({"network_configuration": [nested(300)]}).encode())
    assert error["loc"][:3] == ("body", "network_configuration", 0)
    assert error["type"] == "too_deep"


def test_nesting_past_the_parser_is_invalid_json_not_a_crash() -> None:
    error = refusal(b"[" * 100_000 + b"]" * 100_000)
    assert error["type"] == "json_invalid"


def test_invalid_utf8_and_syntax_are_invalid_json() -> None:
    assert "UTF-8" in refusal(b'{"name": "\xed\xa0\x80"}')["msg"]
    assert "line 1" in refusal(b'{"name": ')["msg"]


def test_integers_keep_their_precision() -> None:
    # A later check names the field when a store cannot hold such a number.
    assert parse_json(b'{"n": -9223372036854775809}') == {"n": -(2**63) - 1}


def test_big_bodies_of_plain_values_pass() -> None:
    rows = [{"id": i, "tags": ["a", "b"], "meta": {"x": 1.5}} for i in range(2000)]
    assert parse_json(json.dumps(rows).encode()) == rows


def test_echoed_values_are_capped() -> None:
    assert echo("x" * 9_000_000).startswith("x" * 200)
    assert len(echo("x" * 9_000_000)) < 260
    assert echo(float("nan")) == "nan"
    assert echo({"a": 1, "b": 2}) == "<dict of 2 items>"
    assert echo("\ud800") == "\\ud800"
    assert echo(10**400) == str(10**400)[:200] + f"... ({len(str(10**400))} characters)"
    assert echo(5) == 5 and echo(None) is None and echo(True) is True
