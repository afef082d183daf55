"""Fixtures for container tests: hosts, jobs and the private Docker engine."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from src.services.domain.containers import ContainerJob, ExecutorHost


def make_host(executor_type: str = "local", **fields: Any) -> ExecutorHost:
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "name": f"{executor_type}-{uuid.uuid4().hex[:6]}",
        "executor_type": executor_type,
    }
    return ExecutorHost.model_validate(values | fields)


def make_job(command: str, executor_type: str = "local", **fields: Any) -> ContainerJob:
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "docker_image": "local",
        "command": command,
        "executor_type": executor_type,
    }
    return ContainerJob.model_validate(values | fields)


@pytest.fixture
def docker_host(docker_url: str) -> ExecutorHost:
    return make_host("docker", connection_string=docker_url, auto_pull_images=False)
