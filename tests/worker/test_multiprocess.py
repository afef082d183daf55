"""Real worker processes on one store (the embedded file, and the Convex test server):
many workers split the work, a SIGKILLed worker's item is finished by another and its outbox
is delivered when it restarts, and a store outage fills outboxes that drain when it returns."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from src.services.domain.work import MAX_WORK_BATCH, NewWorkItem
from src.services.store.base import WorkStore
from src.services.worker.outbox import outbox_depth
from tests.conftest import open_store
from tests.convex_server import ConvexTestServer, free_port

ROOT = Path(__file__).resolve().parents[2]


class TcpProxy:
    """A TCP proxy in front of the Convex test server that can be cut and restored; the
    server (which keeps its state in memory) keeps running."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        self._writers -= {writer, up_writer}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()


@dataclass
class Setup:
    kind: str
    store: WorkStore
    env: dict[str, str]
    root: Path
    proxy: TcpProxy | None = None

    @property
    def log(self) -> Path:
        return self.root / "executions.log"

    def outbox(self, name: str) -> Path:
        return self.root / "outbox" / f"{name}.jsonl"

    async def down(self) -> None:
        """Cut the workers off from the store."""
        if self.proxy is not None:
            await self.proxy.cut()
        else:
            (self.root / "offline").touch()

    async def up(self) -> None:
        if self.proxy is not None:
            await self.proxy.open()
        else:
            (self.root / "offline").unlink()


