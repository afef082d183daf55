"""Operations for the multi-process tests, registered by `bulkjobs worker --import
tests.worker.ops`. `record` logs each start and end to WORKER_TEST_LOG (one small O_APPEND
write per line, so processes do not interleave) and returns twice its `n`."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from src.services.worker.registry import WorkContext, operations


def _log(line: str) -> None:
    path = os.environ.get("WORKER_TEST_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{line}\n".encode())
        finally:
            os.close(fd)


@operations.operation("record")
async def record(payload: Any, ctx: WorkContext) -> int:
    _log(f"start {ctx.item.id} {os.getpid()}")
    await asyncio.sleep(float(payload.get("sleep", 0)))
    _log(f"end {ctx.item.id} {os.getpid()}")
    return int(payload["n"]) * 2
