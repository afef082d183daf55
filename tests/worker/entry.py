"""A worker process for the multi-process tests: `bulkjobs worker` (run_worker) plus a switch
that cuts this process off from the store: while the file given by --offline-flag exists,
every store call of the scheduler raises StoreUnavailable, as if the network were down.

    python -m tests.worker.entry --name a --offline-flag /tmp/x [--burst] [--lease 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import tests.worker.ops  # noqa: F401  # registers the test operations
from src.config import load_settings
from src.services.bulk_job_manager import BulkJobManager
from src.services.errors import StoreUnavailable
from src.services.store.base import WorkStore
from src.services.worker.service import WorkerOptions, run_worker


class SwitchedStore:
    def __init__(self, inner: WorkStore, flag: Path) -> None:
        self.inner = inner
        self.flag = flag

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.flag.exists():
                raise StoreUnavailable("test switch: the store is unreachable")
            return await target(*args, **kwargs)

        return call


async def main(args: argparse.Namespace) -> None:
    manager = BulkJobManager(load_settings())
    options = WorkerOptions(
        name=args.name,
        operations=["record"],
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        burst=args.burst,
        lease_s=args.lease,
        poll_interval_s=0.05,
        grace_s=2.0,
    )
    flag = Path(args.offline_flag)
    try:
        stats = await run_worker(manager, options, lambda store: SwitchedStore(store, flag))  # type: ignore[arg-type,return-value]  # SwitchedStore forwards to a real store
    finally:
        await manager.aclose()
    print(json.dumps(stats.as_dict()), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--offline-flag", required=True)
    parser.add_argument("--burst", action="store_true")
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=50)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parser.parse_args()))
