"""Routing: inactive, unhealthy, full and incompatible hosts are skipped; weight, then cost."""

from __future__ import annotations

import pytest

from src.services.containers.routing import choose_host, estimate_cost
from src.services.errors import InvalidInput
from tests.containers.conftest import make_host, make_job


def test_skips_inactive_unhealthy_full_and_incompatible_hosts() -> None:
    job = make_job("x", "docker", docker_image="localhost:5000/app")
    hosts = [
        make_host("docker", name="off", is_active=False, weight=1000),
        make_host("docker", name="sick", health_check_failures=3, healthy=False, weight=1000),
        make_host("docker", name="full", current_job_count=2, max_concurrent_jobs=2, weight=1000),
        make_host("cloudrun", name="cloud", weight=1000),  # cannot pull a localhost image
        make_host("docker", name="ok", weight=1),
    ]
    decision = choose_host(job, hosts)
    assert decision.host.name == "ok"
    assert "1 of 5 hosts eligible" in decision.reason


def test_weight_decides_then_cost() -> None:
    job = make_job("x", timeout_seconds=3600)
    heavy = make_host("docker", name="heavy", weight=500, cost_per_hour=9.0)
    cheap = make_host("fargate", name="cheap", weight=100, cost_per_hour=0.1)
    dear = make_host("cloudrun", name="dear", weight=100, cost_per_hour=1.0)
    assert choose_host(job, [cheap, dear, heavy]).host.name == "heavy"
    decision = choose_host(job, [dear, cheap])
    assert decision.host.name == "cheap"
    assert decision.estimated_cost == pytest.approx(0.1)
    assert "weight 100" in decision.reason and "estimated cost 0.1" in decision.reason


def test_limits_above_a_hosts_maximum_skip_it() -> None:
    job = make_job("x", memory_limit=2048)
    small = make_host("docker", name="small", executor_config={"max_memory_mb": 1024})
    big = make_host("docker", name="big", weight=1)
    assert choose_host(job, [small, big]).host.name == "big"


def test_no_eligible_host_says_why_for_each() -> None:
    job = make_job("x", preferred_executor="fargate")
    with pytest.raises(InvalidInput) as raised:
        hosts = [make_host("docker", name="d"), make_host("docker", name="e", is_active=False)]
        choose_host(job, hosts)
    assert raised.value.field == "host"
    assert "d: incompatible executor docker" in str(raised.value)
    assert "e: inactive" in str(raised.value)


def test_cost_estimate() -> None:
    job = make_job("x", timeout_seconds=1800)
    assert estimate_cost(job, make_host("docker")) is None
    assert estimate_cost(job, make_host("docker", cost_per_job=0.5, cost_per_hour=2.0)) == 1.5
