"""Every built-in job type records its failed items with their reasons in the stage's
metadata (`failed_items`), the first MAX_FAILED_ITEMS of them, on both stores."""

from __future__ import annotations

from typing import Any

from src.services.runner import FAILED_ITEMS, MAX_FAILED_ITEMS
from tests.integration.conftest import Api


def stage(job: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in job["stages"] if s["name"] == name)
    return found


async def start(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.client.post("/bulk-jobs", json=body, headers=api.admin)
    assert response.status_code == 202, response.text
    return await api.wait_for(response.json()["job_id"], headers=api.admin)


async def test_a_container_batch_records_which_items_failed_and_why(api: Api) -> None:
    data = {
        "image": "local",
        "executor_type": "local",
        "command": 'test "$ITEM" = ok || { echo "no good: $ITEM" >&2; exit 3; }',
        "items": ["ok", "bad", "ok"],
    }
    job = await start(api, {"job_type": "container_batch", "job_data": data})
    assert job["status"] == "completed", job["error_message"]
    processing = stage(job, "content_processing")
    assert (processing["items_completed"], processing["items_failed"]) == (2, 1)
    assert processing["metadata"][FAILED_ITEMS] == [{"item": "bad", "error": "no good: bad"}]


async def test_a_stage_keeps_the_first_failures_only(api: Api) -> None:
    data = {"items": 100, "delay_ms": 0, "fail_every": 2}
    job = await start(api, {"job_type": "sample", "job_data": data})
    fetch = stage(job, "content_fetch")
    assert fetch["items_failed"] == 50
    recorded = fetch["metadata"][FAILED_ITEMS]
    assert len(recorded) == MAX_FAILED_ITEMS
    assert recorded[0] == {
        "item": "item 2",
        "error": "synthetic failure (fail_every=2: every such item fails)",
    }
    assert recorded[-1]["item"] == f"item {2 * MAX_FAILED_ITEMS}"
