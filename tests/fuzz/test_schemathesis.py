"""Schemathesis against the app's own OpenAPI document: generated requests, with an admin
token and a user token, must never produce a 5xx (except 502/503 for a backend that is
genuinely unavailable) and must match the documented responses.

Bounded: a few examples per operation (BULKJOBS_FUZZ_EXAMPLES, default 15) so it stays a
minute or two in `make test`.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from src.app import create_app
from src.config import load_settings
from src.services.auth import create_api_token
from src.services.bulk_job_manager import BulkJobManager
from src.services.store.local import LocalStore

EXAMPLES = int(os.environ.get("BULKJOBS_FUZZ_EXAMPLES", "15"))
ROOT = Path(tempfile.mkdtemp(prefix="bulkjobs-fuzz-"))
SETTINGS = load_settings(
    bulkjobs_db_path=ROOT / "fuzz.db",
    bulk_export_path=ROOT / "exports",
    bulkjobs_embedded_worker=False,
    bulk_rate_limit_max_jobs=1000,
)


async def _tokens() -> tuple[str, str]:
    async with LocalStore(SETTINGS.bulkjobs_db_path) as store:
        admin = await create_api_token(store, "root", is_admin=True)
        user = await create_api_token(store, "alice")
    return admin, user


ADMIN, USER = asyncio.run(_tokens())
APP = create_app(SETTINGS, manager=BulkJobManager(SETTINGS))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors_as_admin(case: schemathesis.Case) -> None:
    response = case.call(headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code < 500 or response.status_code in (502, 503), (
        case.method,
        case.formatted_path,
        response.status_code,
        response.text[:500],
    )
    case.validate_response(response, checks=[not_a_server_error])


@schema.parametrize()
@settings(
    max_examples=max(2, EXAMPLES // 2),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors_as_user(case: schemathesis.Case) -> None:
    response = case.call(headers={"Authorization": f"Bearer {USER}"})
    assert response.status_code < 500 or response.status_code in (502, 503), (
        case.method,
        case.formatted_path,
        response.status_code,
        response.text[:500],
    )
