"""Streaming export writers (JSON, CSV, ZIP) with the size cap enforced while writing.

Tabular data is a list or an iterator of records, or a pandas DataFrame (its rows as records;
its index is not written). Every format writes the same rows: dates and times as ISO 8601 text,
missing values (None, NaN, NaT, pd.NA) as null (an empty CSV cell). This module never imports
pandas: a DataFrame arrives with pandas loaded, and is read through its own methods.

CSV columns come from the first chunk of records (nested keys flattened with "."); a later
record with a key outside those columns is an InvalidInput naming the key, because a CSV
header cannot grow after it is written and dropping the value would lose data silently.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, time
from itertools import islice
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol, cast

import orjson

from src.services.domain import ExportFormat
from src.services.errors import ExportTooLarge, InvalidInput, StorageFull

CHUNK_ROWS = 5_000
CONTENT_TYPES = {"json": "application/json", "csv": "text/csv", "zip": "application/zip"}
#: Types written to a CSV cell as they are; anything else is looked at more closely.
SCALARS = frozenset({str, int, float, bool, type(None)})
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


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
    """What orjson cannot write itself: pandas' missing markers as null, its Timestamp and
    Timedelta (and anything else with isoformat) as ISO text, the rest as str."""
    if type(value).__name__ in ("NaTType", "NAType"):
        return None
    iso = getattr(value, "isoformat", None)
    return iso() if callable(iso) else str(value)


def _dumps(value: Any, option: int = JSON_OPTIONS) -> bytes:
    return orjson.dumps(value, default=_default, option=option)


def write_export(fmt: ExportFormat, data: Any, path: Path, max_bytes: int) -> WrittenExport:
    """Write `data` to `path` in `fmt`; a partial or failed file never stays behind."""
    writer = {"json": _write_json, "csv": _write_csv, "zip": _write_zip}.get(fmt)
    if writer is None:
        raise InvalidInput("export_format", f"unknown format {fmt!r}; use json, csv or zip")
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as raw:
            capped = _CappedFile(raw, max_bytes)
            _write_checked(writer, data, capped)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(
                "no space left for exports (BULK_EXPORT_PATH); nothing was written"
            ) from None
        raise
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
    except UnicodeEncodeError:  # a lone surrogate in a key, a value or a member name
        raise InvalidInput("data", "holds text that is not Unicode (a lone surrogate)") from None


def _is_stream(data: Any) -> bool:
    return isinstance(data, Iterable) and not isinstance(data, (str, bytes, bytearray, Mapping))


def _is_dataframe(data: Any) -> bool:
    # Checked by name so that exports without a DataFrame never pay for importing pandas.
    return type(data).__name__ == "DataFrame" and hasattr(data, "iloc")


def _record_chunks(data: Any) -> Iterator[list[Any]]:
    """Rows in chunks of CHUNK_ROWS: a DataFrame's as records, an iterable's as they come."""
    return _frame_chunks(data) if _is_dataframe(data) else _chunks(data, CHUNK_ROWS)


def _frame_chunks(frame: Any) -> Iterator[list[dict[str, Any]]]:
    names = [str(name) for name in frame.columns]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is not None:  # records would keep only one of them
        raise InvalidInput("data", f"DataFrame column {repeated!r} appears more than once")
    for start in range(0, len(frame), CHUNK_ROWS):
        chunk = frame.iloc[start : start + CHUNK_ROWS]
        columns = [_frame_column(chunk.iloc[:, index]) for index in range(len(names))]
        yield [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _frame_column(series: Any) -> list[Any]:
    """One column's values as plain Python: ISO text for dates, None where missing."""
    missing = series.isna().tolist()
    kind = series.dtype.kind
    if kind in "Mm":  # datetime64 (with or without a time zone), timedelta64
        pairs = zip(series, missing, strict=True)
        return [None if gap else value.isoformat() for value, gap in pairs]
    if kind == "O":  # anything: Timestamps, dates, numpy scalars, nested values
        return [None if gap else _plain(value) for value, gap in zip(series, missing, strict=True)]
    values: list[Any] = series.tolist()
    if any(missing):
        return [None if gap else value for value, gap in zip(values, missing, strict=True)]
    return values


def _plain(value: Any) -> Any:
    if isinstance(value, date | time):  # datetime and pandas' Timestamp included
        return value.isoformat()
    item = getattr(value, "item", None)  # a numpy scalar
    return item() if callable(item) and type(value).__module__ == "numpy" else value


