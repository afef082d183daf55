"""Routing: which host runs a job.

A host qualifies when it is active, healthy (fewer than 3 consecutive failed health checks),
under max_concurrent_jobs and compatible with the job (can_use_executor, the job's limits
within the host's maxima). Among those the highest weight wins, then the lowest estimated
cost, then the lightest load. The decision says why, in `routing_reason`.
"""

from __future__ import annotations

from dataclasses import dataclass

from src.services.containers.models import (
    MAX_HEALTH_FAILURES,
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
)
from src.services.errors import InvalidInput


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
    if not host.is_active:
        return "inactive"
    if host.health_check_failures >= MAX_HEALTH_FAILURES:
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
