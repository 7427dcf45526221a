"""Export per-second history to CSV or Parquet, streaming in constant memory.

Rows come in chunks from a server-side cursor (``Store.stream``) and go out as they come:
CSV line by line, Parquet one row group per chunk, with typed columns derived from the
schema (timestamps in UTC, arrays as lists, the lists of partitions, disks, interfaces and
temperatures as lists of typed structs; CSV writes those as JSON text). The same writer serves
``fleetpulse-hub export`` (to a file, with a progress bar on stderr) and the API (to a
streaming HTTP response).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, BinaryIO, Literal, Protocol, TextIO

import orjson

from hub import cold
from shared.schema import metrics_columns

Format = Literal["csv", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "parquet")
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}
COLUMNS = metrics_columns()
Chunks = Iterable[tuple[list[str], list[tuple[Any, ...]]]]


def export_sql(device: bool) -> str:
    """Return the query of the export: one device's or every device's rows in a range.

    Parameters: ``%(device)s`` (when ``device``), ``%(start)s``, ``%(end)s``.
    """
    names = ", ".join(c.name for c in COLUMNS)
    if device:
        return f"select {names} from {_source(True)} order by device_id, ts, session_id, seq"
    # The fleet: device after device, each sorted on its own, so rows stream from the first
    # device on instead of after a sort of every device's rows of both tiers. Every device
    # with readings is in devices (the hot tier's writes) or has cold blocks.
    return (f"select m.* from (select device_id from devices union select device_id from "
            f"{cold.TABLE} order by 1) d cross join lateral (select {names} from "
            "metrics_history(d.device_id, %(start)s, %(end)s) order by ts, session_id, seq) m")


def _source(device: bool) -> str:
    # Both tiers: the hot rows and the cold tier's blocks read back as rows (hub/cold.py).
    return f"metrics_history({'%(device)s' if device else 'null'}, %(start)s, %(end)s)"


def count_sql(device: bool) -> str:
    return f"select count(*) as n from {_source(device)}"


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return value


class _Sink(io.RawIOBase):
    """A write-only file that hands its bytes over on :meth:`drain` (for streaming)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def drain(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


def encode_chunks(chunks: Chunks, fmt: Format,
                  on_rows: Callable[[int], None] = lambda n: None) -> Iterator[bytes]:
    """Turn row chunks into the bytes of a CSV or Parquet file, piece by piece."""
    expected = [c.name for c in COLUMNS]
    if fmt == "csv":
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(expected)
        for names, rows in chunks:
            assert names == expected, "export query and schema disagree"
            writer.writerows([_csv_cell(v) for v in row] for row in rows)
            yield text.getvalue().encode()
            text.seek(0)
            text.truncate()
            on_rows(len(rows))
        if text.tell():
            yield text.getvalue().encode()  # the header of an empty export
        return
    # Imported here: pyarrow is ~30 MB of a running hub's memory, and only this needs it.
    from hub.parquet import write_parquet

    sink = _Sink()
    for _ in write_parquet(chunks, sink, expected, on_rows):
        yield sink.drain()
    yield sink.drain()
    yield sink.drain()


def progress_line(done: int, total: int, elapsed_s: float, width: int = 30) -> str:
    """Render ``[#####-----]  45%  12,345/27,000 rows  3,100 rows/s``."""
    fraction = 1.0 if total <= 0 else min(1.0, done / total)
    filled = int(fraction * width)
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    return (f"[{'#' * filled}{'-' * (width - filled)}] {fraction:4.0%}  "
            f"{done:,}/{total:,} rows  {rate:,.0f} rows/s")


def parse_format(name: str) -> Format:
    if name not in FORMATS:
        raise ValueError(f"{name!r} is not an export format (use csv or parquet)")
    return "csv" if name == "csv" else "parquet"


def format_for_path(path: str) -> Format:
    """Guess the format from a file name: ``.parquet``/``.pq`` → Parquet, else CSV."""
    return "parquet" if path.lower().endswith((".parquet", ".pq")) else "csv"


class Database(Protocol):
    def query(self, text: str, params: Any = None) -> list[dict[str, Any]]: ...
    def stream(self, text: str, params: Any = None,
               chunk_rows: int = 5000) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]: ...


def export_to_file(db: Database, out: BinaryIO, fmt: Format, start: datetime, end: datetime,
                   device: str | None = None, progress: TextIO | None = None,
                   chunk_rows: int = 5000, clock: Callable[[], float] = time.monotonic) -> int:
    """Write one device's (or the fleet's) rows in [start, end) to ``out``; return the count.

    Args:
        progress: where to draw the progress bar (stderr), redrawn at most 5 times a second.
    """
    params = {"device": device, "start": start, "end": end}
    total = int(db.query(count_sql(device is not None), params)[0]["n"])
    began = clock()
    done = 0
    drawn = -1.0

    def advance(rows: int) -> None:
        nonlocal done, drawn
        done += rows
        if progress is not None and (clock() - drawn >= 0.2 or done >= total):
            drawn = clock()
            progress.write("\r" + progress_line(done, total, drawn - began))
            progress.flush()

    for piece in encode_chunks(db.stream(export_sql(device is not None), params, chunk_rows),
                               fmt, advance):
        out.write(piece)
    if progress is not None:
        progress.write("\r" + progress_line(done, total, clock() - began) + "\n")
        progress.flush()
    return done
