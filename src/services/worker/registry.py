"""Operations a worker can run: application handlers for work items, and job sources of other
kinds of work (bulk jobs, container jobs) that the scheduler claims from their own tables.

    from src.services.worker.registry import operations

    @operations.operation("resize", payload=ResizeRequest)
    async def resize(request: ResizeRequest, ctx: WorkContext) -> dict[str, int]: ...

`bulkjobs worker --import my.module` imports such a module before it starts, so the
registrations in it take effect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from pydantic import BaseModel, ValidationError

from src.services.domain.work import Outcome, WorkItem

#: Largest result a work item may report (Convex documents are at most 1 MiB).
MAX_RESULT_BYTES = 256 * 1024
#: Longest error message a failed item keeps.
MAX_ERROR_CHARS = 8 * 1024


@dataclass(frozen=True)
class WorkContext:
    """What a handler gets besides its payload."""

    item: WorkItem
    worker_id: str


class Handler(Protocol):
    def __call__(self, payload: Any, ctx: WorkContext, /) -> Awaitable[Any]: ...


@dataclass(frozen=True)
class Operation:
    name: str
    handler: Handler
    #: Validates and converts the payload; a payload it rejects fails the item.
    payload_model: type[BaseModel] | None = None
    #: Accept a missing or empty payload (None, {}, [] or "").
    allow_empty: bool = False


@dataclass(frozen=True)
class Claim:
    """One claimed item of a JobSource. `run` carries it to its end: it renews the item's
    lease while it works, writes the item's state, and hands the lease back when it stops,
    finished or not (a failure as a failed attempt of the item's attempt budget)."""

    kind: str
    item_id: str
    run: Callable[[], Awaitable[None]]


class JobSource(Protocol):
    """A kind of work the Scheduler claims, kept in its own table: bulk jobs, container
    jobs, and later kinds (webhook deliveries). Adding a kind is one class with these two
    members and one `OperationRegistry.add_source` call.

    `kind` names it: what `bulkjobs worker --operations` selects and what the Scheduler's
    per-kind limits key on. `claim` takes up to `limit` ready items in one store call, under
    leases held by `owner` for `lease_s` seconds, and returns one Claim per item. It returns
    [] rather than wait when nothing is ready (the Scheduler's poll does the waiting), and
    it never hands out an item whose attempts are used up (the store fails those).
    """

    kind: str

    async def claim(self, owner: str, limit: int, lease_s: float) -> list[Claim]: ...


@dataclass(frozen=True)
class Execution:
    outcome: Outcome
    result: Any = None
    error: str | None = None


class OperationRegistry:
    """Handlers by operation name, plus the sources of built-in kinds of work."""

    def __init__(self) -> None:
        self._operations: dict[str, Operation] = {}
        self._sources: dict[str, JobSource] = {}

    def register(
        self,
        name: str,
        handler: Handler,
        payload: type[BaseModel] | None = None,
        allow_empty: bool = False,
    ) -> Operation:
        """Register (or replace) the handler of an operation."""
        if name in self._sources:
            raise ValueError(f"{name!r} is a built-in kind of work")
        operation = Operation(name, handler, payload, allow_empty)
        self._operations[name] = operation
        return operation

    def operation(
        self, name: str, payload: type[BaseModel] | None = None, allow_empty: bool = False
    ) -> Callable[[Handler], Handler]:
        """Decorator form of `register`."""

        def decorate(handler: Handler) -> Handler:
            self.register(name, handler, payload, allow_empty)
            return handler

        return decorate

    def add_source(self, source: JobSource) -> None:
        """Register (or replace) the source of a kind of work."""
        if source.kind in self._operations:
            raise ValueError(f"{source.kind!r} is the name of a registered operation")
        self._sources[source.kind] = source

    def copy(self) -> OperationRegistry:
        twin = OperationRegistry()
        twin._operations = dict(self._operations)
        twin._sources = dict(self._sources)
        return twin

    def get(self, name: str) -> Operation | None:
        return self._operations.get(name)

    def source(self, name: str) -> JobSource | None:
        return self._sources.get(name)

    def names(self) -> list[str]:
        return sorted(self._operations.keys() | self._sources.keys())

    def item_names(self) -> list[str]:
        return sorted(self._operations)

    def source_names(self) -> list[str]:
        return sorted(self._sources)

    async def execute(self, item: WorkItem, ctx: WorkContext) -> Execution:
        """Run one work item; every failure, including a bad item, becomes an Execution."""
        operation = self._operations.get(item.operation)
        if operation is None:
            known = ", ".join(self.item_names()) or "none"
            return Execution(
                "failed", error=f"unknown operation {item.operation!r} (known: {known})"
            )
        try:
            payload = _parse(operation, item.payload)
        except _BadPayload as exc:
            return Execution("failed", error=str(exc))
        try:
            result = await operation.handler(payload, ctx)
        except Exception as exc:  # a handler's failure is the item's outcome, not ours
            return Execution("failed", error=_error_text(exc))
        return _checked_result(result)


def _is_empty(payload: Any) -> bool:
    return payload is None or (isinstance(payload, dict | list | str) and not payload)


class _BadPayload(Exception):
    pass


def _parse(operation: Operation, payload: Any) -> Any:
    """The payload the handler gets; _BadPayload says why there is none."""
    if _is_empty(payload) and not operation.allow_empty:
        raise _BadPayload(f"empty payload: operation {operation.name!r} needs one")
    if operation.payload_model is None:
        return payload
    try:
        return operation.payload_model.model_validate(payload)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'payload'}: {error['msg']}"
            for error in exc.errors()
        )
        raise _BadPayload(f"malformed payload for {operation.name!r}: {details}") from None


def _checked_result(result: Any) -> Execution:
    """The result as plain JSON values (what every store and the outbox can hold: a
    datetime becomes its ISO text, NaN becomes null), or a failure saying why not."""
    try:
        encoded = orjson.dumps(result)
    except TypeError as exc:
        return Execution("failed", error=f"the result is not JSON: {exc}")
    if len(encoded) > MAX_RESULT_BYTES:
        return Execution(
            "failed",
            error=f"the result is {len(encoded)} bytes; at most {MAX_RESULT_BYTES} are kept",
        )
    return Execution("completed", result=orjson.loads(encoded))


def _error_text(exc: Exception) -> str:
    """An exception as a bounded error message (a report must fit in one store write)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_CHARS else f"{text[:MAX_ERROR_CHARS]}... [cut]"


#: The process-wide registry that `bulkjobs worker` runs (application modules add to it).
operations = OperationRegistry()
