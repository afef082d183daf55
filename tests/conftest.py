"""Fixtures shared by every test: settings on temporary paths and the embedded store."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

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


@pytest.fixture(scope="session", autouse=True)
def user_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The per-user data directory (platformdirs reads XDG_DATA_HOME) moved to a temporary
    one, for this process and the commands it starts: a test that relies on the default
    paths never touches the real user's database."""
    home = tmp_path_factory.mktemp("xdg-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(home))
        # Periodic probes would reach the (cloud) endpoints of hosts that tests create;
        # tests of host health turn them on in their own settings.
        patch.setenv("BULKJOBS_HOST_HEALTH_INTERVAL_S", "0")
        yield home / "bulkjobs"


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


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh store of each kind: a test that asks for it runs on every store."""
    opened = await open_store(request.param, tmp_path / "store.db", request)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture(scope="session")
def docker_url() -> str:
    """The Docker engine scripts/docker-ci.sh starts (DOCKER_HOST, or its default socket).
    Without one, Docker tests skip -- unless REQUIRE_DOCKER=1 (as in CI): then they fail."""
    url = os.environ.get("DOCKER_HOST", DEFAULT_DOCKER_SOCKET)
    try:
        _probe_socket(url)
        client = docker.DockerClient(base_url=url, version="auto", timeout=10)
    except Exception as exc:  # any failure means: no usable engine here
        _no_docker(url, exc)
    try:
        client.images.get(DOCKER_IMAGE)
    except Exception as exc:
        _no_docker(url, exc)
    finally:
        client.close()  # its socket would be a ResourceWarning, an error under pytest
    return url


def _probe_socket(url: str) -> None:
    """Connect to a unix socket ourselves first: the Docker SDK leaves the socket of a failed
    connect open (a ResourceWarning, which `filterwarnings = error` turns into a failure)."""
    if url.startswith("unix://"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(url.removeprefix("unix://"))


def _no_docker(url: str, exc: Exception) -> NoReturn:
    message = f"no Docker engine with {DOCKER_IMAGE} at {url} ({exc}); run scripts/docker-ci.sh"
    if os.environ.get("REQUIRE_DOCKER") == "1":
        pytest.fail(message)
    pytest.skip(reason=message)
