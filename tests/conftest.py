"""Fixtures shared by every test: settings on temporary paths and the embedded store."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest

from src.config import Settings, load_settings
from src.services.store.base import Store
from src.services.store.convex import ConvexStore
from src.services.store.local import LocalStore
from tests.convex_server import ConvexTestServer, start_convex_server

STORE_KINDS = ["local", "convex"]
DOCKER_IMAGE = "bulkjobs-busybox:test"
DEFAULT_DOCKER_SOCKET = "unix:///tmp/bulkjobs-docker/docker.sock"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        bulk_export_path=tmp_path / "exports",
        bulkjobs_db_path=tmp_path / "bulkjobs.db",
        bulk_progress_interval_ms=20,
        bulkjobs_lease_seconds=5,
        bulkjobs_embedded_worker=False,
        bulk_max_export_size_mb=1,
    )


@pytest.fixture
async def local_store(settings: Settings) -> AsyncIterator[LocalStore]:
    async with LocalStore(settings.bulkjobs_db_path) as store:
        yield store


@pytest.fixture(scope="session")
def convex_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConvexTestServer]:
    """The test-only Convex HTTP server over the real convex/ functions, one per run."""
    server = start_convex_server(tmp_path_factory.mktemp("convex") / "server.log")
    yield server
    server.stop()


async def open_store(kind: str, path: Path, request: pytest.FixtureRequest) -> Store:
    """A fresh, empty store of the given kind."""
    if kind == "local":
        store = LocalStore(path)
        await store.open()
        return store
    server: ConvexTestServer = request.getfixturevalue("convex_server")
    server.reset()
    convex = ConvexStore(server.url, server.admin_key)
    await convex.open()  # as open_convex_store does: checks it and adds the default host
    return convex


@pytest.fixture(scope="session")
def docker_url() -> str:
    """The Docker engine scripts/docker-ci.sh starts (DOCKER_HOST, or its default socket).
    Without one, Docker tests skip -- unless REQUIRE_DOCKER=1 (as in CI): then they fail."""
    url = os.environ.get("DOCKER_HOST", DEFAULT_DOCKER_SOCKET)
    try:
        client = docker.DockerClient(base_url=url, version="auto", timeout=10)
        client.images.get(DOCKER_IMAGE)
        client.close()
    except Exception as exc:  # any failure means: no usable engine here
        message = f"no Docker engine with {DOCKER_IMAGE} at {url} ({exc}); run scripts/docker-ci.sh"
        if os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(reason=message)
    return url