@pytest.fixture(params=["local", "convex"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    kind = request.param
    store = await open_store(kind, tmp_path / "shared.db", request)
    env = {
        **os.environ,
        "BULKJOBS_STORE": kind,
        "BULKJOBS_DB_PATH": str(tmp_path / "shared.db"),
        "BULK_EXPORT_PATH": str(tmp_path / "exports"),
        "BULKJOBS_EMBEDDED_WORKER": "false",
        "WORKER_TEST_LOG": str(tmp_path / "executions.log"),
    }
    proxy = None
    if kind == "convex":
        server: ConvexTestServer = request.getfixturevalue("convex_server")
        proxy = TcpProxy(int(server.url.rsplit(":", 1)[1]))
        await proxy.open()
        env |= {
            "CONVEX_URL": f"http://127.0.0.1:{proxy.port}",
            "CONVEX_DEPLOY_KEY": server.admin_key,
        }
    yield Setup(kind, cast(WorkStore, store), env, tmp_path, proxy)
    await store.aclose()
    if proxy is not None and proxy._server is not None:
        await proxy.cut()


async def enqueue(store: WorkStore, count: int, **payload: Any) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, MAX_WORK_BATCH):
        batch = [
            NewWorkItem("record", {"n": n, **payload}, f"i{n:05}")
            for n in range(start, min(count, start + MAX_WORK_BATCH))
        ]
        ids += await store.work_enqueue_batch(batch)
    return ids


async def start(setup: Setup, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env=setup.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def entry(setup: Setup, name: str, *extra: str) -> asyncio.subprocess.Process:
    flag = str(setup.root / "offline")
    return await start(
        setup, "-m", "tests.worker.entry", "--name", name, "--offline-flag", flag, *extra
    )


async def finish(process: asyncio.subprocess.Process, limit_s: float = 60) -> dict[str, int]:
    stdout, stderr = await asyncio.wait_for(process.communicate(), limit_s)
    assert process.returncode == 0, stderr.decode()[-3000:]
    return cast(dict[str, int], json.loads(stdout.decode().strip().splitlines()[-1]))


def executions(setup: Setup, kind: str = "end") -> Counter[str]:
    lines = setup.log.read_text().splitlines() if setup.log.exists() else []
    return Counter(line.split()[1] for line in lines if line.startswith(kind))


async def wait_for(check: Any, limit_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_three_workers_split_2000_items(setup: Setup) -> None:
    # 50 ms an item at 20 at once: one worker alone would need 5 s, so the others (which
    # take about a second to start) get a share however the processes are scheduled.
    ids = await enqueue(setup.store, 2000, sleep=0.05)
    workers = [
        await start(
            setup,
            "-m",
            "src.cli",
            "worker",
            "--burst",
            "--import",
            "tests.worker.ops",
            "--name",
            f"w{n}",
            "--concurrency",
            "20",
            "--batch-size",
            "100",
            "--poll-interval",
            "0.05",
            "--operations",
            "record",
        )
        for n in range(3)
    ]
    stats = [await finish(worker, 80) for worker in workers]
    ran = executions(setup)
    assert set(ran) == set(ids) and max(ran.values()) == 1  # every item, each once
    assert sum(s["applied"] for s in stats) == 2000
    assert sum(s["duplicate"] + s["stale"] for s in stats) == 0  # none reported twice
    assert all(s["claimed"] > 0 for s in stats)  # the work was shared
    assert await setup.store.work_count_by_status() == {"completed": 2000}
    for item_id in ids[::97]:
        item = await setup.store.work_get(item_id)
        assert item is not None and item.result == int(item_id[1:]) * 2


async def test_sigkilled_worker_item_is_finished_elsewhere_and_its_outbox_delivered(
    setup: Setup,
) -> None:
    slow = (
        await setup.store.work_enqueue_batch(
            [NewWorkItem("record", {"n": 999, "sleep": 2.0}, "slow")]
        )
    )[0]
    quick = await enqueue(setup.store, 10, sleep=0.3)
    victim = await entry(setup, "victim", "--lease", "1")

    async def all_claimed() -> bool:
        return (await setup.store.work_count_by_status()).get("running") == 11

    await wait_for(all_claimed)
    await setup.down()  # the victim's reports now go to its outbox
    await wait_for(lambda: _depth_at_least(setup.outbox("victim"), 10))
    victim.send_signal(signal.SIGKILL)
    await victim.wait()
    await setup.up()
    assert outbox_depth(setup.outbox("victim")) == (10, 0)
    await asyncio.sleep(1.2)  # the victim's leases (1 s) expire

    rescuer = await entry(setup, "rescuer", "--lease", "1", "--burst")
    rescued = await finish(rescuer)
    assert rescued["applied"] == 11  # after the victim's leases expired
    item = await setup.store.work_get(slow)
    assert item is not None and (item.status, item.result) == ("completed", 1998)
    assert executions(setup, "start")[slow] == 2 and executions(setup)[slow] == 1

    restarted = await finish(await entry(setup, "victim", "--lease", "1", "--burst"))
    assert restarted["claimed"] == 0
    assert restarted["stale"] == 10 and restarted["applied"] == 0  # delivered, applied once
    assert outbox_depth(setup.outbox("victim")) == (0, 0)
    assert await setup.store.work_count_by_status() == {"completed": 11}
    assert len(quick) == 10


async def _depth_at_least(path: Path, count: int) -> bool:
    return outbox_depth(path)[0] >= count


async def test_store_outage_fills_outboxes_that_drain_when_it_returns(setup: Setup) -> None:
    ids = await enqueue(setup.store, 300, sleep=0.4)
    workers = [
        await entry(setup, f"o{n}", "--lease", "2", "--burst", "--concurrency", "60")
        for n in range(2)
    ]

    async def busy() -> bool:
        return (await setup.store.work_count_by_status()).get("running", 0) >= 100

    await wait_for(busy)
    await setup.down()
    await wait_for(lambda: _depth_at_least(setup.outbox("o0"), 1), limit_s=10)
    await asyncio.sleep(1.0)  # reports pile up while the store is away
    piled = sum(outbox_depth(setup.outbox(f"o{n}"))[0] for n in range(2))
    await setup.up()
    stats = [await finish(worker, 80) for worker in workers]
    assert piled >= 100
    assert sum(s["outboxed"] for s in stats) >= piled
    assert all(outbox_depth(setup.outbox(f"o{n}")) == (0, 0) for n in range(2))
    assert await setup.store.work_count_by_status() == {"completed": 300}
    assert sum(s["applied"] for s in stats) == 300  # none lost, none applied twice
    ran = executions(setup)
    assert sum(s["stale"] + s["duplicate"] for s in stats) == sum(ran.values()) - 300
    for item_id in ids[::29]:
        item = await setup.store.work_get(item_id)
        assert item is not None and item.result == int(item_id[1:]) * 2
