"""The top processes: check a reading's ``processes`` section, lay it out as one compact row.

Pure: :func:`section_problem` checks what the types cannot (the counts add up, a list is
not longer than the processes counted); :func:`split_section` separates a section the
schema refuses from the reading that carried it, so a bad section is quarantined with its
reason and the reading's other values are stored all the same; :func:`process_row` and
:func:`section_from_row` turn a section into the row of table ``processes`` (migration
0006) and back, exactly.

Layout: one row per device per scan, keyed as the reading that carried it (a redelivered
reading adds nothing). The processes of both top lists are stored once each — a process
that is busy on CPU and on memory sits in both lists — as parallel typed arrays; the first
``top_cpu_n`` are the top by CPU, busiest first, and ``top_memory`` holds the 1-based
positions of the top by memory, in order.
"""

from __future__ import annotations

import operator
from datetime import datetime
from typing import Any, Protocol

import orjson
from pydantic import TypeAdapter, ValidationError

from shared.schema import ProcessesV1, ProcessInfo

SECTION = "processes"
_SECTION = TypeAdapter(ProcessesV1)
# The per-process fields in table order (the arrays of one row).
INFO_FIELDS: tuple[str, ...] = ("pid", "name", "user", "cpu_percent", "rss_bytes",
                                "memory_percent", "threads", "status", "io_read_bytes",
                                "io_write_bytes")
_COUNTS = ("count", "running", "sleeping", "zombie", "other")
COLUMNS: tuple[str, ...] = ("device_id", "ts", "session_id", "seq", "received_at", "period_s",
                            *_COUNTS, "top_cpu_n", "top_memory", "pid", "name", "user_name",
                            "cpu_percent", "rss_bytes", "memory_percent", "threads", "status",
                            "io_read_bytes", "io_write_bytes")
INSERT_SQL = (f"insert into processes ({', '.join(COLUMNS)}) values "
              f"({', '.join(['%s'] * len(COLUMNS))}) on conflict do nothing")
# The batch's rows go in by binary COPY into a temporary table, then one INSERT … ON
# CONFLICT DO NOTHING (a redelivered reading adds nothing), as the readings do: ~4× less
# time than one INSERT per row (bench/process_storage.py).
COPY_TYPES: tuple[str, ...] = (
    "text", "timestamptz", "text", "int8", "timestamptz", "float4", "int8", "int8", "int8",
    "int8", "int8", "int2", "int2[]", "int8[]", "text[]", "text[]", "float4[]", "int8[]",
    "float4[]", "int8[]", "text[]", "int8[]", "int8[]")
STAGE_SQL = "create temp table processes_in (like processes) on commit drop"
COPY_SQL = f"copy processes_in ({', '.join(COLUMNS)}) from stdin (format binary)"
MOVE_SQL = "insert into processes select * from processes_in on conflict do nothing"
_INFO = operator.itemgetter(*INFO_FIELDS)  # a process's values in table order
MAX_TOP_N = 1000  # the agent's process_top_n bound: positions fit a smallint


def section_problem(section: ProcessesV1) -> str | None:
    """Say what is inconsistent in a section the types accept; None if nothing."""
    states = sum(section[k] for k in _COUNTS[1:])  # type: ignore[literal-required]
    if states != section["count"]:
        return (f"processes.count is {section['count']} but running + sleeping + zombie + "
                f"other is {states}")
    for name in ("top_cpu", "top_memory"):
        top: list[ProcessInfo] = section[name]
        if len(top) > MAX_TOP_N:
            return f"processes.{name} lists {len(top)} processes, over {MAX_TOP_N}"
        if len(top) > section["count"]:
            return (f"processes.{name} lists {len(top)} processes, more than the "
                    f"{section['count']} counted")
    return None


def _describe(error: ValidationError, limit: int = 3) -> str:
    parts = []
    for item in error.errors(include_url=False)[:limit]:
        where = ".".join(str(p) for p in (SECTION, *item["loc"]))
        parts.append(f"{where}: {item['msg']}")
    more = error.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def split_section(payload: bytes) -> tuple[bytes, str] | None:
    """Return the reading without a section the schema refuses, and why it was refused.

    None when the payload has no section or the section is valid (then the reading itself
    is what is wrong). Called only for a reading the schema refused, so it costs nothing
    on the hot path.
    """
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or SECTION not in data:
        return None
    section = data.pop(SECTION)
    try:
        _SECTION.validate_python(section)
    except ValidationError as exc:
        return orjson.dumps(data), _describe(exc)
    return None


