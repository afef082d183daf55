"""The durable outbox on its own: persistence, order, corrupt lines, a full disk, one owner."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from src.services.domain.work import ReportAck, WorkReport
from src.services.errors import StoreUnavailable
from src.services.worker.outbox import Outbox, OutboxError, outbox_depth


def report(n: int) -> WorkReport:
    return WorkReport(f"i{n}", "w1", "completed", f"k{n}", {"n": n})


async def ack_all(reports: list[WorkReport]) -> list[ReportAck]:
    return [ReportAck(r.key, "applied") for r in reports]


async def test_entries_survive_a_restart_in_order(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.jsonl") as box:
        await box.append([report(n) for n in range(3)])
        await box.append([report(3)])
    async with Outbox(tmp_path / "o.jsonl") as box:
        assert [e.key for e in box.entries()] == ["k0", "k1", "k2", "k3"]
        assert box.entries()[0] == report(0)


async def test_flush_removes_only_acknowledged_entries(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.jsonl") as box:
        await box.append([report(n) for n in range(10)])

        async def ack_even(reports: list[WorkReport]) -> list[ReportAck]:
            return [ReportAck(r.key, "applied") for r in reports if int(r.key[1:]) % 2 == 0]

        assert await box.flush(ack_even, batch_size=3) == 5
        assert [e.key for e in box.entries()] == ["k1", "k3", "k5", "k7", "k9"]
        assert outbox_depth(box.path) == (5, 0)


async def test_failed_flush_keeps_the_failed_batch_and_all_after_it(tmp_path: Path) -> None:
    sent: list[str] = []
    async with Outbox(tmp_path / "o.jsonl") as box:
        await box.append([report(n) for n in range(7)])

        async def fail_second(reports: list[WorkReport]) -> list[ReportAck]:
            if sent:
                raise StoreUnavailable("gone")
            sent.extend(r.key for r in reports)
            return await ack_all(reports)

        with pytest.raises(StoreUnavailable):
            await box.flush(fail_second, batch_size=3)
        assert sent == ["k0", "k1", "k2"]
        assert [e.key for e in box.entries()] == [f"k{n}" for n in range(3, 7)]
    async with Outbox(tmp_path / "o.jsonl") as box:
        assert [e.key for e in box.entries()] == [f"k{n}" for n in range(3, 7)]


async def test_appends_during_a_flush_are_kept(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.jsonl") as box:
        await box.append([report(0)])

        async def append_meanwhile(reports: list[WorkReport]) -> list[ReportAck]:
            await box.append([report(1)])
            return await ack_all(reports)

        await box.flush(append_meanwhile)
        assert [e.key for e in box.entries()] == ["k1"]
    assert outbox_depth(tmp_path / "o.jsonl") == (1, 0)


async def test_no_size_cap(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.jsonl") as box:
        await box.append([report(n) for n in range(5000)])
    async with Outbox(tmp_path / "o.jsonl") as box:
        assert len(box) == 5000


async def test_corrupt_lines_are_moved_aside_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.jsonl"
    good = b'{"item_id":"a","owner":"w","outcome":"completed","key":"k1","result":1}\n'
    path.write_bytes(
        good
        + b"not json at all\n"
        + b'{"item_id":"b","owner":"w","outcome":"exploded","key":"k2"}\n'
        + b'{"item_id":"c","owner":"w","outcome":"failed","key":"k3","error":"x"}\n'
        + b'{"item_id":"d","owner":"w","outc'  # torn by a crash mid-append
    )
    async with Outbox(path) as box:
        assert [e.key for e in box.entries()] == ["k1", "k3"]
        await box.append([report(9)])
    aside = (tmp_path / "o.jsonl.corrupt").read_bytes().splitlines()
    assert aside == [
        b"not json at all",
        b'{"item_id":"b","owner":"w","outcome":"exploded","key":"k2"}',
        b'{"item_id":"d","owner":"w","outc',
    ]
    assert outbox_depth(path) == (3, 0)
    assert "3 corrupt lines" in caplog.text


async def test_a_full_disk_is_a_clear_error(tmp_path: Path, monkeypatch: Any) -> None:
    async with Outbox(tmp_path / "o.jsonl") as box:
        await box.append([report(0)])

        def no_space(fd: int, data: Any) -> int:
            os.ftruncate(fd, os.fstat(fd).st_size)
            real_write(fd, bytes(data)[:10])  # a partial line reaches the disk first
            raise OSError(errno.ENOSPC, "No space left on device")

        real_write = os.write
        monkeypatch.setattr(os, "write", no_space)
        with pytest.raises(OutboxError, match="disk full"):
            await box.append([report(1)])
        monkeypatch.undo()
        assert [e.key for e in box.entries()] == ["k0"]
    assert outbox_depth(tmp_path / "o.jsonl") == (1, 0)  # no half line left behind


async def test_one_process_per_outbox(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.jsonl"):
        with pytest.raises(OutboxError, match="in use"):
            await Outbox(tmp_path / "o.jsonl").open()


async def test_a_report_the_store_refuses_for_good_is_set_aside(tmp_path: Path) -> None:
    from src.services.errors import StoreError

    async with Outbox(tmp_path / "o.jsonl") as box:
        await box.append([report(n) for n in range(8)])

        async def refuse_k5(reports: list[WorkReport]) -> list[ReportAck]:
            if any(r.key == "k5" for r in reports):
                raise StoreError("document too large")
            return await ack_all(reports)

        assert await box.flush(refuse_k5, batch_size=4) == 7  # the other seven got through
        assert box.entries() == []
        rejected = box.rejected_path.read_text().splitlines()
        assert len(rejected) == 1 and '"k5"' in rejected[0]
    async with Outbox(tmp_path / "o.jsonl") as box:  # and it stays out after a restart
        assert box.entries() == []
