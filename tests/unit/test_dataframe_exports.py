"""pandas DataFrames export the same rows as lists and iterators of records, in every format.

Each export is read back: JSON with json.loads, CSV with the csv module, ZIP members both ways.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from src.services.errors import InvalidInput
from src.services.exports import CHUNK_ROWS, write_export

BIG = 10 * 1024 * 1024
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

#: Plain Python records with a date, a time stamp, a missing value of each kind and a nested
#: value; pandas.DataFrame(RECORDS) holds the same rows.
RECORDS: list[dict[str, Any]] = [
    {
        "id": 1,
        "name": "a, b",
        "score": 1.5,
        "when": WHEN,
        "day": date(2026, 1, 2),
        "ok": True,
        "meta": {"k": "x"},
    },
    {
        "id": 2,
        "name": None,
        "score": float("nan"),
        "when": None,
        "day": None,
        "ok": False,
        "meta": {"k": "y"},
    },
]
#: What the JSON export holds: dates as ISO text, NaN and missing values as null.
AS_JSON = [
    {
        "id": 1,
        "name": "a, b",
        "score": 1.5,
        "when": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "ok": True,
        "meta": {"k": "x"},
    },
    {
        "id": 2,
        "name": None,
        "score": None,
        "when": None,
        "day": None,
        "ok": False,
        "meta": {"k": "y"},
    },
]
#: What the CSV export holds, read back with the csv module (nested keys joined with ".").
AS_CSV = [
    {
        "id": "1",
        "name": "a, b",
        "score": "1.5",
        "when": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "ok": "true",
        "meta.k": "x",
    },
    {
        "id": "2",
        "name": "",
        "score": "",
        "when": "",
        "day": "",
        "ok": "false",
        "meta.k": "y",
    },
]


def shapes() -> dict[str, Any]:
    return {
        "dataframe": pd.DataFrame(RECORDS),
        "records": list(RECORDS),
        "iterator": iter(RECORDS),
    }


def written(fmt: str, data: Any, path: Path) -> bytes:
    write_export(fmt, data, path, BIG)  # type: ignore[arg-type]
    return path.read_bytes()


def csv_rows(content: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(content.decode())))


@pytest.mark.parametrize("shape", ["dataframe", "records", "iterator"])
def test_json_rows_read_back(tmp_path: Path, shape: str) -> None:
    content = written("json", shapes()[shape], tmp_path / "out.json")
    assert json.loads(content) == AS_JSON


@pytest.mark.parametrize("shape", ["dataframe", "records", "iterator"])
def test_csv_rows_read_back(tmp_path: Path, shape: str) -> None:
    content = written("csv", shapes()[shape], tmp_path / "out.csv")
    assert csv_rows(content) == AS_CSV


@pytest.mark.parametrize("shape", ["dataframe", "records", "iterator"])
def test_zip_members_are_csv_or_json_by_name(tmp_path: Path, shape: str) -> None:
    members = {"rows.csv": shapes()[shape], "rows.json": shapes()[shape], "README.txt": "hi"}
    written("zip", members, tmp_path / "out.zip")
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert csv_rows(archive.read("rows.csv")) == AS_CSV
        assert json.loads(archive.read("rows.json")) == AS_JSON
        assert archive.read("README.txt") == b"hi"


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_every_shape_writes_the_same_bytes(tmp_path: Path, fmt: str) -> None:
    contents = {
        shape: written(fmt, data, tmp_path / f"{shape}.{fmt}") for shape, data in shapes().items()
    }
    assert contents["dataframe"] == contents["records"] == contents["iterator"]
    written("zip", {f"rows.{fmt}": pd.DataFrame(RECORDS)}, tmp_path / "z.zip")
    with zipfile.ZipFile(tmp_path / "z.zip") as archive:
        assert archive.read(f"rows.{fmt}") == contents["dataframe"]


def test_pandas_values_of_every_kind(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "naive": pd.to_datetime(["2026-01-02 03:04:05.123456", None], format="ISO8601"),
            "paris": pd.to_datetime(["2026-07-01 12:00", None]).tz_localize("Europe/Paris"),
            "took": pd.to_timedelta(["90s", None]),
            "count": pd.array([7, None], dtype="Int64"),
            "numpy": [np.int64(5), np.float32(0.5)],
            "mixed": [pd.Timestamp("2026-01-01"), pd.NaT],
            "label": pd.Categorical(["x", None]),
        }
    )
    rows = json.loads(written("json", frame, tmp_path / "k.json"))
    assert rows == [
        {
            "naive": "2026-01-02T03:04:05.123456",
            "paris": "2026-07-01T12:00:00+02:00",
            "took": "P0DT0H1M30S",
            "count": 7,
            "numpy": 5,
            "mixed": "2026-01-01T00:00:00",
            "label": "x",
        },
        {
            "naive": None,
            "paris": None,
            "took": None,
            "count": None,
            "numpy": 0.5,
            "mixed": None,
            "label": None,
        },
    ]
    cells = csv_rows(written("csv", frame, tmp_path / "k.csv"))
    assert cells[0]["paris"] == "2026-07-01T12:00:00+02:00"
    assert list(cells[1].values()) == ["", "", "", "", "0.5", "", ""]


def test_a_large_frame_is_written_in_chunks_in_order(tmp_path: Path) -> None:
    count = CHUNK_ROWS * 2 + 7
    frame = pd.DataFrame({"i": range(count), "even": [i % 2 == 0 for i in range(count)]})
    assert [row["i"] for row in json.loads(written("json", frame, tmp_path / "l.json"))] == list(
        range(count)
    )
    lines = written("csv", frame, tmp_path / "l.csv").decode().splitlines()
    assert lines[0] == '"i","even"' and len(lines) == count + 1
    assert lines[-1] == f"{count - 1},{'true' if (count - 1) % 2 == 0 else 'false'}"


def test_the_index_is_not_written_and_names_become_text(tmp_path: Path) -> None:
    frame = pd.DataFrame({1: ["a"], "b": [2]}, index=["row-1"])
    assert json.loads(written("json", frame, tmp_path / "n.json")) == [{"1": "a", "b": 2}]


def test_repeated_column_names_are_bad_input(tmp_path: Path) -> None:
    frame = pd.DataFrame([[1, 2]], columns=["a", "a"])
    for fmt in ("json", "csv"):
        with pytest.raises(InvalidInput, match="'a' appears more than once"):
            write_export(fmt, frame, tmp_path / f"r.{fmt}", BIG)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_pandas_is_not_imported_until_a_dataframe_or_csv_needs_it(tmp_path: Path) -> None:
    # (pyarrow, which writes CSV, loads pandas itself when it builds arrays.)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "import src.services.bulk_job_manager\n"
        "from src.services.exports import write_export\n"
        f"out = Path({str(tmp_path)!r})\n"
        "rows = [{'a': 1, 'when': __import__('datetime').date(2026, 1, 1)}]\n"
        "write_export('json', iter(rows), out / 'x.json', 1 << 20)\n"
        "write_export('zip', {'r.json': iter(rows), 'n.txt': 'x'}, out / 'x.zip', 1 << 20)\n"
        "assert 'pandas' not in sys.modules, 'pandas was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
