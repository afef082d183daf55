"""Hostile values in every field of every route family with a JSON body: NaN, Infinity,
numbers past a double, lone surrogates, deep nesting and huge strings are each a small 422
naming the field -- never a 500, never an echo of the input.

The parser at the edge does the work, so the embedded store is enough here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from src.config import Settings
from src.services.store.base import Store
from tests.conftest import open_store
from tests.integration.conftest import Api, api

__all__ = ["api"]

NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999"]
STRINGS = ["\ud800", "ok\udfffok"]
#: Small enough for any client, whatever was sent.
MAX_ERROR_BODY = 4096


@dataclass(frozen=True)
class Family:
    method: str
    path: str
    body: dict[str, Any]
    numbers: list[str] = field(default_factory=list)
    strings: list[str] = field(default_factory=list)
    #: Free-form JSON fields (nesting and surrogate keys).
    objects: list[str] = field(default_factory=list)
    admin: bool = False


FAMILIES = {
    "bulk-jobs": Family(
        "POST",
        "/bulk-jobs",
        {"job_type": "sample", "job_data": {"items": 1}},
        numbers=["estimated_duration_minutes"],
        strings=["job_type", "priority"],
        objects=["job_data"],
    ),
    "bulk-process": Family(
        "POST",
        "/bulk-process",
        {"job_type": "sample", "user_id": "alice", "job_data": {}},
        strings=["user_id", "job_type"],
        objects=["job_data"],
    ),
    "exports": Family(
        "POST",
        "/bulk-jobs/{job_id}/exports",
        {"export_format": "json", "data": [{"a": 1}]},
        numbers=["expires_in_hours"],
        strings=["filename_prefix", "export_format"],
        objects=["data"],
    ),
    "cancel": Family("POST", "/bulk-jobs/{job_id}/cancel", {"reason": "x"}, strings=["reason"]),
    "container-jobs": Family(
        "POST",
        "/container-jobs",
        {"image": "busybox", "command": "true", "executor_type": "mock"},
        numbers=["cpu_limit", "memory_limit", "timeout_seconds", "priority"],
        strings=["image", "command", "name", "description", "working_directory"],
        objects=["environment_vars", "network_configuration"],
        admin=True,
    ),
    "container-bulk": Family(
        "POST",
        "/container-jobs/bulk",
        {"docker_image": "busybox", "count": 1, "preferred_executor": "mock"},
        numbers=["count", "cpu_limit", "batch_size"],
        strings=["docker_image", "command", "name"],
        admin=True,
    ),
    "container-bulk-cleanup": Family(
        "POST", "/container-jobs/bulk/cleanup", {"days_old": 30}, numbers=["days_old"], admin=True
    ),
    "container-bulk-status": Family(
        "POST",
        "/container-jobs/bulk/status",
        {"job_ids": ["x"], "status": "cancelled", "reason": "r"},
        strings=["reason", "status"],
    ),
    "hosts": Family(
        "POST",
        "/hosts",
        {"name": "h1", "executor_type": "mock"},
        numbers=["cost_per_hour", "cost_per_job", "weight", "max_concurrent_jobs"],
        strings=["name", "connection_string"],
        objects=["executor_config"],
        admin=True,
    ),
    "hosts-patch": Family(
        "PATCH",
        "/hosts/local",
        {"weight": 10},
        numbers=["cost_per_hour", "weight"],
        strings=["name"],
        objects=["executor_config"],
        admin=True,
    ),
    "templates": Family(
        "POST",
        "/templates",
        {"name": "t1"},
        strings=["name", "description", "environment_variables_text"],
        admin=True,
    ),
}


def cases(family: Family) -> list[tuple[str, str]]:
    found = [(key, number) for key in family.numbers for number in NUMBERS]
    found += [(key, "surrogate") for key in family.strings]
    found += [(key, "huge") for key in family.strings[:1]]
    found += [(key, kind) for key in family.objects for kind in ("deep", "bad-key")]
    return found


@pytest.fixture
async def store(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    opened = await open_store("local", settings.bulkjobs_db_path, request)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
def embedded_worker() -> bool:
    return False


def hostile_body(family: Family, key: str, kind: str) -> bytes:
    """The family's valid body with one field made hostile, as JSON text a client could send
    (Python's json module writes NaN and escapes surrogates; 1e999 is put in by hand)."""
    body: dict[str, Any] = dict(family.body)
    if kind in NUMBERS:
        body[key] = "@number@"
        return json.dumps(body).replace('"@number@"', kind).encode()
    if kind == "surrogate":
        body[key] = STRINGS[0] if key != "user_id" else STRINGS[1]
    elif kind == "huge":
        body[key] = "x" * 9_000_000
    elif kind == "deep":
        deep: Any = {"a": 1}
        for _ in range(300):
            deep = {"a": deep}
        body[key] = [deep] if key == "network_configuration" else deep
    else:
        body[key] = [{"\ud800": "x"}] if key == "network_configuration" else {"\ud800": "x"}
    return json.dumps(body).encode()


async def sample_job(api: Api) -> str:
    created = await api.client.post(
        "/bulk-jobs", json={"job_type": "sample", "job_data": {"items": 1}}, headers=api.alice
    )
    job_id: str = created.json()["job_id"]
    return job_id


@pytest.mark.parametrize("family", FAMILIES)
async def test_a_hostile_value_is_a_small_422_naming_its_field(api: Api, family: str) -> None:
    spec = FAMILIES[family]
    path = spec.path
    if "{job_id}" in path:
        path = path.format(job_id=await sample_job(api))
    headers = (api.admin if spec.admin else api.alice) | {"content-type": "application/json"}
    wrong = []
    for key, kind in cases(spec):
        body = hostile_body(spec, key, kind)
        response = await api.client.request(spec.method, path, content=body, headers=headers)
        error = response.json()
        named = str(error.get("field", ""))
        if (
            response.status_code != 422
            or len(response.content) >= MAX_ERROR_BODY
            or not (named == key or named.startswith(f"{key}."))
        ):
            wrong.append((key, kind, response.status_code, response.text[:200]))
    assert wrong == []


async def test_every_route_parses_bodies_at_the_edge(api: Api) -> None:
    from fastapi.routing import APIRoute

    from src.routes.validation import JsonRoute
    from tests.integration.test_hardening import all_routes

    routes = all_routes(api.app.routes)
    assert routes
    # The offline docs pages (fastapi-offline) are the framework's own GET routes, no bodies.
    docs = {"/docs", "/docs/oauth2-redirect", "/redoc"}
    outside = [r.path for r in routes if not isinstance(r, JsonRoute) and r.path not in docs]
    assert outside == [], "routers must use route_class=JsonRoute"
    assert all(isinstance(route, APIRoute) for route in routes)
