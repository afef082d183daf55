"""Values of the work-item store operations (`workItems:*` in Convex, `work_*` in Python).

A work item is one call of an operation that application code registered: it is enqueued
`pending`, claimed `running` under a lease (owner + expiry), and reported once as `completed`
or `failed`. Times are seconds since the epoch on the store's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from src.services.domain import DEFAULT_MAX_ATTEMPTS

WorkStatus = Literal["pending", "running", "completed", "failed"]
Outcome = Literal["completed", "failed"]
#: applied: this report finished the item; duplicate: this same report (key) was applied
#: before; stale: the item was already finished by another report; missing: no such item.
AckState = Literal["applied", "duplicate", "stale", "missing"]

WORK_STATUSES: tuple[WorkStatus, ...] = ("pending", "running", "completed", "failed")
#: Most items one claim, report, heartbeat or enqueue call handles.
MAX_WORK_BATCH = 200


@dataclass(frozen=True, slots=True)
class NewWorkItem:
    operation: str
    payload: Any = None
    #: Chosen by the caller to make an enqueue retry-safe; random when None.
    item_id: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


@dataclass(frozen=True, slots=True)
class WorkItem:
    id: str
    operation: str
    payload: Any
    status: WorkStatus
    attempts: int
    max_attempts: int
    created_at: float
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    result: Any = None
    error: str | None = None
    completed_at: float | None = None


@dataclass(frozen=True, slots=True)
class WorkReport:
    """The outcome of one execution; `key` makes delivering it twice apply it once."""

    item_id: str
    owner: str
    outcome: Outcome
    key: str
    result: Any = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "owner": self.owner,
            "outcome": self.outcome,
            "key": self.key,
            "result": self.result,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkReport:
        """Raises KeyError or ValueError when `data` is not a report."""
        outcome = data["outcome"]
        if outcome not in ("completed", "failed"):
            raise ValueError(f"unknown outcome {outcome!r}")
        strings = (data["item_id"], data["owner"], data["key"])
        if not all(isinstance(value, str) and value for value in strings):
            raise ValueError("item_id, owner and key must be non-empty strings")
        error = data.get("error")
        return cls(
            item_id=data["item_id"],
            owner=data["owner"],
            outcome=outcome,
            key=data["key"],
            result=data.get("result"),
            error=None if error is None else str(error),
        )


@dataclass(frozen=True, slots=True)
class ReportAck:
    key: str
    state: AckState
