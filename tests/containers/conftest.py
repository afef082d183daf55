"""Fixtures for container tests: hosts, jobs and the private Docker engine.

The Docker tests need the engine that scripts/docker-ci.sh starts (DOCKER_HOST, or its
default socket). Without one they skip -- unless REQUIRE_DOCKER=1, as in CI, where a
missing engine fails them instead.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import docker
import pytest

from src.services.containers.models import ContainerJob, ExecutorHost

DOCKER_IMAGE = "bulkjobs-busybox:test"
DEFAULT_SOCKET = "unix:///tmp/bulkjobs-docker/docker.sock"


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


@pytest.fixture(scope="session")
def docker_url() -> str:
    url = os.environ.get("DOCKER_HOST", DEFAULT_SOCKET)
    try:
        client = docker.DockerClient(base_url=url, version="auto", timeout=10)
        client.images.get(DOCKER_IMAGE)
        client.close()
    except Exception as exc:  # any failure means: no usable engine here
        message = f"no Docker engine with {DOCKER_IMAGE} at {url} ({exc}); run scripts/docker-ci.sh"
        if os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def docker_host(docker_url: str) -> ExecutorHost:
    return make_host("docker", connection_string=docker_url, auto_pull_images=False)
