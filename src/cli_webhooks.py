"""`bulkjobs webhooks`: register, list, delete and re-enable webhook endpoints, and show
their deliveries, on the configured store (as the routes do, for any user: the command line
is the operator's)."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer
from rich import box
from rich.table import Column, Table

from src.cli_common import out, with_manager
from src.services.bulk_job_manager import BulkJobManager
from src.services.domain.webhooks import (
    EVENT_TYPES,
    MAX_DELIVERY_PAGE,
    DeliveryStatus,
    WebhookEndpoint,
)
from src.services.webhooks import WebhookService

T = TypeVar("T")

webhooks_app = typer.Typer(help="Signed webhook endpoints.", no_args_is_help=True)


def _with_service(fn: Callable[[WebhookService], Awaitable[T]]) -> T:
    async def run(manager: BulkJobManager) -> T:
        return await fn(WebhookService(await manager.store()))

    return with_manager(run)


def _when(epoch_s: float | None) -> str:
    return "" if epoch_s is None else f"{datetime.fromtimestamp(epoch_s, UTC):%Y-%m-%d %H:%M:%S}"


def _table(whole: tuple[str, ...], folded: tuple[str, ...]) -> Table:
    """Ids (what the other commands take) and short values whole; long ones fold."""
    return Table(
        *(Column(name, no_wrap=True) for name in whole),
        *(Column(name, overflow="fold") for name in folded),
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )


@webhooks_app.command("create")
def create(
    user: Annotated[str, typer.Option(help="Whose jobs' events it receives")],
    url: Annotated[str, typer.Option(help="The receiver (http or https)")],
    events: Annotated[
        list[str],
        typer.Option("--event", help=f"An event type (repeatable): {', '.join(EVENT_TYPES)}"),
    ],
    description: Annotated[str, typer.Option(help="A label")] = "",
    all_users: Annotated[
        bool, typer.Option("--all-users", help="Every user's events (as an admin's endpoint)")
    ] = False,
) -> None:
    """Register an endpoint; prints its id, then its signing secret (shown once) alone on
    the last line."""
    endpoint = _with_service(
        lambda service: service.create(
            user, url, events, description, all_users=all_users, is_admin=all_users
        )
    )
    out.print(f"endpoint {endpoint.id} for {', '.join(endpoint.events)}", highlight=False)
    sys.stdout.flush()
    sys.stdout.write(endpoint.secret + "\n")


@webhooks_app.command("list")
def list_endpoints(
    user: Annotated[str | None, typer.Option(help="Whose endpoints (default: everyone's)")] = None,
) -> None:
    """List endpoints with their status (and why one was disabled)."""
    endpoints: list[WebhookEndpoint] = _with_service(lambda service: service.list_endpoints(user))
    table = _table(("id", "user"), ("url", "events", "status"))
    for endpoint in endpoints:
        status: str = endpoint.status
        if endpoint.disabled_reason:
            status += f": {endpoint.disabled_reason}"
        elif endpoint.failing_since is not None:
            status += f" (failing since {_when(endpoint.failing_since)})"
        owner = "all users" if endpoint.all_users else endpoint.user_id
        table.add_row(endpoint.id, owner, endpoint.url, ",".join(endpoint.events), status)
    out.print(table)


@webhooks_app.command("delete")
def delete(endpoint_id: Annotated[str, typer.Argument(help="The endpoint id")]) -> None:
    """Remove an endpoint and its deliveries."""
    _with_service(lambda service: service.delete(endpoint_id, None))
    out.print(f"deleted endpoint {endpoint_id}", highlight=False)


@webhooks_app.command("enable")
def enable(endpoint_id: Annotated[str, typer.Argument(help="The endpoint id")]) -> None:
    """Re-enable a disabled endpoint (its failure record is cleared)."""
    _with_service(lambda service: service.enable(endpoint_id, None))
    out.print(f"enabled endpoint {endpoint_id}", highlight=False)


@webhooks_app.command("deliveries")
def deliveries(
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint id")],
    status: Annotated[DeliveryStatus | None, typer.Option(help="Only this status")] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_DELIVERY_PAGE)] = 20,
) -> None:
    """An endpoint's deliveries, newest first: attempts and the last answer or error."""
    found = _with_service(lambda service: service.deliveries(endpoint_id, None, status, limit))
    table = _table(("webhook-id", "event", "status", "tries"), ("last answer",))
    for delivery in found:
        answer = delivery.last_error or (
            f"HTTP {delivery.last_status_code}" if delivery.last_status_code else ""
        )
        table.add_row(
            delivery.id, delivery.event_type, delivery.status, str(delivery.attempts), answer
        )
    out.print(table)
