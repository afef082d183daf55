"""Streaming export writers (JSON, CSV, ZIP) with the size cap enforced while writing.

CSV columns come from the first chunk of records (nested keys flattened with "."); a later
record with a key outside those columns is an InvalidInput naming the key, because a CSV
header cannot grow after it is written and dropping the value would lose data silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import orjson

from src.services.domain import ExportFormat
from src.services.errors import ExportTooLarge, InvalidInput

CHUNK_ROWS = 5_000
CONTENT_TYPES = {"json": "application/json", "csv": "text/csv", "zip": "application/zip"}
#: Types written to a CSV cell as they are; anything else is looked at more closely.
SCALARS = frozenset({str, int, float, bool, type(None)})
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
            _write_checked(writer, data, capped)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return WrittenExport(capped.size, capped.digest.hexdigest(), CONTENT_TYPES[fmt])


def _write_checked(writer: Any, data: Any, out: _CappedFile) -> None:
    """Values the formats cannot hold (integers beyond 64 bits, say) are bad input."""
    import pyarrow as pa

    try:
        writer(data, out)
    except orjson.JSONEncodeError as exc:
        raise InvalidInput("data", f"cannot be written: {exc}") from None
    except (pa.ArrowException, OverflowError) as exc:
        raise InvalidInput("data", f"cannot be written as CSV: {exc}") from None


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
    if _is_dataframe(data):
        for start in range(0, len(data), CHUNK_ROWS):
            chunk = data.iloc[start : start + CHUNK_ROWS]
            out.write(chunk.to_csv(index=False, header=start == 0).encode())
        return
    if not _is_stream(data):
        raise InvalidInput("data", "a CSV export needs a DataFrame or an iterable of records")
    columns: list[str] | None = None
    for chunk in _chunks(data, CHUNK_ROWS):
        table = _arrow_table(chunk)
        if table is None:  # types pyarrow cannot hold in one column: the csv module can
            flat = [_flat_record(record) for record in chunk]
            columns = columns or list(dict.fromkeys(key for record in flat for key in record))
            out.write(_csv_chunk(flat, columns, header=out.size == 0))
            continue
        columns = columns or table.column_names
        out.write(_arrow_csv(table, columns, header=out.size == 0))


def _arrow_table(chunk: list[Any]) -> Any:
    """The chunk as a flat Arrow table (nested keys joined with "."), or None if untypable."""
    import pyarrow as pa

    if not all(type(record) is dict for record in chunk):
        if not all(isinstance(record, Mapping) for record in chunk):
            raise InvalidInput("data", "every CSV record must be an object (a dict)")
        chunk = [dict(record) for record in chunk]
    try:
        # pa.array infers the union of keys of every record, nested ones included.
        table = pa.Table.from_struct_array(pa.array(chunk))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    while any(pa.types.is_struct(field.type) for field in table.schema):
        table = table.flatten()
    for index, field in enumerate(table.schema):
        if not _csv_writable(field.type):
            values = [
                None if v is None else _dumps(v).decode() for v in table.column(index).to_pylist()
            ]
            table = table.set_column(index, field.name, pa.array(values, pa.string()))
    return table


def _csv_writable(arrow_type: Any) -> bool:
    import pyarrow as pa

    checks = (pa.types.is_list, pa.types.is_large_list, pa.types.is_map, pa.types.is_binary)
    return not any(check(arrow_type) for check in checks)


def _arrow_csv(table: Any, columns: list[str], header: bool) -> bytes:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    extra = [name for name in table.column_names if name not in columns]
    if extra:
        raise InvalidInput("data", f"column {extra[0]!r} first appears after the header")
    for name in columns:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table)))
    sink = pa.BufferOutputStream()
    options = pa_csv.WriteOptions(include_header=header, quoting_style="needed")
    pa_csv.write_csv(table.select(columns), sink, options)
    return bytes(sink.getvalue().to_pybytes())


def _is_dataframe(data: Any) -> bool:
    # Checked by name so that JSON and ZIP exports never pay for importing pandas.
    return type(data).__name__ == "DataFrame" and hasattr(data, "to_csv")


def _flat_record(record: Any) -> dict[str, Any]:
    if type(record) is not dict and not isinstance(record, Mapping):
        raise InvalidInput("data", "every CSV record must be an object (a dict)")
    for value in record.values():
        if type(value) not in SCALARS:
            flat: dict[str, Any] = {}
            _flatten_into(flat, "", record)
            return flat
    return record if type(record) is dict else dict(record)  # flat already: no copy


def _flatten_into(flat: dict[str, Any], prefix: str, record: Mapping[Any, Any]) -> None:
    """Nested keys joined with ".", as pandas.json_normalize names them."""
    for key, value in record.items():
        name = f"{prefix}{key}"
        if type(value) in SCALARS:
            flat[name] = value
        elif isinstance(value, Mapping) and value:
            _flatten_into(flat, name + ".", value)
        elif isinstance(value, (list, tuple, dict)):
            flat[name] = _dumps(value).decode()
        else:
            flat[name] = value


def _csv_chunk(flat: list[dict[str, Any]], columns: list[str], header: bool) -> bytes:
    known = set(columns)
    for record in flat:
        if len(record) > len(known) or not known.issuperset(record):
            extra = next(key for key in record if key not in known)
            raise InvalidInput("data", f"column {extra!r} first appears after the header")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(columns)
    writer.writerows([record.get(column) for column in columns] for record in flat)
    return buffer.getvalue().encode()


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
