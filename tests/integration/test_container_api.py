"""The container HTTP API: jobs (owner or admin), hosts and templates (admin), and a
container_batch bulk job from start to downloaded export -- on both stores."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import zipfile
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import Api


async def poll(
    api: Api,
    path: str,
    done: Callable[[Any], bool],
    headers: dict[str, str],
    params: dict[str, str] | None = None,
    tries: int = 500,
) -> Any:
    """GET `path` every 20 ms until `done(body)`; returns the last body either way."""
    body: Any = None
    for _ in range(tries):
        body = (await api.client.get(path, params=params, headers=headers)).json()
        if done(body):
            break
        await asyncio.sleep(0.02)
    return body


async def wait_container(api: Api, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    finished = ("completed", "failed", "timeout", "cancelled")
    job: dict[str, Any] = await poll(
        api, f"/container-jobs/{job_id}", lambda job: job["status"] in finished, headers, tries=1500
    )
    if job["status"] not in finished:
        raise AssertionError(f"container job did not finish: {job}")
    return job


async def test_admin_runs_a_local_job_and_reads_its_logs(api: Api) -> None:
    response = await api.client.post(
        "/container-jobs",
        json={
            "image": "local",
            "command": 'echo "hi $WHO"; echo bad >&2; exit 2',
            "executor_type": "local",
            "environment_vars": {"WHO": "there"},
        },
        headers=api.admin,
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "pending" and created["host_id"] == "local"
    assert "stdout_log" not in created
    job = await wait_container(api, created["id"], api.admin)
    assert (job["status"], job["exit_code"]) == ("failed", 2)
    logs = (await api.client.get(f"/container-jobs/{job['id']}/logs", headers=api.admin)).json()
    assert logs == {"stdout": "hi there\n", "stderr": "bad\n", "status": "failed"}


async def test_non_admin_cannot_use_the_unisolated_local_executor(api: Api) -> None:
    response = await api.client.post(
        "/container-jobs", json={"image": "local", "command": "id"}, headers=api.alice
    )
    assert response.status_code == 403
    assert "isolation" in response.json()["detail"]


async def test_owners_see_their_jobs_only(api: Api) -> None:
    host = await api.client.post(
        "/hosts", json={"name": "sim", "executor_type": "mock"}, headers=api.admin
    )
    assert host.status_code == 201, host.text
    response = await api.client.post(
        "/container-jobs",
        json={"image": "img", "command": "echo ok", "host": "sim"},
        headers=api.alice,
    )
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    mine = (await api.client.get("/container-jobs", headers=api.alice)).json()
    assert [job["id"] for job in mine] == [job_id]
    assert (await api.client.get("/container-jobs", headers=api.bob)).json() == []
    assert (await api.client.get(f"/container-jobs/{job_id}", headers=api.bob)).status_code == 404
    everyone = (await api.client.get("/container-jobs", headers=api.admin)).json()
    assert job_id in [job["id"] for job in everyone]
    assert (await wait_container(api, job_id, api.alice))["status"] == "completed"
    filtered = await api.client.get(
        "/container-jobs", params={"status": "completed"}, headers=api.alice
    )
    assert [job["id"] for job in filtered.json()] == [job_id]


async def test_cancel_over_http_stops_the_job(api: Api) -> None:
    response = await api.client.post(
        "/container-jobs",
        json={"image": "local", "command": "sleep 30", "executor_type": "local"},
        headers=api.admin,
    )
    job_id = response.json()["id"]
    await poll(api, f"/container-jobs/{job_id}", lambda job: job["status"] == "running", api.admin)
    cancel = await api.client.post(f"/container-jobs/{job_id}/cancel", headers=api.admin)
    assert cancel.json() == {"job_id": job_id, "cancelled": True, "status": "cancelled"}
    again = await api.client.post(f"/container-jobs/{job_id}/cancel", headers=api.admin)
    assert again.json()["cancelled"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image": ""}, "image"),
        ({"image": "x", "cpu_limit": 64}, "cpu_limit"),
        ({"image": "x", "memory_limit": 0}, "memory_limit"),
        ({"image": "x", "environment_vars": {"1X": "y"}}, "environment_vars"),
        ({"image": "x", "executor_type": "nope"}, "executor_type"),
        ({"image": "x", "surprise": 1}, "surprise"),
        ({"image": "x", "exit_retry": {"retry_on_exit_codes": [0]}}, "exit_retry"),
        ({"image": "x", "exit_retry": {"max_retries": 2}}, "exit_retry"),
    ],
)
async def test_bad_container_jobs_are_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    response = await api.client.post("/container-jobs", json=body, headers=api.admin)
    assert response.status_code == 422
    assert field in json.dumps(response.json())


async def test_a_job_that_exits_with_a_listed_code_runs_again_and_shows_each_run(
    api: Api,
) -> None:
    body = {
        "image": "local",
        "command": 'echo "try $ITEM" >&2; exit 7',
        "executor_type": "local",
        "environment_vars": {"ITEM": "x"},
        "exit_retry": {"retry_on_exit_codes": [7], "max_retries": 1, "backoff_s": 0.01},
    }
    response = await api.client.post("/container-jobs", json=body, headers=api.admin)
    assert response.status_code == 201, response.text
    assert response.json()["exit_retry"] == body["exit_retry"]
    job = await wait_container(api, response.json()["id"], api.admin)
    assert (job["status"], job["exit_code"]) == ("failed", 7)
    runs = job["exit_attempts"]
    assert [(run["attempt"], run["status"], run["exit_code"]) for run in runs] == [
        (1, "failed", 7),
        (2, "failed", 7),
    ]
    assert [run["error"] for run in runs] == ["try x", "try x"]
    assert runs[0]["retry_in_s"] > 0 and runs[1]["retry_in_s"] is None
    assert all(run["finished_at"] for run in runs)


ADMIN_ROUTES = [
    ("GET", "/hosts", None),
    ("POST", "/hosts", {"name": "h", "executor_type": "mock"}),
    ("GET", "/hosts/local", None),
    ("PATCH", "/hosts/local", {"weight": 5}),
    ("POST", "/hosts/local/health-check", None),
    ("GET", "/templates", None),
    ("POST", "/templates", {"name": "t"}),
    ("GET", "/templates/t", None),
    ("PATCH", "/templates/t", {"description": "d"}),
    ("GET", "/admin/tokens", None),
    ("DELETE", "/admin/tokens/000000000000", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
async def test_hosts_and_templates_are_admin_only(
    api: Api, method: str, path: str, body: dict[str, Any] | None
) -> None:
    for headers in (api.alice, api.bob):
        response = await api.client.request(method, path, json=body, headers=headers)
        assert response.status_code == 403, (method, path)


async def test_hosts_hide_secrets_and_report_health(api: Api) -> None:
    response = await api.client.post(
        "/hosts",
        json={
            "name": "cloud",
            "executor_type": "mock",
            "executor_config": {"region": "eu", "secret_key": "s3cr3t-value", "healthy": False},
        },
        headers=api.admin,
    )
    assert response.status_code == 201
    host = response.json()
    assert host["executor_config"] == {"region": "eu", "secret_key": "***", "healthy": False}
    assert "s3cr3t-value" not in json.dumps(
        (await api.client.get("/hosts", headers=api.admin)).json()
    )
    for failures in (1, 2, 3):
        check = await api.client.post(f"/hosts/{host['id']}/health-check", headers=api.admin)
        assert check.json()["healthy"] is False
        assert check.json()["health_check_failures"] == failures
    after = (await api.client.get(f"/hosts/{host['id']}", headers=api.admin)).json()
    assert after["is_available"] is False
    local = await api.client.post("/hosts/local/health-check", headers=api.admin)
    assert local.json()["healthy"] is True
    patched = await api.client.patch(
        f"/hosts/{host['id']}", json={"max_concurrent_jobs": 0}, headers=api.admin
    )
    assert patched.status_code == 422


async def test_templates_reject_a_malformed_line_by_number(api: Api) -> None:
    bad = await api.client.post(
        "/templates",
        json={"name": "env", "environment_variables_text": "A=1\n# ok\nnot a pair\n"},
        headers=api.admin,
    )
    assert bad.status_code == 422
    assert "line 3" in bad.json()["detail"]
    good = await api.client.post(
        "/templates",
        json={"name": "env", "environment_variables_text": "A=1\nB=c=d\n"},
        headers=api.admin,
    )
    assert good.status_code == 201
    duplicate = await api.client.post("/templates", json={"name": "env"}, headers=api.admin)
    assert duplicate.status_code == 409


async def run_batch(api: Api, job_data: dict[str, Any], timeout_s: float = 90) -> dict[str, Any]:
    response = await api.client.post(
        "/bulk-jobs",
        json={"job_type": "container_batch", "job_data": job_data},
        headers=api.admin,
    )
    assert response.status_code == 202, response.text
    job = await api.wait_for(response.json()["job_id"], headers=api.admin, timeout_s=timeout_s)
    assert job["status"] == "completed", job
    return job


async def download(api: Api, job: dict[str, Any]) -> bytes:
    [export] = (
        await api.client.get(f"/bulk-jobs/{job['job_id']}/exports", headers=api.admin)
    ).json()
    response = await api.client.get(
        f"/bulk-jobs/{job['job_id']}/export/{export['export_id']}", headers=api.admin
    )
    assert response.status_code == 200
    return response.content


async def test_container_batch_of_50_local_items_to_a_csv_export(api: Api) -> None:
    items = [f"item-{i}" for i in range(50)]
    items[17] = "boom"  # fails on purpose
    job = await run_batch(
        api,
        {
            "image": "local",
            "command": 'if [ "$ITEM" = boom ]; then echo "no good" >&2; exit 4; fi;'
            ' echo "{\\"item\\": \\"$ITEM\\", \\"index\\": {index}}"',
            "items": items,
            "executor_type": "local",
            "concurrency": 8,
        },
    )
    processing = job["stages"][1]
    assert (
        processing["items_total"],
        processing["items_completed"],
        processing["items_failed"],
    ) == (50, 49, 1)
    rows = list(csv.DictReader(io.StringIO((await download(api, job)).decode())))
    assert len(rows) == 50
    failed = [row for row in rows if row["status"] == "failed"]
    assert [(row["item"], row["exit_code"]) for row in failed] == [("boom", "4")]
    assert "no good" in failed[0]["error"]
    ok = rows[3]
    assert (
        ok["status"] == "completed" and ok["output.item"] == "item-3" and ok["output.index"] == "3"
    )
    containers = (
        await api.client.get(
            "/container-jobs",
            params={"bulk_job_id": job["job_id"], "limit": 100},
            headers=api.admin,
        )
    ).json()
    assert len(containers) == 50
    host = (await api.client.get("/hosts/local", headers=api.admin)).json()
    assert host["current_job_count"] == 0


async def test_container_batch_zip_export_holds_logs(api: Api) -> None:
    job = await run_batch(
        api,
        {
            "image": "local",
            "command": "echo out-{index}; echo err-{index} >&2",
            "items": ["a", "b", "c"],
            "executor_type": "local",
            "export_format": "zip",
        },
    )
    archive = zipfile.ZipFile(io.BytesIO(await download(api, job)))
    assert set(archive.namelist()) >= {"results.json", "logs/0.stdout.txt", "logs/2.stderr.txt"}
    assert archive.read("logs/1.stdout.txt") == b"out-1\n"
    assert len(json.loads(archive.read("results.json"))) == 3


async def test_cancelling_a_container_batch_cancels_its_containers(api: Api) -> None:
    response = await api.client.post(
        "/bulk-jobs",
        json={
            "job_type": "container_batch",
            "job_data": {
                "image": "local",
                "command": "sleep 30",
                "items": [1, 2, 3, 4],
                "executor_type": "local",
                "concurrency": 2,
            },
        },
        headers=api.admin,
    )
    job_id = response.json()["job_id"]
    params = {"bulk_job_id": job_id, "status": "running"}
    running = await poll(api, "/container-jobs", lambda jobs: len(jobs) == 2, api.admin, params)
    assert len(running) == 2
    await api.client.post(f"/bulk-jobs/{job_id}/cancel", headers=api.admin)
    jobs = await poll(
        api,
        "/container-jobs",
        lambda jobs: bool(jobs) and all(job["status"] == "cancelled" for job in jobs),
        api.admin,
        {"bulk_job_id": job_id},
    )
    assert [job["status"] for job in jobs] == ["cancelled", "cancelled"]
    host = (await api.client.get("/hosts/local", headers=api.admin)).json()
    assert host["current_job_count"] == 0


async def test_non_admin_container_batch_needs_an_isolated_host(api: Api) -> None:
    body = {
        "job_type": "container_batch",
        "job_data": {"image": "local", "command": "true", "items": [1]},
    }
    response = await api.client.post("/bulk-jobs", json=body, headers=api.alice)
    assert response.status_code == 403


async def test_container_batch_of_10_docker_items(api: Api, docker_url: str) -> None:
    host = await api.client.post(
        "/hosts",
        json={
            "name": "engine",
            "executor_type": "docker",
            "connection_string": docker_url,
            "auto_pull_images": False,
            "max_concurrent_jobs": 4,
        },
        headers=api.admin,
    )
    assert host.status_code == 201, host.text
    job = await run_batch(
        api,
        {
            "image": "bulkjobs-busybox:test",
            "command": 'test "$ITEM" != 7 || exit 9; echo "{\\"square\\": $((ITEM * ITEM))}"',
            "items": list(range(10)),
            "host": "engine",
            "concurrency": 4,
            "memory_limit": 64,
            "export_format": "json",
        },
        timeout_s=120,
    )
    rows = json.loads(await download(api, job))
    assert [row["status"] for row in rows].count("failed") == 1
    assert rows[7]["exit_code"] == 9
    assert rows[3]["output"] == {"square": 9}


async def test_non_admins_cannot_reach_past_isolation(api: Api) -> None:
    await api.client.post(
        "/hosts", json={"name": "sim", "executor_type": "mock"}, headers=api.admin
    )
    await api.client.post(
        "/templates",
        json={"name": "prod", "environment_variables_text": "DB_PASSWORD=x\n"},
        headers=api.admin,
    )
    attempts = [
        {"image": "img", "host": "sim", "network_configuration": [{"network_name": "host"}]},
        {"image": "img", "host": "sim", "network_configuration": [{"network_name": "container:x"}]},
        {"image": "img", "host": "sim", "network_configuration": [{"network_name": "backend"}]},
        {"image": "img", "host": "sim", "environment_template": "prod"},
    ]
    for body in attempts:
        response = await api.client.post("/container-jobs", json=body, headers=api.alice)
        assert response.status_code == 403, (body, response.text)
    allowed = await api.client.post(
        "/container-jobs",
        json={"image": "img", "host": "sim", "network_configuration": [{"network_name": "none"}]},
        headers=api.alice,
    )
    assert allowed.status_code == 201


async def test_non_admins_may_only_cancel_in_bulk(api: Api) -> None:
    await api.client.post(
        "/hosts", json={"name": "sim", "executor_type": "mock"}, headers=api.admin
    )
    created = await api.client.post(
        "/container-jobs",
        json={"image": "img", "command": "sleep 30", "host": "sim"},
        headers=api.alice,
    )
    job_id = created.json()["id"]
    running = await api.client.post(
        "/container-jobs/bulk/status",
        json={"job_ids": [job_id], "status": "running"},
        headers=api.alice,
    )
    assert running.status_code == 403
    cancelled = await api.client.post(
        "/container-jobs/bulk/status",
        json={"job_ids": [job_id], "status": "cancelled"},
        headers=api.alice,
    )
    assert cancelled.status_code == 200 and cancelled.json()["count"] == 1


async def test_patching_a_redacted_config_keeps_the_secret(api: Api) -> None:
    created = await api.client.post(
        "/hosts",
        json={
            "name": "cloud",
            "executor_type": "mock",
            "executor_config": {"region": "eu", "secret_key": "s3cr3t"},
        },
        headers=api.admin,
    )
    host = created.json()
    config = host["executor_config"] | {"region": "us"}  # as read: secret_key is ***
    patched = await api.client.patch(
        f"/hosts/{host['id']}", json={"executor_config": config}, headers=api.admin
    )
    assert patched.json()["executor_config"] == {"region": "us", "secret_key": "***"}
    store = await api.app.state.containers.store()
    stored = await store.host_get(host["id"])
    assert stored.executor_config["secret_key"] == "s3cr3t"


async def test_a_non_admin_batch_never_lands_on_an_unisolated_host(api: Api) -> None:
    sandbox = await api.client.post(
        "/hosts",
        json={
            "name": "sandbox",
            "executor_type": "local",
            "weight": 1,
            "executor_config": {"allow_untrusted_jobs": True},
        },
        headers=api.admin,
    )
    response = await api.client.post(
        "/bulk-jobs",
        json={
            "job_type": "container_batch",
            "job_data": {
                "image": "local",
                "command": "true",
                "items": [1, 2, 3],
                "isolated_only": False,
            },
        },
        headers=api.alice,
    )
    assert response.status_code == 202, response.text
    job = await api.wait_for(response.json()["job_id"])
    assert job["status"] == "completed", job
    containers = (
        await api.client.get(
            "/container-jobs", params={"bulk_job_id": job["job_id"]}, headers=api.alice
        )
    ).json()
    assert {c["host_id"] for c in containers} == {sandbox.json()["id"]}
