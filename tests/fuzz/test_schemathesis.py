"""Schemathesis against the app's own OpenAPI document: generated requests, with an admin
token and a user token, must never produce a 5xx (except 502/503 for a backend that is
genuinely unavailable) and must match the documented responses.

JSON bodies are also sent with one value made hostile -- NaN, Infinity, a number past a
double, a lone surrogate -- which JSON libraries write but the API must refuse: those are
a 422, whatever the operation.

Bounded: a few examples per operation (BULKJOBS_FUZZ_EXAMPLES, default 15) so it stays a
minute or two in `make test`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
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

#: JSON text for values Python's json module writes but the API must refuse.
HOSTILE = ["NaN", "Infinity", "-Infinity", "1e999", '"\\ud800"', '"a\\udfffb"']
MARK = "@@hostile@@"
Path_ = tuple[str | int, ...]


def leaves(value: Any, path: Path_ = ()) -> list[Path_]:
    """Paths to the numbers and strings of a JSON value."""
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in leaves(item, (*path, key))]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in leaves(item, (*path, index))]
    return [path] if isinstance(value, str | int | float) and not isinstance(value, bool) else []


def poisoned(body: Any, path: Path_, token: str) -> bytes:
    """The body as JSON text with the value at `path` replaced by `token`."""
    if not path:
        return token.encode()
    changed = copy.deepcopy(body)
    parent = changed
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = MARK
    return json.dumps(changed).replace(json.dumps(MARK), token).encode()


@schema.hook("flatmap_body")
def hostile_values(context: Any, body: Any) -> st.SearchStrategy[Any]:
    found = leaves(body)
    if not found:
        return st.just(body)
    bad = st.builds(poisoned, st.just(body), st.sampled_from(found), st.sampled_from(HOSTILE))
    return st.one_of(st.just(body), bad)


def check_hostile(case: schemathesis.Case, status: int) -> None:
    if isinstance(case.body, bytes):  # made hostile above
        assert status == 422, (case.method, case.formatted_path, status, case.body[:200])


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors_as_admin(case: schemathesis.Case) -> None:
    response = case.call(headers={"Authorization": f"Bearer {ADMIN}"})
    check_hostile(case, response.status_code)
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
    check_hostile(case, response.status_code)
    assert response.status_code < 500 or response.status_code in (502, 503), (
        case.method,
        case.formatted_path,
        response.status_code,
        response.text[:500],
    )
