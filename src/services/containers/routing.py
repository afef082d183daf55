"""Routing: which host runs a job, and which hosts a caller may use at all.

A host qualifies when it may run the job at all (`isolation_refusal`: a non-admin's job only
on a host that isolates it), is active, healthy (not marked unhealthy by failed health
probes and launches, see `ExecutorHost.healthy`), under max_concurrent_jobs and compatible
with the job (can_use_executor, the job's limits within the host's maxima). Among those the
highest weight wins, then the lowest estimated cost, then the lightest load. The decision
says why, in `routing_reason`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from src.services.domain.containers import (
    ContainerJob,
    ContainerJobSpec,
    EnvironmentVariableTemplate,
    ExecutorHost,
    check_host_limits,
    isolation_refusal,
)
from src.services.errors import InvalidInput, PermissionDenied


@dataclass(frozen=True)
class RoutingDecision:
    host: ExecutorHost
    reason: str
    estimated_cost: float | None


def estimate_cost(job: ContainerJob, host: ExecutorHost) -> float | None:
    """An upper bound: the per-job price plus the hourly price for the whole timeout."""
    if host.cost_per_job is None and host.cost_per_hour is None:
        return None
    hourly = (host.cost_per_hour or 0.0) * job.timeout_seconds / 3600
    return round((host.cost_per_job or 0.0) + hourly, 6)


def why_not(
    job: ContainerJob, host: ExecutorHost, template: EnvironmentVariableTemplate | None
) -> str | None:
    """Why a host cannot take the job now, or None when it can."""
    refusal = isolation_refusal(host, job.untrusted)
    if refusal is not None:
        return refusal
    if not host.is_active:
        return "inactive"
    if not host.is_healthy():
        return f"unhealthy ({host.health_check_failures} failed health checks)"
    if host.current_job_count >= host.max_concurrent_jobs:
        return f"full ({host.current_job_count}/{host.max_concurrent_jobs})"
    if not job.can_use_executor(host.executor_type, template):
        return f"incompatible executor {host.executor_type}"
    max_memory, max_cpu = host.max_memory_mb(), host.max_cpu()
    if max_memory and job.memory_limit and job.memory_limit > max_memory:
        return f"memory_limit above its {max_memory} MB"
    if max_cpu and job.cpu_limit and job.cpu_limit > max_cpu:
        return f"cpu_limit above its {max_cpu} CPUs"
    return None


def choose_host(
    job: ContainerJob,
    hosts: list[ExecutorHost],
    template: EnvironmentVariableTemplate | None = None,
) -> RoutingDecision:
    """The best host for the job; InvalidInput naming each host's problem when none fits."""
    skipped: dict[str, str] = {}
    candidates: list[ExecutorHost] = []
    for host in hosts:
        problem = why_not(job, host, template)
        if problem is None:
            candidates.append(host)
        else:
            skipped[host.name] = problem
    if not candidates:
        detail = "; ".join(f"{name}: {why}" for name, why in skipped.items()) or "no hosts"
        raise InvalidInput("host", f"no executor host can run this job ({detail})")
    best = min(candidates, key=lambda host: _rank(job, host))
    cost = estimate_cost(job, best)
    reason = (
        f"{best.name}: weight {best.weight}"
        + (f", estimated cost {cost}" if cost is not None else "")
        + f", load {best.current_job_count}/{best.max_concurrent_jobs}"
        + f"; {len(candidates)} of {len(hosts)} hosts eligible"
    )
    return RoutingDecision(best, reason, cost)


def _rank(job: ContainerJob, host: ExecutorHost) -> tuple[float, float, float, str]:
    cost = estimate_cost(job, host)
    load = host.current_job_count / host.max_concurrent_jobs
    return (-host.weight, cost if cost is not None else 0.0, load, host.name)


def route(
    job: ContainerJob,
    spec: ContainerJobSpec,
    hosts: list[ExecutorHost],
    template: EnvironmentVariableTemplate | None,
    pinned: bool,
) -> ContainerJob:
    if pinned:
        host = hosts[0]
        check_host_limits(spec, host)
        problem = why_not(job, host, template)
        # A full host still takes queued work; anything else is a real refusal.
        if problem is not None and not problem.startswith("full"):
            raise InvalidInput("host", f"host {host.name} cannot run this job: {problem}")
        reason, cost = f"{host.name}: chosen by the caller", estimate_cost(job, host)
    else:
        decision = choose_host(job, not_full(hosts), template)
        host, reason, cost = decision.host, decision.reason, decision.estimated_cost
    job.host_id, job.executor_type = host.id, host.executor_type
    job.routing_reason, job.estimated_cost = reason, cost
    return job


def isolated_only(hosts: list[ExecutorHost], pinned: bool) -> list[ExecutorHost]:
    """The hosts a non-admin's job may use; PermissionDenied when there is none."""
    allowed = [host for host in hosts if isolation_refusal(host, untrusted=True) is None]
    if not allowed:
        where = f"host {hosts[0].name}" if pinned else "the available hosts"
        raise PermissionDenied(
            f"{where} run commands without isolation (local executor); only admins may use"
            " them -- choose a docker or cloud host"
        )
    return allowed


#: Docker network modes that share another namespace: never for an untrusted caller.
SHARED_NETWORK_MODES = ("host",)


def check_networks(networks: list[dict[str, Any]], hosts: list[ExecutorHost]) -> None:
    """An untrusted caller's job may join only networks every candidate host lists in
    executor_config.allowed_networks: `host` or `container:<id>` would reach past the
    container's isolation."""
    for net in networks:
        name = str(net.get("network_name") or "")
        if not name or name == "none":
            continue
        allowed = all(name in host.executor_config.get("allowed_networks", []) for host in hosts)
        if name in SHARED_NETWORK_MODES or name.startswith("container:") or not allowed:
            raise PermissionDenied(
                f"network {name!r} is not in the host's allowed_networks; only admins may"
                " choose other networks"
            )


def not_full(hosts: list[ExecutorHost]) -> list[ExecutorHost]:
    """Routing ranks hosts by their slots, but a pending job only needs a slot when it
    launches; when every host is busy, queue on the best one rather than refuse."""
    if any(host.current_job_count < host.max_concurrent_jobs for host in hosts):
        return hosts
    return [host.model_copy(update={"current_job_count": 0}) for host in hosts]
