"""The work-item half of ConvexStore: the `work_*` operations over the workItems Convex
functions. Times travel as epoch milliseconds and come back as epoch seconds."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from src.services.domain.work import (
    MAX_WORK_BATCH,
    NewWorkItem,
    ReportAck,
    WorkItem,
    WorkReport,
)
from src.services.errors import InvalidInput


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def _item(doc: dict[str, Any]) -> WorkItem:
    return WorkItem(
        id=doc["itemId"],
        operation=doc["operation"],
        payload=doc.get("payload"),
        status=doc["status"],
        attempts=doc["attempts"],
        max_attempts=doc["maxAttempts"],
        created_at=doc["createdAt"] / 1000,
        lease_owner=doc.get("leaseOwner"),
        lease_expires_at=_seconds(doc.get("leaseExpiresAt")),
        result=doc.get("result"),
        error=doc.get("error"),
        completed_at=_seconds(doc.get("completedAt")),
    )


def _check_batch(size: int) -> None:
    if size > MAX_WORK_BATCH:
        raise InvalidInput("items", f"at most {MAX_WORK_BATCH} work items per call")


# Claimed items whose report has not been sent yet, by item id: their Convex document ids.
# A worker that loses items (lease expired, never reported) drops the oldest past this size.
MAX_CLAIM_REFS = 10_000


class ClaimRefs:
    """The document id (`ref`) each claim answered, handed back with the item's report so that
    the report reads its document directly instead of through the by_itemId index. Only a
    shortcut: a report without one (from an outbox replayed by another process) is looked up
    by id, and the function checks that the ref names the same item."""

    def __init__(self, size: int = MAX_CLAIM_REFS) -> None:
        self._refs: OrderedDict[str, str] = OrderedDict()
        self._size = size

    def remember(self, docs: list[dict[str, Any]]) -> None:
        for doc in docs:
            if "ref" in doc:
                self._refs[doc["itemId"]] = doc["ref"]
                self._refs.move_to_end(doc["itemId"])
        while len(self._refs) > self._size:
            self._refs.popitem(last=False)

    def take(self, item_id: str) -> str | None:
        return self._refs.pop(item_id, None)

    def forget(self, item_ids: list[str]) -> None:
        for item_id in item_ids:
            self._refs.pop(item_id, None)


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


class ConvexWorkOps:
    """Mixed into ConvexStore, whose `_call` sends one function call."""

    _claim_refs: ClaimRefs

    if TYPE_CHECKING:

        async def _call(
            self, kind: Literal["query", "mutation"], path: str, args: Mapping[str, Any]
        ) -> Any: ...

    async def work_enqueue_batch(self, items: list[NewWorkItem]) -> list[str]:
        _check_batch(len(items))
        if not items:
            return []
        # Ids are chosen here, so an enqueue retried after a lost answer is recognisable.
        docs = [
            _present(
                {
                    "itemId": item.item_id or uuid.uuid4().hex,
                    "operation": item.operation,
                    "payload": item.payload,
                    "maxAttempts": item.max_attempts,
                }
            )
            for item in items
        ]
        ids = await self._call("mutation", "workItems:enqueueBatch", {"items": docs})
        return [str(item_id) for item_id in ids]

    async def work_claim(
        self, owner: str, operations: list[str] | None, limit: int, lease_s: float
    ) -> list[WorkItem]:
        if limit < 1 or operations == []:
            return []
        args = {
            "owner": owner,
            "operations": operations,
            "limit": min(limit, MAX_WORK_BATCH),
            "leaseMs": lease_s * 1000,
        }
        docs = await self._call("mutation", "workItems:claim", args)
        self._claim_refs.remember(docs)
        return [_item(doc) for doc in docs]

    async def work_heartbeat(self, owner: str, item_ids: list[str], lease_s: float) -> list[str]:
        _check_batch(len(item_ids))
        if not item_ids:
            return []
        args = {"owner": owner, "itemIds": item_ids, "leaseMs": lease_s * 1000}
        return [str(lost) for lost in await self._call("mutation", "workItems:heartbeat", args)]

    async def work_report(self, reports: list[WorkReport]) -> list[ReportAck]:
        _check_batch(len(reports))
        if not reports:
            return []
        docs = [
            _present(
                {
                    "itemId": report.item_id,
                    "owner": report.owner,
                    "outcome": report.outcome,
                    "key": report.key,
                    "result": report.result,
                    "error": report.error,
                    "ref": self._claim_refs.take(report.item_id),
                }
            )
            for report in reports
        ]
        acks = await self._call("mutation", "workItems:report", {"reports": docs})
        return [ReportAck(ack["key"], ack["state"]) for ack in acks]

    async def work_release(self, owner: str, item_ids: list[str]) -> None:
        _check_batch(len(item_ids))
        if item_ids:
            self._claim_refs.forget(item_ids)
            args = {"owner": owner, "itemIds": item_ids}
            await self._call("mutation", "workItems:release", args)

    async def work_get(self, item_id: str) -> WorkItem | None:
        doc = await self._call("query", "workItems:get", {"itemId": item_id})
        return None if doc is None else _item(doc)

    async def work_count_by_status(self) -> dict[str, int]:
        counts = await self._call("query", "workItems:countByStatus", {})
        return {str(status): int(count) for status, count in counts.items()}

    async def work_list_leases(self, owner_prefix: str, limit: int = 100) -> list[WorkItem]:
        args = {"ownerPrefix": owner_prefix, "limit": max(1, min(limit, MAX_WORK_BATCH))}
        return [_item(doc) for doc in await self._call("query", "workItems:listLeases", args)]
