"""Routes of a device's top processes: the sample in force at a time, and those of a range.

    GET /api/devices/{id}/processes            the sample in force at ``at`` (default now)
    GET /api/devices/{id}/processes/history    the samples of a range: counts by state and
                                               the busiest process of each list
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from hub.api.deps import Auth, Clock, Reader, When, parse_time, require_device, time_range
from hub.api.models import ProcessesAt, ProcessHistory, ProcessSample, ProcessSummary
from hub.processes import ProcessReader

# A sample older than this before ``at`` is not "in force": the agent scans every 10 s by
# default; a few periods late, the table would show processes long gone.
STALE_AFTER = timedelta(minutes=5)
MAX_HISTORY_RANGE = timedelta(days=31)

router = APIRouter(dependencies=[Auth])


@router.get("/api/devices/{device_id}/processes", response_model=ProcessesAt)
def processes_at(device_id: str, reader: Reader, clock: Clock, at: When = None) -> ProcessesAt:
    """The top processes by CPU and by memory, and the counts by state, of the newest
    sample at or before ``at`` (default now)."""
    moment = parse_time(at, "at", clock()) if at is not None else clock()
    require_device(reader, device_id)
    sample = ProcessReader(reader.db).at(device_id, moment, STALE_AFTER.total_seconds())
    return ProcessesAt(device_id=device_id, at=moment,
                       sample=None if sample is None else ProcessSample.model_validate(sample))


@router.get("/api/devices/{device_id}/processes/history", response_model=ProcessHistory)
def processes_history(device_id: str, reader: Reader, clock: Clock, start: When = None,
                      end: When = None,
                      max_samples: Annotated[int, Query(ge=10, le=5000)] = 1000,
                      ) -> ProcessHistory:
    """The samples of [start, end) (default the last hour), evenly thinned to at most
    ``max_samples``: counts by state and the busiest process of each list."""
    start_, end_ = time_range(start, end, clock(), MAX_HISTORY_RANGE)
    require_device(reader, device_id)
    rows = ProcessReader(reader.db).history(device_id, start_, end_, max_samples)
    return ProcessHistory(device_id=device_id, start=start_, end=end_,
                          samples=[ProcessSummary.model_validate(r) for r in rows])
