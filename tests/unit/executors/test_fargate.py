"""FargateExecutor against moto's ECS, EC2 and CloudWatch Logs, through the real boto3 client."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models.elastic_network_interfaces import NetworkInterface
from moto.ecs.models import ecs_backends

from src.services.containers.executors.errors import (
    ExecutorConfigurationError,
    ExecutorConnectionError,
    ExecutorError,
)
from src.services.containers.executors.fargate import FargateExecutor
from src.services.domain.containers import ContainerJob, ExecutorHost

REGION = "eu-west-1"
ACCESS_KEY = "AKIAFAKEACCESSKEY123"
SECRET_KEY = "fake/secret+key/that-must-never-leak"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A cluster, an awsvpc task definition with the awslogs layout, a subnet and a log group."""
    # moto 5.2 builds the task's ENI attachment from `private_dns_name`, which its
    # NetworkInterface lacks; give it one so awsvpc tasks can be run as on Fargate.
    monkeypatch.setattr(NetworkInterface, "private_dns_name", "ip-10-0-1-5.internal", raising=False)
    with mock_aws():
        session = boto3.session.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
        )
        ec2, ecs, logs = session.client("ec2"), session.client("ecs"), session.client("logs")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName="jobs", Description="jobs", VpcId=vpc)
        ecs.create_cluster(clusterName="jobs")
        ecs.register_task_definition(
            family="runner",
            networkMode="awsvpc",
            requiresCompatibilities=["FARGATE"],
            cpu="256",
            memory="512",
            # moto sums container memory/cpu and needs both on the container.
            containerDefinitions=[
                {"name": "app", "image": "busybox", "essential": True, "memory": 512, "cpu": 256}
            ],
        )
        logs.create_log_group(logGroupName="/bulkjobs")
        yield {"subnet": subnet, "group": group["GroupId"], "logs": logs, "ecs": ecs}


def make_host(aws: dict[str, Any], **overrides: Any) -> ExecutorHost:
    config = {
        "region": REGION,
        "cluster": "jobs",
        "task_definition": "runner",
        "container_name": "app",
        "subnets": [aws["subnet"]],
        "security_groups": [aws["group"]],
        "log_group": "/bulkjobs",
        "log_stream_prefix": "jobs",
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
    } | overrides
    return ExecutorHost(id="h1", name="fargate", executor_type="fargate", executor_config=config)


def make_job(command: str = "echo hello", **fields: Any) -> ContainerJob:
    return ContainerJob(
        id="j1", executor_type="fargate", docker_image="busybox", command=command, **fields
    )


def moto_task(task_arn: str) -> Any:
    return ecs_backends[DEFAULT_ACCOUNT_ID][REGION].tasks["jobs"][task_arn]


def finish(task_arn: str, exit_code: int | None, reason: str = "") -> None:
    """moto never runs containers: it reports exit code 0 and no reason, so set the outcome."""
    task = moto_task(task_arn)
    task.last_status = "STOPPED"
    task.desired_status = "STOPPED"
    task.stopped_reason = reason
    task.containers[0].exitCode = exit_code


def put_logs(aws: dict[str, Any], task_arn: str, *lines: str) -> None:
    stream = f"jobs/app/{task_arn.rsplit('/', 1)[-1]}"
    aws["logs"].create_log_stream(logGroupName="/bulkjobs", logStreamName=stream)
    now_ms = int(time.time() * 1000)  # CloudWatch drops events older than 14 days
    events = [{"timestamp": now_ms + i, "message": line} for i, line in enumerate(lines)]
    aws["logs"].put_log_events(logGroupName="/bulkjobs", logStreamName=stream, logEvents=events)


async def launch(executor: FargateExecutor, job: ContainerJob) -> str:
    result = await executor.launch_job(job, {"GREETING": "hi"})
    job.set_execution_identifier(result.execution_id)
    return result.execution_id


async def test_success_reports_exit_zero_and_logs(aws: dict[str, Any]) -> None:
    executor = FargateExecutor(make_host(aws))
    job = make_job("sh -c 'echo $GREETING'", memory_limit=256, cpu_limit=0.5)
    task_arn = await launch(executor, job)

    overrides = moto_task(task_arn).overrides["containerOverrides"][0]
    assert overrides["command"] == ["sh", "-c", "echo $GREETING"]
    assert overrides["environment"] == [{"name": "GREETING", "value": "hi"}]
    assert (overrides["memory"], overrides["cpu"]) == (256, 512)
    assert (await executor.check_status(task_arn)).state == "running"

    finish(task_arn, 0)
    put_logs(aws, task_arn, "hi", "done")
    assert await executor.check_status(task_arn) == _exited(0)
    result = await executor.harvest_job(job)
    assert (result.status, result.exit_code) == ("completed", 0)
    assert result.stdout == "hi\ndone\n"
    await executor.aclose()


async def test_failure_exit_code_comes_from_the_named_container(aws: dict[str, Any]) -> None:
    executor = FargateExecutor(make_host(aws))
    job = make_job("false")
    task_arn = await launch(executor, job)
    finish(task_arn, 3, "Essential container in task exited")
    result = await executor.harvest_job(job)
    assert (result.status, result.exit_code, result.stdout) == ("failed", 3, "")


