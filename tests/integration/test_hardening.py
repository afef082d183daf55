"""Hardening and observability over HTTP: body limits, headers, CORS, admin-only routes,
/metrics and /healthz -- on both stores."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi.routing import APIRoute

from src.app import create_app
from src.config import Settings
from src.routes.deps import admin_user
from src.services.bulk_job_manager import BulkJobManager
from src.services.logs import JsonFormatter, RedactingFilter, configure_logging, redact_text
from tests.integration.conftest import Api

SAMPLE = {"job_type": "sample", "job_data": {"items": 5, "delay_ms": 0}}


async def test_a_body_over_the_limit_is_413_naming_the_setting(api: Api) -> None:
    limit = api.manager.settings.bulkjobs_max_body_bytes
    big = b'{"job_type": "sample", "job_data": {"pad": "' + b"x" * limit + b'"}}'
    response = await api.client.post(
        "/bulk-jobs", content=big, headers=api.alice | {"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "BULKJOBS_MAX_BODY_BYTES" in response.json()["detail"]
    assert response.json()["limit_bytes"] == limit


async def test_a_chunked_body_over_the_limit_is_413(api: Api) -> None:
    limit = api.manager.settings.bulkjobs_max_body_bytes

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"job_type": "sample", "job_data": {"pad": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'"}}'

    response = await api.client.post(
        "/bulk-jobs", content=chunks(), headers=api.alice | {"content-type": "application/json"}
    )
    assert response.status_code == 413


async def test_job_data_over_its_limit_names_it(api: Api) -> None:
    limit = api.manager.settings.bulk_max_job_data_bytes
    body = {"job_type": "sample", "job_data": {"items": 1, "pad": "x" * limit}}
    response = await api.client.post("/bulk-jobs", json=body, headers=api.alice)
    assert response.status_code in (413, 422)
    assert "BULK_MAX_JOB_DATA_BYTES" in response.text or str(limit) in response.text


async def test_security_headers(api: Api) -> None:
    page = await api.client.get("/")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    data = await api.client.get("/bulk-jobs", headers=api.alice)
    assert data.headers["x-content-type-options"] == "nosniff"
    assert data.headers["referrer-policy"] == "no-referrer"


async def test_cors_is_off_by_default(api: Api) -> None:
    response = await api.client.options(
        "/bulk-jobs",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in response.headers


async def test_cors_allows_only_configured_origins(settings: Settings) -> None:
    settings = settings.model_copy(
        update={"bulkjobs_cors_origins": "https://app.example", "bulkjobs_embedded_worker": False}
    )
    app = create_app(settings, manager=BulkJobManager(settings))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        preflight = {"Access-Control-Request-Method": "POST"}
        good = await client.options(
            "/bulk-jobs", headers={"Origin": "https://app.example", **preflight}
        )
        bad = await client.options(
            "/bulk-jobs", headers={"Origin": "https://evil.example", **preflight}
        )
    assert good.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in bad.headers


def all_routes(routes: list[Any]) -> list[APIRoute]:
    """API routes, looking inside included routers."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        inner = getattr(route, "original_router", None) or getattr(route, "router", None)
        if inner is not None and hasattr(inner, "routes"):
            found.extend(all_routes(inner.routes))
    return found


def admin_routes(api: Api) -> list[APIRoute]:
    """Every route whose dependencies include the admin check."""

    def needs_admin(dependant: Any) -> bool:
        return any(dep.call is admin_user or needs_admin(dep) for dep in dependant.dependencies)

    return [route for route in all_routes(api.app.routes) if needs_admin(route.dependant)]


async def test_every_admin_route_refuses_every_non_admin_token(api: Api) -> None:
    routes = admin_routes(api)
    assert len(routes) >= 8  # hosts, templates, bulk cleanup and metrics...
    for route in routes:
        path = route.path_format.replace("{host_id}", "local").replace("{template_id}", "t")
        for method in route.methods:
            for headers in (api.alice, api.bob):
                response = await api.client.request(method, path, json={}, headers=headers)
                assert response.status_code == 403, (method, path, response.status_code)
                assert "admin" in response.json()["detail"]


async def test_metrics_in_prometheus_format(api: Api) -> None:
    created = await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)
    await api.wait_for(created.json()["job_id"])
    for _ in range(5):
        await api.client.post("/bulk-jobs", json=SAMPLE, headers=api.alice)
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'bulkjobs_jobs{status="completed"}' in text
    assert 'bulkjobs_jobs_by_type{type="sample"}' in text
    assert "bulkjobs_stage_duration_seconds_count" in text
    assert 'bulkjobs_items_total{job_type="sample"' in text
    assert "bulkjobs_exports_total" in text and "bulkjobs_export_bytes_total" in text
    assert "bulkjobs_rate_limit_rejections_total" in text
    assert 'bulkjobs_host_capacity{host="local"}' in text
    assert "bulkjobs_store_operation_seconds_bucket" in text
    assert "bulkjobs_worker_claims_total" in text
    assert "bulkjobs_outbox_depth" in text
    assert "bulkjobs_container_jobs" in text


async def test_healthz_reports_store_and_hosts(api: Api) -> None:
    body = (await api.client.get("/healthz")).json()
    assert body["status"] == "ok"
    [local] = [host for host in body["executor_hosts"] if host["name"] == "local"]
    assert local["executor_type"] == "local" and local["available"] is True


def test_secrets_are_redacted_from_log_text() -> None:
    line = (
        "auth Bearer bjt_abcdefghijklmnop failed; Authorization: Convex prod|0123456789abcdef"
        " secret_key=hunter2hunter2 password: 'p4ss' region=eu"
    )
    redacted = redact_text(line)
    for secret in ("abcdefghijklmnop", "0123456789abcdef", "hunter2", "p4ss"):
        assert secret not in redacted
    assert "region=eu" in redacted


def test_json_logs_carry_context_and_never_secrets(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    json_settings = settings.model_copy(update={"bulkjobs_log_format": "json"})
    handler = configure_logging(json_settings)
    try:
        assert isinstance(handler.formatter, JsonFormatter)
        assert any(isinstance(f, RedactingFilter) for f in handler.filters)
        logging.getLogger("test").warning(
            "token %s rejected", "bjt_sup3rs3cr3tvalue", extra={"job_id": "j1", "stage": "s"}
        )
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        logging.getLogger().removeHandler(handler)
    entry = orjson.loads(line)
    assert entry["job_id"] == "j1" and entry["stage"] == "s" and entry["level"] == "WARNING"
    assert "sup3rs3cr3t" not in line


async def test_job_data_a_store_cannot_hold_is_422(api: Api) -> None:
    body = {"job_type": "sample", "job_data": {"items": 1, "huge": -(2**63) - 1}}
    response = await api.client.post("/bulk-jobs", json=body, headers=api.alice)
    assert response.status_code == 422
    assert response.json()["field"] == "job_data"