def _write_json(data: Any, out: _Sink) -> None:
    if not _is_stream(data) and not _is_dataframe(data):
        out.write(_dumps(data))
        return
    out.write(b"[")
    first = True
    for chunk in _record_chunks(data):
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


def _write_csv(data: Any, out: _Sink) -> None:
    if not _is_stream(data) and not _is_dataframe(data):
        raise InvalidInput("data", "a CSV export needs a DataFrame or an iterable of records")
    columns: list[str] | None = None
    for chunk in _record_chunks(data):
        header = columns is None
        table = _arrow_table(chunk)
        if table is None:  # types pyarrow cannot hold in one column: the csv module can
            flat = [_flat_record(record) for record in chunk]
            columns = columns or list(dict.fromkeys(key for record in flat for key in record))
            out.write(_csv_chunk(flat, columns, header))
            continue
        columns = columns or table.column_names
        out.write(_arrow_csv(table, columns, header))


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
        column = _csv_column(table.column(index))
        if column is not None:
            table = table.set_column(index, field.name, column)
    return table


def _csv_column(column: Any) -> Any:
    """The column as the CSV should hold it, or None when it can be written as it is: NaN
    becomes null, dates and times ISO text (as the JSON export writes them), nested values
    their JSON text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_floating(kind):
        return pc.if_else(pc.is_nan(column), pa.scalar(None, kind), column)
    if pa.types.is_timestamp(kind) and kind.unit == "us" and kind.tz in (None, "UTC"):
        return _utc_iso(column)
    if pa.types.is_temporal(kind):
        values = [None if v is None else str(_cell_text(v)) for v in column.to_pylist()]
        return pa.array(values, pa.string())
    nested = (pa.types.is_list, pa.types.is_large_list, pa.types.is_map, pa.types.is_binary)
    if any(check(kind) for check in nested):
        values = [None if v is None else _dumps(v).decode() for v in column.to_pylist()]
        return pa.array(values, pa.string())
    return None


def _utc_iso(column: Any) -> Any:
    """Microsecond timestamps, naive or UTC, as datetime.isoformat writes them; in Arrow,
    because a million Python datetimes cost seconds."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.cast(pc.cast(column, pa.timestamp("us")), pa.string())  # 2026-01-02 03:04:05.000000
    text = pc.replace_substring(pc.replace_substring(text, " ", "T"), ".000000", "")
    if column.type.tz is None:
        return text
    return pc.binary_join_element_wise(text, pa.scalar("+00:00"), "")


def _cell_text(value: Any) -> Any:
    """A CSV cell as the JSON export writes the value: NaN as null, dates as ISO text."""
    if type(value) in SCALARS:
        return None if value != value else value  # only NaN differs from itself
    return _default(value)


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
    writer.writerows([_cell_text(record.get(column)) for column in columns] for record in flat)
    return buffer.getvalue().encode()


def _write_zip(data: Any, out: _CappedFile) -> None:
    members = data.items() if isinstance(data, Mapping) else data
    if not _is_stream(members) and not isinstance(data, Mapping):
        raise InvalidInput("data", "a ZIP export needs a mapping or (name, value) pairs")
    with zipfile.ZipFile(cast(IO[bytes], out), "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in members:
            _write_member(archive, _member_name(name), value)


def _write_member(archive: zipfile.ZipFile, name: str, value: Any) -> None:
    """Text and bytes as they are; a file by its path; rows (a DataFrame, records) as CSV
    when the name ends in .csv, else JSON; a DataFrame or an iterator streamed in."""
    as_csv = name.lower().endswith(".csv") and not isinstance(value, (str, bytes, bytearray))
    if as_csv or _is_dataframe(value) or _is_iterator(value):
        writer = _write_csv if as_csv else _write_json
        with archive.open(name, "w", force_zip64=True) as member:
            writer(value, member)
        return
    if isinstance(value, Path):  # a file (a fetched body, say): streamed, not read whole
        archive.write(value, name)
        return
    archive.writestr(name, _member_bytes(value))


def _is_iterator(value: Any) -> bool:
    return isinstance(value, Iterator)


def _member_name(name: Any) -> str:
    text = str(name)
    parts = text.split("/")
    if not text or text.startswith("/") or "\\" in text or ".." in parts or "" in parts:
        shown = text[:100].encode("utf-8", "backslashreplace").decode()
        raise InvalidInput(
            "data", f"{shown!r} is an unsafe ZIP member name (relative, no '..', no '\\')"
        )
    return text


def _member_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return _dumps(value, JSON_OPTIONS | orjson.OPT_INDENT_2)
