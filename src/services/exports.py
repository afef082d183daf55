"""Streaming export writers (JSON, CSV, ZIP) with the size cap enforced while writing.

CSV columns come from the first chunk of records (nested keys flattened with "."); a later
record with a key outside those columns is an InvalidInput naming the key, because a CSV
header cannot grow after it is written and dropping the value would lose data silently.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import orjson
import pandas as pd

from src.services.domain import ExportFormat
from src.services.errors import ExportTooLarge, InvalidInput

CHUNK_ROWS = 20_000
CONTENT_TYPES = {"json": "application/json", "csv": "text/csv", "zip": "application/zip"}
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


@dataclass(frozen=True)
class WrittenExport:
    size_bytes: int
    sha256: str
    content_type: str


def file_extension(fmt: ExportFormat) -> str:
    return fmt


class _CappedFile:
    """A write-only stream that hashes what it writes and refuses to grow past a cap."""

    def __init__(self, raw: BinaryIO, max_bytes: int) -> None:
        self._raw = raw
        self._max = max_bytes
        self.size = 0
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self._max:
            raise ExportTooLarge(self._max)
        self.digest.update(data)
        self._raw.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._raw.flush()


def _default(value: Any) -> Any:
    return str(value)


def _dumps(value: Any, option: int = JSON_OPTIONS) -> bytes:
    return orjson.dumps(value, default=_default, option=option)


def write_export(fmt: ExportFormat, data: Any, path: Path, max_bytes: int) -> WrittenExport:
    """Write `data` to `path` in `fmt`; a partial or failed file never stays behind."""
    writer = {"json": _write_json, "csv": _write_csv, "zip": _write_zip}.get(fmt)
    if writer is None:
        raise InvalidInput("export_format", f"unknown format {fmt!r}; use json, csv or zip")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("wb") as raw:
            capped = _CappedFile(raw, max_bytes)
            writer(data, capped)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return WrittenExport(capped.size, capped.digest.hexdigest(), CONTENT_TYPES[fmt])


def _is_stream(data: Any) -> bool:
    return isinstance(data, Iterable) and not isinstance(data, (str, bytes, bytearray, Mapping))


def _write_json(data: Any, out: _CappedFile) -> None:
    if not _is_stream(data):
        out.write(_dumps(data))
        return
    out.write(b"[")
    first = True
    for chunk in _chunks(data, 5_000):
        body = _dumps(chunk)[1:-1]
        if not body:
            continue
        if not first:
            out.write(b",")
        out.write(body)
        first = False
    out.write(b"]")


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _write_csv(data: Any, out: _CappedFile) -> None:
    if isinstance(data, pd.DataFrame):
        out.write(data.to_csv(index=False).encode())
        return
    if not _is_stream(data):
        raise InvalidInput("data", "a CSV export needs a DataFrame or an iterable of records")
    columns: list[str] | None = None
    for chunk in _chunks(data, CHUNK_ROWS):
        frame = _flatten(chunk)
        if columns is None:
            columns = list(frame.columns)
            out.write(frame.to_csv(index=False).encode())
            continue
        extra = [column for column in frame.columns if column not in columns]
        if extra:
            raise InvalidInput("data", f"column {extra[0]!r} first appears after the header")
        out.write(frame.reindex(columns=columns).to_csv(index=False, header=False).encode())
    if columns is None:
        out.write(b"")


def _flatten(records: list[Any]) -> pd.DataFrame:
    if not all(isinstance(record, Mapping) for record in records):
        raise InvalidInput("data", "every CSV record must be an object (a dict)")
    # Nullable dtypes keep an int column with gaps as ints (200, not 200.0).
    frame = pd.json_normalize(records, sep=".").convert_dtypes()
    for column in frame.columns:
        if frame[column].map(lambda v: isinstance(v, (list, dict))).any():
            frame[column] = frame[column].map(
                lambda v: _dumps(v).decode() if isinstance(v, (list, dict)) else v
            )
    return frame


def _write_zip(data: Any, out: _CappedFile) -> None:
    members = data.items() if isinstance(data, Mapping) else data
    if not _is_stream(members) and not isinstance(data, Mapping):
        raise InvalidInput("data", "a ZIP export needs a mapping or (name, value) pairs")
    with zipfile.ZipFile(cast(IO[bytes], out), "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in members:
            archive.writestr(_member_name(name), _member_bytes(value))


def _member_name(name: Any) -> str:
    text = str(name)
    parts = text.split("/")
    if not text or text.startswith("/") or "\\" in text or ".." in parts or "" in parts:
        raise ValueError(f"unsafe ZIP member name {text!r}")
    return text


def _member_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return _dumps(value, JSON_OPTIONS | orjson.OPT_INDENT_2)
