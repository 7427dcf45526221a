"""The API's process routes: a device's top processes now or at a chosen time, and over a range.

    GET /api/devices/{id}/processes            the sample in force at ``at`` (default now)
    GET /api/devices/{id}/processes/history    the samples of a range: counts by state and
                                               the busiest process of each list

Added to the app by :func:`hub.api.create_app` with its token check.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from hub.processes import ProcessReader
from hub.when import TIME_SYNTAX, parse_when

# A sample older than this before ``at`` is not "in force": the agent scans every 10 s by
# default; a few periods late, the table would show processes long gone.
STALE_AFTER = timedelta(minutes=5)
MAX_HISTORY_RANGE = timedelta(days=31)


class ProcessOut(BaseModel):
    pid: int
    name: str
    user: str | None
    cpu_percent: float | None  # of one core, as top counts it
    rss_bytes: int
    memory_percent: float | None
    threads: int | None
    status: str
    io_read_bytes: int | None
    io_write_bytes: int | None


class ProcessSample(BaseModel):
    ts: datetime
    session_id: str
    seq: int
    period_s: float
    count: int
    running: int
    sleeping: int
    zombie: int
    other: int
    top_cpu: list[ProcessOut]
    top_memory: list[ProcessOut]


class ProcessesAt(BaseModel):
    device_id: str
    at: datetime
    sample: ProcessSample | None  # None: no sample in the 5 minutes up to ``at``


class ProcessSummary(BaseModel):
    ts: datetime
    session_id: str
    seq: int
    period_s: float | None
    count: int
    running: int
    sleeping: int
    zombie: int
    other: int
    top_cpu_name: str | None
    top_cpu_percent: float | None
    top_memory_name: str | None
    top_memory_rss_bytes: int | None


class ProcessHistory(BaseModel):
    device_id: str
    start: datetime
    end: datetime
    samples: list[ProcessSummary]


When = Annotated[str | None, Query(description=f"{TIME_SYNTAX}; an age counts back from now")]


def _when(text: str, name: str, now: datetime) -> datetime:
    try:
        return parse_when(text, now)
    except ValueError as exc:
        raise HTTPException(422, f"{name}: {exc}") from exc


def processes_router(reader: ProcessReader, exists: Callable[[str], None],
                     now: Callable[[], datetime]) -> APIRouter:
    """Build the routes; ``exists`` raises a 404 for an unknown device."""
    router = APIRouter()

    @router.get("/api/devices/{device_id}/processes", response_model=ProcessesAt)
    def processes_at(device_id: str, at: When = None) -> dict[str, Any]:
        """The top processes by CPU and by memory, and the counts by state, of the newest
        sample at or before ``at`` (default now)."""
        moment = _when(at, "at", now()) if at is not None else now()
        exists(device_id)
        sample = reader.at(device_id, moment, STALE_AFTER.total_seconds())
        return {"device_id": device_id, "at": moment, "sample": sample}

    @router.get("/api/devices/{device_id}/processes/history", response_model=ProcessHistory)
    def processes_history(device_id: str, start: When = None, end: When = None,
                          max_samples: Annotated[int, Query(ge=10, le=5000)] = 1000,
                          ) -> dict[str, Any]:
        """The samples of [start, end) (default the last hour), evenly thinned to at most
        ``max_samples``: counts by state and the busiest process of each list."""
        current = now()
        end_ = _when(end, "end", current) if end is not None else current
        start_ = _when(start, "start", current) if start is not None else end_ - timedelta(hours=1)
        if end_ <= start_:
            raise HTTPException(422, f"end ({end_.isoformat()}) must be after start "
                                     f"({start_.isoformat()})")
        if end_ - start_ > MAX_HISTORY_RANGE:
            raise HTTPException(422, f"the range is longer than the {MAX_HISTORY_RANGE.days} "
                                     "days allowed; ask for a shorter range")
        exists(device_id)
        return {"device_id": device_id, "start": start_, "end": end_,
                "samples": reader.history(device_id, start_, end_, max_samples)}

    return router
