"""The durable outbox: reports the store could not take, kept on disk until it acknowledges them.

One JSON line per report, appended and fsynced before the report counts as handled. A flush
sends entries oldest first, in batches, and removes an entry only once the store has answered
for it; a batch that fails keeps itself and everything after it. The file is then rewritten
whole (temp file, fsync, rename, fsync of the directory), so a crash at any point leaves
either the old or the new file, never a mix. Each report carries its idempotency key, so one
sent twice (a crash between the store's answer and the rewrite) is applied once.

A line that is not a report (a torn write from a crash, a disk error) is moved to
`<file>.corrupt` and logged; the rest of the outbox is kept. A report the store refuses for
good (not merely unavailable) is moved to `<file>.rejected` and logged. A full disk raises
OutboxError saying so. There is no size cap: nothing is ever dropped to make room.

One process at a time: the outbox takes an exclusive lock on `<file>.lock`.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from src.services.domain.work import ReportAck, WorkReport
from src.services.errors import (
    BulkJobError,
    RateLimited,
    StoreAuthError,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

#: Sends reports to the store; returns one ack per report (raises when it cannot).
Deliver = Callable[[list[WorkReport]], Awaitable[list[ReportAck]]]


class OutboxError(BulkJobError):
    """The outbox cannot keep a report (disk full, unwritable, or in use elsewhere)."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(reports: Iterable[WorkReport]) -> bytes:
    return b"".join(orjson.dumps(report.to_json(), default=str) + b"\n" for report in reports)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Outbox:
    """Reports waiting for the store, in the order they were added."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.corrupt_path = self.path.with_name(self.path.name + ".corrupt")
        #: Reports the store refused for good (not for unavailability): kept for a person.
        self.rejected_path = self.path.with_name(self.path.name + ".rejected")
        self._entries: list[WorkReport] = []
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Lock the file and load what an earlier run left in it."""
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        entries, corrupt = self._load()
        self._entries = entries
        if corrupt:
            self._set_aside(corrupt)
            self._rewrite(entries)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        # A new file's directory entry must be durable too, or a power loss can take the
        # file (and the reports fsynced into it) away.
        _fsync_dir(self.path.parent)
        if entries:
            log.info("outbox %s holds %d undelivered reports", self.path, len(entries))

    def _take_lock(self) -> None:
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutboxError(
                f"outbox {self.path} is in use by another worker; give each worker its own"
                " (bulkjobs worker --name NAME or --outbox PATH)"
            ) from None
        self._lock_fd = fd

    async def aclose(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock_fd = None

    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[WorkReport]:
        return list(self._entries)

    def _load(self) -> tuple[list[WorkReport], list[bytes]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], []
        return parse_lines(data)

    def _set_aside(self, lines: list[bytes]) -> None:
        with self.corrupt_path.open("ab") as aside:
            aside.write(b"".join(line + b"\n" for line in lines))
            aside.flush()
            os.fsync(aside.fileno())
        log.error(
            "outbox %s: %d corrupt lines moved to %s", self.path, len(lines), self.corrupt_path
        )

    async def append(self, reports: list[WorkReport]) -> None:
        """Keep `reports` on disk; returns only once they are fsynced."""
        if not reports:
            return
        async with self._lock:
            await asyncio.to_thread(self._append, _encode(reports))
            self._entries.extend(reports)

    def _append(self, data: bytes) -> None:
        if self._fd is None:
            raise OutboxError(f"outbox {self.path} is not open")
        size = os.fstat(self._fd).st_size
        try:
            _write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError as exc:
            os.ftruncate(self._fd, size)  # no half-written line left behind
            raise _disk_error(self.path, exc) from exc

    async def flush(self, deliver: Deliver, batch_size: int = 100) -> int:
        """Send entries oldest first; returns how many the store acknowledged. Raises what
        `deliver` raised (the store is unavailable, rate-limits or refuses the credentials)
        once the acknowledged entries are removed.

        A batch the store refuses for good (too large, invalid) is split until the report
        it refuses is found; that report is moved to `<file>.rejected` (fsynced) and logged,
        so one bad report cannot hold back the others forever."""
        async with self._lock:
            pending = list(self._entries)
        acked: set[str] = set()
        rejected: list[WorkReport] = []
        try:
            for start in range(0, len(pending), batch_size):
                batch = pending[start : start + batch_size]
                await self._send(deliver, batch, acked, rejected)
        finally:
            if rejected:
                await asyncio.to_thread(self._set_aside_rejected, rejected)
            if acked or rejected:
                await self._remove(acked | {report.key for report in rejected})
        return len(acked)

    async def _send(
        self,
        deliver: Deliver,
        batch: list[WorkReport],
        acked: set[str],
        rejected: list[WorkReport],
    ) -> None:
        try:
            acks = await deliver(batch)
        except (StoreUnavailable, RateLimited, StoreAuthError):
            raise  # the store may take it later: keep it all
        except BulkJobError as exc:
            if len(batch) == 1:
                log.error(
                    "outbox %s: the store refused report %s: %s", self.path, batch[0].key, exc
                )
                rejected.append(batch[0])
                return
            middle = len(batch) // 2
            await self._send(deliver, batch[:middle], acked, rejected)
            await self._send(deliver, batch[middle:], acked, rejected)
            return
        acked.update(ack.key for ack in acks)

    def _set_aside_rejected(self, reports: list[WorkReport]) -> None:
        with self.rejected_path.open("ab") as aside:
            aside.write(_encode(reports))
            aside.flush()
            os.fsync(aside.fileno())

    async def _remove(self, keys: set[str]) -> None:
        async with self._lock:
            kept = [entry for entry in self._entries if entry.key not in keys]
            await asyncio.to_thread(self._swap, kept)
            self._entries = kept

    def _swap(self, kept: list[WorkReport]) -> None:
        self._rewrite(kept)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _rewrite(self, entries: list[WorkReport]) -> None:
        partial = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, _encode(entries))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(partial, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            raise _disk_error(self.path, exc) from exc


def parse_lines(data: bytes) -> tuple[list[WorkReport], list[bytes]]:
    """The reports in an outbox file's bytes, and the lines that are not reports."""
    entries: list[WorkReport] = []
    corrupt: list[bytes] = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            parsed: Any = orjson.loads(line)
            entries.append(WorkReport.from_json(parsed))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            corrupt.append(line)
    return entries, corrupt


def _disk_error(path: Path, exc: OSError) -> OutboxError:
    if exc.errno == errno.ENOSPC:
        return OutboxError(f"disk full: cannot write the outbox {path}; free space on it")
    return OutboxError(f"cannot write the outbox {path}: {exc}")


def outbox_depth(path: Path | str) -> tuple[int, int]:
    """(reports, corrupt lines) in an outbox file, read without taking its lock."""
    try:
        entries, corrupt = parse_lines(Path(path).read_bytes())
    except FileNotFoundError:
        return 0, 0
    return len(entries), len(corrupt)