async def test_out_of_memory_reason(aws: dict[str, Any]) -> None:
    executor = FargateExecutor(make_host(aws))
    job = make_job("hog")
    task_arn = await launch(executor, job)
    finish(task_arn, 137, "OutOfMemoryError: Container killed due to memory usage")
    status = await executor.check_status(task_arn)
    assert (status.state, status.exit_code, status.reason) == ("exited", 137, "out of memory")
    assert (await executor.harvest_job(job)).status == "failed"


async def test_unknown_task_is_not_found(aws: dict[str, Any]) -> None:
    executor = FargateExecutor(make_host(aws))
    missing = f"arn:aws:ecs:{REGION}:{DEFAULT_ACCOUNT_ID}:task/jobs/0123456789abcdef"
    assert (await executor.check_status(missing)).state == "not-found"
    assert await executor.cleanup(missing) is False


async def test_timeout_stops_the_task(aws: dict[str, Any]) -> None:
    executor = FargateExecutor(make_host(aws))
    job = make_job("sleep 100", timeout_seconds=1)
    task_arn = await launch(executor, job)
    launched_at, timeout = executor._launches[task_arn]
    executor._launches[task_arn] = (launched_at - 5, timeout)  # as if launched 5 s ago
    assert await executor.check_status(task_arn) == _exited(None, "timeout")
    assert moto_task(task_arn).stopped_reason == "bulkjobs: timeout"
    assert (await executor.harvest_job(job)).status == "timeout"


async def test_cleanup_stops_a_running_task(aws: dict[str, Any]) -> None:
    executor = FargateExecutor(make_host(aws))
    task_arn = await launch(executor, make_job())
    assert await executor.cleanup(task_arn) is True
    assert moto_task(task_arn).desired_status == "STOPPED"


async def test_missing_cluster_is_an_executor_error(aws: dict[str, Any]) -> None:
    executor = FargateExecutor(make_host(aws, cluster="nope"))
    with pytest.raises(ExecutorError) as caught:
        await executor.launch_job(make_job(), {})
    assert "ClusterNotFoundException" in str(caught.value)
    assert caught.value.transient is False
    health = await executor.get_health_status()
    assert health["healthy"] is False
    assert health["error"]


async def test_health_and_capabilities(aws: dict[str, Any]) -> None:
    executor = FargateExecutor(make_host(aws, container_name=None))
    assert (await executor.get_health_status())["healthy"] is True
    capabilities = await executor.get_capabilities()
    assert capabilities["supports_resource_limits"] is True
    assert "merged" in capabilities["logs"]
    # Without container_name, the task definition's first container is used.
    task_arn = await launch(executor, make_job())
    assert moto_task(task_arn).overrides["containerOverrides"][0]["name"] == "app"


def test_missing_config_names_the_keys() -> None:
    host = ExecutorHost(id="h", name="f", executor_type="fargate", executor_config={"region": "x"})
    with pytest.raises(ExecutorConfigurationError, match="cluster, task_definition, subnets"):
        FargateExecutor(host)


async def test_credentials_never_leak(
    aws: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    executor = FargateExecutor(make_host(aws))
    job = make_job()
    result = await executor.launch_job(job, {})
    job.set_execution_identifier(result.execution_id)
    finish(result.execution_id, 0)
    harvest = await executor.harvest_job(job)
    broken = FargateExecutor(make_host(aws, cluster="nope"))
    with pytest.raises(ExecutorError) as caught:
        await broken.launch_job(job, {})
    seen = " ".join(
        [
            repr(result.metadata),
            repr(harvest),
            str(caught.value),
            repr(await executor.get_capabilities()),
            repr(await broken.get_health_status()),
            repr(executor.host),
        ]
    )
    assert SECRET_KEY not in seen
    assert ACCESS_KEY not in seen
    # botocore's own DEBUG log shows the access key id in the SigV4 Authorization header
    # (AWS does not treat the id as secret); the secret key never appears in any log.
    assert SECRET_KEY not in caplog.text
    assert ACCESS_KEY not in "".join(
        r.getMessage() for r in caplog.records if not r.name.startswith("botocore")
    )


def _exited(code: int | None, reason: str = "") -> Any:
    from src.services.containers.executors.base import ExecutionStatus

    return ExecutionStatus("exited", code, reason)


async def test_unreachable_endpoint_is_a_connection_error() -> None:
    host = ExecutorHost(
        id="h",
        name="f",
        executor_type="fargate",
        executor_config={
            "region": REGION,
            "cluster": "jobs",
            "task_definition": "runner",
            "subnets": ["subnet-1"],
            "endpoint_url": "http://127.0.0.1:9",  # discard port: nothing listens
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
        },
    )
    executor = FargateExecutor(host)
    with pytest.raises(ExecutorConnectionError) as caught:
        await executor.check_status("arn:aws:ecs:eu-west-1:1:task/jobs/abc")
    assert caught.value.transient is True
    assert SECRET_KEY not in str(caught.value)
