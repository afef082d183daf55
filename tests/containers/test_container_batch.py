"""container_batch job data: validation errors name the field; commands quote items."""

from __future__ import annotations

from typing import Any

import pytest

from src.services.errors import InvalidInput
from src.services.job_types.container_batch import container_job_id, render_command, validate

BASE = {"image": "local", "command": "echo {item}", "items": ["a"]}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"image": " "}, "job_data.image"),
        ({"items": []}, "job_data.items"),
        ({"items": ["ok", "bad\rline"]}, "job_data.items.1"),
        ({"items": ["bad\u2028line"]}, "job_data.items.0"),
        ({"concurrency": 0}, "job_data.concurrency"),
        ({"environment": {"1X": "v"}}, "job_data.environment"),
        ({"environment": {"X": "two\nlines"}}, "job_data.environment.X"),
        ({"surprise": True}, "job_data.surprise"),
    ],
)
def test_bad_job_data_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        validate(BASE | changes)
    assert raised.value.field == field


def test_items_are_shell_quoted_in_the_command() -> None:
    assert render_command("echo {item} #{index}", "a b; rm -rf /", 3) == "echo 'a b; rm -rf /' #3"
    assert render_command("run {item}", {"k": [1, 2]}, 0) == """run '{"k":[1,2]}'"""
    assert container_job_id("job", 7) == "job-00007"
