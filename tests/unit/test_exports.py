"""Export writers: each format read back, the size cap, hashes, streaming and bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import tracemalloc
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from src.services.errors import ExportTooLarge, InvalidInput
from src.services.exports import write_export

RECORDS = [
    {"id": 1, "name": "a", "meta": {"tags": ["x", "y"], "score": 1.5}, "ok": True},
    {"id": 2, "name": "b,c", "meta": {"tags": [], "score": None}, "ok": False},
]
BIG = 10 * 1024 * 1024


def test_json_list_dict_and_generator(tmp_path: Path) -> None:
    for data in (RECORDS, {"a": 1, "nested": {"b": [1, 2]}}, (row for row in RECORDS), []):
        path = tmp_path / "out.json"
        expected = list(data) if not isinstance(data, (list, dict)) else data
        if not isinstance(data, (list, dict)):
            data = iter(expected)
        written = write_export("json", data, path, BIG)
        assert json.loads(path.read_bytes()) == expected
        assert written.content_type == "application/json"


def test_json_odd_values_become_strings(tmp_path: Path) -> None:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    write_export("json", [{"when": when, "amount": Decimal("1.25")}], tmp_path / "o.json", BIG)
    [row] = json.loads((tmp_path / "o.json").read_text())
    assert row == {"when": "2026-01-02T00:00:00+00:00", "amount": "1.25"}


def test_csv_flattens_nested_records(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    write_export("csv", iter(RECORDS), path, BIG)
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert list(rows[0]) == ["id", "name", "meta.tags", "meta.score", "ok"]
    assert rows[0]["meta.tags"] == '["x","y"]'
    assert rows[1]["name"] == "b,c"
    assert rows[1]["meta.score"] == ""
    assert rows[0]["id"] == "1"


def test_csv_from_a_dataframe(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    write_export("csv", frame, tmp_path / "f.csv", BIG)
    assert pd.read_csv(tmp_path / "f.csv").equals(frame)


def test_csv_column_appearing_late_is_an_error(tmp_path: Path) -> None:
    rows = [{"a": i} for i in range(12_000)] + [{"a": 1, "late": 2}]
    with pytest.raises(InvalidInput, match="late"):
        write_export("csv", rows, tmp_path / "late.csv", BIG)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("data", [5, "text", [1, 2]])
def test_csv_needs_records(tmp_path: Path, data: Any) -> None:
    with pytest.raises(InvalidInput, match="data"):
        write_export("csv", data, tmp_path / "bad.csv", BIG)


def test_zip_members_from_mapping_and_pairs(tmp_path: Path) -> None:
    members = {"notes.txt": "héllo", "raw.bin": b"\x00\x01", "data/rows.json": RECORDS}
    for data in (members, iter(members.items())):
        path = tmp_path / "out.zip"
        write_export("zip", data, path, BIG)
        with zipfile.ZipFile(path) as archive:
            assert archive.read("notes.txt").decode() == "héllo"
            assert archive.read("raw.bin") == b"\x00\x01"
            assert json.loads(archive.read("data/rows.json")) == RECORDS


@pytest.mark.parametrize("name", ["../evil", "/abs", "a/../../b", "", "back\\slash"])
def test_zip_rejects_unsafe_member_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="unsafe"):
        write_export("zip", {name: "x"}, tmp_path / "z.zip", BIG)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["json", "csv", "zip"])
def test_oversize_export_leaves_nothing(tmp_path: Path, fmt: str) -> None:
    rows = ({"i": i, "text": "x" * 50} for i in range(50_000))
    data: Any = {"rows.json": list(rows)} if fmt == "zip" else rows
    with pytest.raises(ExportTooLarge):
        write_export(fmt, data, tmp_path / f"big.{fmt}", 100_000)  # type: ignore[arg-type]  # generators and mappings on purpose
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["json", "csv", "zip"])
def test_size_and_hash_match_the_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"out.{fmt}"
    data: Any = {"rows.json": RECORDS} if fmt == "zip" else RECORDS
    written = write_export(fmt, data, path, BIG)  # type: ignore[arg-type]  # generators and mappings on purpose
    content = path.read_bytes()
    assert written.size_bytes == len(content)
    assert written.sha256 == hashlib.sha256(content).hexdigest()


def _rows(count: int) -> Iterator[dict[str, Any]]:
    for i in range(count):
        yield {"id": i, "name": f"row-{i}", "value": i * 0.5, "flag": i % 2 == 0}


def _peak_of(fn: Any) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_generators_are_streamed(tmp_path: Path, fmt: str) -> None:
    materialized = _peak_of(lambda: list(_rows(200_000)))
    path = tmp_path / f"s.{fmt}"
    streamed = _peak_of(lambda: write_export(fmt, _rows(200_000), path, 1 << 30))
    assert path.stat().st_size > 5_000_000
    assert streamed < materialized / 3


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        ("json", [{"a": 2**70}]),
        ("csv", [{"a": 2**70}]),
        ("csv", [{"a": {"b": [1, {"c": -(2**65)}]}}]),
        ("zip", {"m.json": {"a": 2**70}}),
    ],
)
def test_values_a_format_cannot_hold_are_bad_input(tmp_path: Path, fmt: str, data: Any) -> None:
    path = tmp_path / f"out.{fmt}"
    with pytest.raises(InvalidInput) as raised:
        write_export(fmt, data, path, 10_000)  # type: ignore[arg-type]  # generators and mappings on purpose
    assert raised.value.field == "data"
    assert list(tmp_path.iterdir()) == []  # nothing half-written stays