def process_row(device_id: str, ts: datetime, session_id: str, seq: int,
                received_at: datetime, section: ProcessesV1) -> tuple[Any, ...]:
    """Return the row of table ``processes`` for one section, in :data:`COLUMNS` order."""
    # itemgetter and a dict of positions: this runs for every section the hub takes in.
    entries: list[tuple[Any, ...]] = [_INFO(info) for info in section["top_cpu"]]
    position: dict[tuple[Any, ...], int] = {}
    for n, key in enumerate(entries, 1):
        position.setdefault(key, n)
    top_memory = []
    for info in section["top_memory"]:
        key = _INFO(info)
        at = position.get(key)
        if at is None:
            entries.append(key)
            at = position[key] = len(entries)
        top_memory.append(at)
    arrays = [list(a) for a in zip(*entries, strict=True)] if entries else \
        [[] for _ in INFO_FIELDS]
    return (device_id, ts, session_id, seq, received_at, section["period_s"],
            section["count"], section["running"], section["sleeping"], section["zombie"],
            section["other"], len(section["top_cpu"]), top_memory, *arrays)


def _float(value: float | None) -> float | None:
    # Stored as real (float4, ~7 significant digits): this gives back what the agent sent
    # (one or two decimals), not float4's binary neighbour (12.300000190734863).
    return None if value is None else float(f"{value:.7g}")


def section_from_row(row: dict[str, Any]) -> ProcessesV1:
    """Rebuild the section from a row of ``processes`` (as a dict by column name)."""
    names = {"user": "user_name"}
    n = len(row["pid"])
    infos: list[ProcessInfo] = []
    for i in range(n):
        info: dict[str, Any] = {f: row[names.get(f, f)][i] for f in INFO_FIELDS}
        info["cpu_percent"] = _float(info["cpu_percent"])
        info["memory_percent"] = _float(info["memory_percent"])
        infos.append(info)  # type: ignore[arg-type]
    return {"period_s": _float(row["period_s"]) or 0.0, "count": row["count"],
            "running": row["running"], "sleeping": row["sleeping"], "zombie": row["zombie"],
            "other": row["other"], "top_cpu": infos[:row["top_cpu_n"]],
            "top_memory": [infos[p - 1] for p in row["top_memory"]]}


# --- the read side (the API and the dashboard) ---------------------------------------------

_AT_SQL = ("select * from processes where device_id = %(device)s and ts <= %(at)s "
           "and ts > %(at)s - make_interval(secs => %(within)s) "
           "order by ts desc, session_id desc, seq desc limit 1")
# Thinned to at most max_samples evenly spaced samples: every k-th by time.
_HISTORY_SQL = (
    "select ts, session_id, seq, period_s, count, running, sleeping, zombie, other, "
    "name[1] as top_cpu_name, cpu_percent[1] as top_cpu_percent, "
    "name[top_memory[1]] as top_memory_name, rss_bytes[top_memory[1]] as top_memory_rss_bytes "
    "from (select *, row_number() over (order by ts) - 1 as i, count(*) over () as n "
    "from processes where device_id = %(device)s and ts >= %(start)s and ts < %(end)s) p "
    "where i %% greatest(1, ceil(n::float8 / %(max_samples)s)::bigint) = 0 order by ts")


class Querier(Protocol):
    def query(self, text: str, params: Any = None) -> list[dict[str, Any]]: ...


class ProcessReader:
    """Read process samples back: the one in force at a moment, and a range's summary."""

    def __init__(self, db: Querier) -> None:
        self._db = db

    def at(self, device_id: str, at: datetime, within_s: float) -> dict[str, Any] | None:
        """Return the newest sample at or before ``at`` (no older than ``within_s``)."""
        rows = self._db.query(_AT_SQL, {"device": device_id, "at": at, "within": within_s})
        if not rows:
            return None
        row = rows[0]
        return {"ts": row["ts"], "session_id": row["session_id"], "seq": row["seq"],
                **section_from_row(row)}

    def history(self, device_id: str, start: datetime, end: datetime,
                max_samples: int) -> list[dict[str, Any]]:
        """Return the samples of [start, end) (counts and the busiest of each list)."""
        rows = self._db.query(_HISTORY_SQL, {"device": device_id, "start": start, "end": end,
                                             "max_samples": max_samples})
        for row in rows:
            row["period_s"] = _float(row["period_s"])
            row["top_cpu_percent"] = _float(row["top_cpu_percent"])
        return rows
