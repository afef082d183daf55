"""The distributed worker: a Scheduler that claims work with leases from the shared store, runs
it under one semaphore and reports each result, with a durable outbox for undelivered reports.

Application code registers operations (see registry.py) and enqueues work for them:

    from src.services.worker import enqueue
    item_id = await enqueue("resize", {"image": "a.png", "width": 200})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from src.services.bulk_job_manager import BulkJobManager


async def enqueue(
    operation: str,
    payload: Any = None,
    *,
    item_id: str | None = None,
    manager: BulkJobManager | None = None,
) -> str:
    """Add one work item for `operation`; a chosen `item_id` makes a retried enqueue safe."""
    # Imported here: the store package imports this package's models.
    from src.services.bulk_job_manager import bulk_job_manager
    from src.services.domain.work import NewWorkItem
    from src.services.errors import Conflict

    store = await (manager or bulk_job_manager).store()
    try:
        (created,) = await store.work_enqueue_batch([NewWorkItem(operation, payload, item_id)])
    except Conflict:
        if item_id is None:
            raise
        return item_id  # an earlier attempt already added it
    return created


__all__ = ["enqueue"]
