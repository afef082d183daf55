"""Contract suite for shortened ids and unlimited creates, on LocalStore and ConvexStore:
`get_job_ids_by_prefix`, `container_get_ids_by_prefix`, and `create` without a rate limit."""

from __future__ import annotations

from typing import Any

from src.services.domain import RateLimit
from src.services.domain.containers import ContainerJob
from src.services.store.base import Store
from tests.contract.test_store import LIMIT, new_job

IDS = ["ab12-one", "ab12-two", "ab13", "ab", "b", "a*b", "a[x]", "a?c", "ab12%", "AB12"]


async def create_jobs(store: Store) -> None:
    for job_id in IDS:
        user = "other" if job_id == "ab12-two" else "u1"
        await store.create(new_job(user=user, job_id=job_id), LIMIT)


async def test_job_ids_by_prefix_in_id_order(store: Store) -> None:
    await create_jobs(store)
    assert await store.get_job_ids_by_prefix("ab12") == ["ab12%", "ab12-one", "ab12-two"]
    assert await store.get_job_ids_by_prefix("ab12-o") == ["ab12-one"]
    assert await store.get_job_ids_by_prefix("ab12-one") == ["ab12-one"]
    assert await store.get_job_ids_by_prefix("zz") == []
    assert await store.get_job_ids_by_prefix("ab1", limit=2) == ["ab12%", "ab12-one"]


async def test_job_ids_by_prefix_only_of_the_user(store: Store) -> None:
    await create_jobs(store)
    assert await store.get_job_ids_by_prefix("ab12", user_id="u1") == ["ab12%", "ab12-one"]
    assert await store.get_job_ids_by_prefix("ab12-t", user_id="u1") == []
    assert await store.get_job_ids_by_prefix("ab12-t", user_id="other") == ["ab12-two"]


async def test_job_id_prefixes_match_literally(store: Store) -> None:
    """Wildcards of the store's own matching (GLOB, LIKE) are plain characters here, and
    case counts."""
    await create_jobs(store)
    assert await store.get_job_ids_by_prefix("a*") == ["a*b"]
    assert await store.get_job_ids_by_prefix("a[") == ["a[x]"]
    assert await store.get_job_ids_by_prefix("a?") == ["a?c"]
    assert await store.get_job_ids_by_prefix("ab12%") == ["ab12%"]
    assert await store.get_job_ids_by_prefix("AB") == ["AB12"]


def container(job_id: str, owner: str) -> ContainerJob:
    values: dict[str, Any] = {"id": job_id, "docker_image": "busybox", "created_by": owner}
    return ContainerJob.model_validate(values)


async def test_container_ids_by_prefix(store: Store) -> None:
    jobs = [container("c1-a", "u1"), container("c1-b", "u2"), container("c2", "u1")]
    await store.container_create_batch(jobs)  # type: ignore[attr-defined]  # both stores have it
    lookup = store.container_get_ids_by_prefix  # type: ignore[attr-defined]
    assert await lookup("c1") == ["c1-a", "c1-b"]
    assert await lookup("c1", created_by="u2") == ["c1-b"]
    assert await lookup("c", created_by="u1", limit=1) == ["c1-a"]
    assert await lookup("c3") == []


async def test_create_without_a_limit_is_never_refused(store: Store) -> None:
    limit = RateLimit(max_jobs=1, window_s=3600)
    await store.create(new_job(user="admin"), limit)
    for _ in range(3):
        await store.create(new_job(user="admin"), None)
    jobs = await store.get_user_jobs("admin", limit=10)
    assert len(jobs) == 4
