"""Routes of a device's history: series at automatic resolution, completeness, export."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response, StreamingResponse

from hub.api.deps import Auth, Clock, Context, Reader, When, require_device, time_range
from hub.api.models import CompletenessOut, SeriesOut, completeness_out
from hub.api.responses import JSONResponse
from hub.export import MEDIA_TYPES, encode_chunks, export_sql
from hub.read import SERIES_COLUMNS
from hub.rollup import choose_resolution

MAX_RAW_RANGE = timedelta(days=7)

router = APIRouter(dependencies=[Auth])


@router.get("/api/devices/{device_id}/series", response_model=SeriesOut)
def series(device_id: str, reader: Reader, clock: Clock, start: When = None, end: When = None,
           resolution: Literal["auto", "raw", "1m", "1h"] = "auto",
           columns: Annotated[str | None, Query(
               description="comma-separated; default all of " + ", ".join(SERIES_COLUMNS)
           )] = None,
           max_points: Annotated[int, Query(ge=10, le=5000)] = 1000) -> Response:
    """A device's values over [start, end): per-second for short ranges, minute or hour
    rollups for long ones, binned to at most ``max_points`` points (mean, min, max)."""
    start_, end_ = time_range(start, end, clock())
    wanted = SERIES_COLUMNS
    if columns:
        wanted = tuple(c.strip() for c in columns.split(",") if c.strip())
        unknown = [c for c in wanted if c not in SERIES_COLUMNS]
        if unknown or not wanted:
            raise HTTPException(422, f"unknown column(s) {', '.join(unknown) or '(none)'}; "
                                     f"known: {', '.join(SERIES_COLUMNS)}")
    if resolution == "raw" and end_ - start_ > MAX_RAW_RANGE:
        raise HTTPException(422, f"resolution=raw covers at most {MAX_RAW_RANGE.days} days; "
                                 "use resolution=auto for longer ranges")
    require_device(reader, device_id)
    chosen = choose_resolution(start_, end_, max_points, resolution)
    data = reader.series(device_id, start_, end_, chosen, wanted)
    # Serialised straight by orjson: validating ~30,000 floats against SeriesOut again
    # would cost more than the query (the model still documents the shape).
    return JSONResponse({"device_id": device_id, "start": start_, "end": end_,
                         "source": chosen.source, "step_s": chosen.step_s, **data})


@router.get("/api/devices/{device_id}/completeness", response_model=CompletenessOut)
def device_completeness(device_id: str, reader: Reader, clock: Clock, start: When = None,
                        end: When = None) -> CompletenessOut:
    """Readings expected (range / interval) against readings stored."""
    start_, end_ = time_range(start, end, clock())
    require_device(reader, device_id)
    return completeness_out(reader.completeness(device_id, start_, end_))


@router.get("/api/devices/{device_id}/export", response_class=StreamingResponse,
            responses={200: {"content": {MEDIA_TYPES["csv"]: {}, MEDIA_TYPES["parquet"]: {}}}})
def export(device_id: str, context: Context, start: When = None, end: When = None,
           format: Literal["csv", "parquet"] = "csv") -> StreamingResponse:
    """A device's per-second history as CSV or Parquet, streamed as it is read."""
    start_, end_ = time_range(start, end, context.now())
    require_device(context.reader, device_id)
    chunks = context.streamer.stream(export_sql(True), {"device": device_id, "start": start_,
                                                        "end": end_})
    name = f"{device_id}_{start_:%Y%m%dT%H%M%SZ}_{end_:%Y%m%dT%H%M%SZ}.{format}"
    return StreamingResponse(encode_chunks(chunks, format), media_type=MEDIA_TYPES[format],
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})
