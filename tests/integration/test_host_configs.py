"""Executor configs are checked per executor type when a host is created or patched: a bad
value is a 422 naming the key, and routing keeps working for everyone -- on both stores."""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import Api

BAD_CONFIGS: list[tuple[str, dict[str, Any], str]] = [
    ("mock", {"max_memory_mb": "abc"}, "executor_config.max_memory_mb"),
    ("mock", {"max_cpu": -1}, "executor_config.max_cpu"),
    ("mock", {"allow_untrusted_jobs": "false"}, "executor_config.allow_untrusted_jobs"),
    ("mock", {"delay_s": "slow"}, "executor_config.delay_s"),
    ("local", {"work_dir": 5}, "executor_config.work_dir"),
    ("local", {"max_memroy_mb": 512}, "executor_config.max_memroy_mb"),
    ("docker", {"pids_limit": "many"}, "executor_config.pids_limit"),
    ("docker", {"api_timeout_s": 0}, "executor_config.api_timeout_s"),
    ("cloudrun", {"region": ["eu"]}, "executor_config.region"),
    ("fargate", {"subnets": "subnet-1"}, "executor_config.subnets"),
    ("fargate", {"assign_public_ip": 1}, "executor_config.assign_public_ip"),
    ("scaleway", {"secret_key": {"k": "v"}}, "executor_config.secret_key"),
    ("mock", {"allowed_networks": "bridge"}, "executor_config.allowed_networks"),
]


async def test_a_bad_config_is_refused_naming_the_key(api: Api) -> None:
    for executor_type, config, field in BAD_CONFIGS:
        body = {"name": "bad", "executor_type": executor_type, "executor_config": config}
        response = await api.client.post("/hosts", json=body, headers=api.admin)
        assert response.status_code == 422, (executor_type, config, response.text)
        assert response.json()["field"] == field


async def test_a_bad_patch_is_refused_and_routing_still_works(api: Api) -> None:
    host = {"name": "small", "executor_type": "mock", "executor_config": {"max_memory_mb": 512}}
    created = await api.client.post("/hosts", json=host, headers=api.admin)
    assert created.status_code == 201, created.text
    host_id = created.json()["id"]
    for config in ({"max_memory_mb": "abc"}, {"max_memory_mb": 0}, {"max_cpu": "2"}):
        patched = await api.client.patch(
            f"/hosts/{host_id}", json={"executor_config": config}, headers=api.admin
        )
        assert patched.status_code == 422, patched.text
        assert patched.json()["field"].startswith("executor_config.")
    job = {"image": "busybox", "command": "true", "executor_type": "mock", "memory_limit": 256}
    for headers in (api.alice, api.bob, api.admin):
        routed = await api.client.post("/container-jobs", json=job, headers=headers)
        assert routed.status_code == 201, routed.text
    stored = (await api.client.get(f"/hosts/{host_id}", headers=api.admin)).json()
    assert stored["executor_config"] == {"max_memory_mb": 512}


async def test_good_configs_of_every_executor_are_accepted(api: Api) -> None:
    good = {
        "local": {"work_dir": "/tmp/bulkjobs-x", "allow_untrusted_jobs": False},
        "docker": {"pids_limit": 128, "api_timeout_s": 10, "allowed_networks": ["bridge"]},
        "cloudrun": {"project_id": "p", "region": "r", "job_name": "j", "credentials": {}},
        "fargate": {"region": "eu-west-1", "cluster": "c", "subnets": ["s-1"]},
        "scaleway": {"region": "fr-par", "job_definition_id": "d", "secret_key": "k"},
        "mock": {"delay_s": 0.5, "region": "anything goes on the mock", "max_cpu": 2},
    }
    for executor_type, config in good.items():
        body = {"name": f"ok-{executor_type}", "executor_type": executor_type}
        response = await api.client.post(
            "/hosts", json=body | {"executor_config": config}, headers=api.admin
        )
        assert response.status_code == 201, (executor_type, response.text)
