"""Container models: env text, status machine, output helpers, hosts, redaction."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

from src.services.domain import utcnow
from src.services.domain.containers import (
    TRANSITIONS,
    ContainerJobStatus,
    EnvironmentVariableTemplate,
    check_transition,
    is_private_image,
    parse_env_text,
    redact,
    strip_timestamps,
)
from src.services.errors import Conflict, InvalidInput
from tests.containers.conftest import make_host, make_job


def test_env_text_allows_comments_blank_lines_and_equals_in_values() -> None:
    text = "# comment\n\nA=1\n  B = x=y \nURL=postgres://u:p@h/db?x=1\n"
    assert parse_env_text(text) == {"A": "1", "B": "x=y", "URL": "postgres://u:p@h/db?x=1"}


@pytest.mark.parametrize("line", ["novalue", "=value", "1KEY=v", "BAD KEY=v"])
def test_a_malformed_env_line_is_named_by_number(line: str) -> None:
    with pytest.raises(InvalidInput, match="line 3"):
        parse_env_text(f"A=1\n# fine\n{line}\n")


def test_overrides_win_over_the_template() -> None:
    template = EnvironmentVariableTemplate(id="t", name="t", environment_variables_text="A=1\nB=2")
    job = make_job("true", override_environment="B=3\nC=4")
    assert job.get_all_environment_variables(template) == {"A": "1", "B": "3", "C": "4"}
    assert job.get_override_environment_variables_dict() == {"B": "3", "C": "4"}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (old, new)
        for old in ContainerJobStatus
        for new in ContainerJobStatus
        if new not in TRANSITIONS[old] and new != old
    ],
)
def test_every_illegal_transition_is_a_conflict(
    old: ContainerJobStatus, new: ContainerJobStatus
) -> None:
    with pytest.raises(Conflict):
        check_transition(old, new)


def test_the_documented_path_is_legal() -> None:
    path = ["pending", "queued", "launching", "running", "completed"]
    for old, new in itertools.pairwise(path):
        check_transition(old, new)
    check_transition("launching", "retrying")
    check_transition("retrying", "queued")


def test_output_helpers() -> None:
    job = make_job("x", stdout_log='2026-01-02T03:04:05.123456789Z {"a": 1}\n')
    assert job.clean_output == '{"a": 1}'
    assert job.parsed_output == {"a": 1}
    assert make_job("x", stdout_log="progress\n[1, 2]\n").parsed_output == [1, 2]
    assert make_job("x", stdout_log="plain text").parsed_output is None
    assert strip_timestamps("[2026-01-02 03:04:05] hi\nno stamp") == "hi\nno stamp"


def test_duration_and_terminal_status() -> None:
    start = utcnow()
    job = make_job("x", started_at=start, completed_at=start + timedelta(seconds=5))
    assert job.duration == timedelta(seconds=5)
    assert make_job("x").duration is None
    assert make_job("x", status="timeout").is_terminal_status
    assert not make_job("x", status="retrying").is_terminal_status


def test_execution_identifier_depends_on_the_executor() -> None:
    docker = make_job("x", "docker")
    docker.set_execution_identifier("abc")
    assert (docker.execution_id, docker.external_execution_id) == ("abc", "")
    cloud = make_job("x", "fargate")
    cloud.set_execution_identifier("arn:task")
    assert cloud.get_execution_identifier() == "arn:task" and cloud.execution_id == ""


def test_can_use_executor() -> None:
    private = make_job("x", docker_image="localhost:5000/app:1")
    assert is_private_image("localhost:5000/app:1") and not is_private_image("python:3.11")
    assert private.can_use_executor("docker") and not private.can_use_executor("cloudrun")
    pinned = make_job("x", preferred_executor="fargate")
    assert pinned.can_use_executor("fargate") and not pinned.can_use_executor("docker")
    template = EnvironmentVariableTemplate(id="t", name="t", supported_executors=["scaleway"])
    assert not make_job("x").can_use_executor("docker", template)
    assert make_job("x").estimate_resources()["memory_mb"] == 512


def test_host_capacity_availability_and_display() -> None:
    host = make_host("docker", name="box", max_concurrent_jobs=4, current_job_count=3)
    assert host.is_available()
    assert host.get_capacity_info() == {
        "current_jobs": 3,
        "max_jobs": 4,
        "available_slots": 1,
        "utilization_percent": 75.0,
    }
    assert host.get_display_name() == "box (Docker)"
    assert not make_host("docker", current_job_count=10, max_concurrent_jobs=10).is_available()
    assert not make_host("docker", health_check_failures=3, healthy=False).is_available()
    assert not make_host("docker", is_active=False).is_available()


def test_secrets_are_redacted_from_config_and_repr() -> None:
    config = {"region": "eu", "aws_secret_access_key": "s3cr3t", "nested": {"api_token": "t0k"}}
    assert redact(config) == {
        "region": "eu",
        "aws_secret_access_key": "***",
        "nested": {"api_token": "***"},
    }
    host = make_host("fargate", executor_config=config)
    assert "s3cr3t" not in repr(host) and "s3cr3t" not in str(host)
