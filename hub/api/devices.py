"""Routes of the fleet and its devices: counts, newest values, one device, the live stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import anyio.to_thread
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from hub.api.deps import Auth, Clock, Context, Reader, known_device
from hub.api.models import (
    DeviceDetail,
    DeviceOut,
    FleetSummary,
    completeness_out,
    device_out,
    summarise,
)
from shared.errors import StoreError

router = APIRouter(dependencies=[Auth])


@router.get("/api/fleet", response_model=FleetSummary)
def fleet(reader: Reader, clock: Clock) -> FleetSummary:
    """Count the devices by state and those with open alerts."""
    return summarise([device_out(r, clock()) for r in reader.devices()])


@router.get("/api/devices", response_model=list[DeviceOut])
def devices(reader: Reader, clock: Clock) -> list[DeviceOut]:
    """List every device with its status, newest values and open alert rules."""
    current = clock()
    return [device_out(r, current) for r in reader.devices()]


@router.get("/api/devices/{device_id}", response_model=DeviceDetail)
def device(device_id: str, reader: Reader, clock: Clock) -> DeviceDetail:
    """One device: newest values, static facts, completeness over 1 h and 24 h."""
    out = known_device(reader, device_id, clock())
    current = clock()
    last_hour = reader.completeness(device_id, current - timedelta(hours=1), current)
    last_day = reader.completeness(device_id, current - timedelta(hours=24), current)
    return DeviceDetail(**dict(out), meta=reader.meta(device_id),
                        completeness_1h=completeness_out(last_hour),
                        completeness_24h=completeness_out(last_day))


@router.get("/api/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def stream(request: Request, context: Context,
                 device: str | None = None) -> StreamingResponse:
    """Server-Sent Events: an event ``fleet`` each second with every device's newest
    values (or one device's, with ``device``) and the fleet summary."""

    async def events() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        while not context.stopping.is_set() and not await request.is_disconnected():
            try:
                rows = await anyio.to_thread.run_sync(context.latest.get)
                chosen = [d.model_dump() for d in rows if device is None or d.device_id == device]
                # Dumped to Python values and serialised by orjson, as the dashboard reads it.
                body = {"at": context.now(), "summary": summarise(rows).model_dump(),
                        "devices": chosen}
                yield b"event: fleet\ndata: " + orjson.dumps(body) + b"\n\n"
            except StoreError as exc:
                yield b"event: problem\ndata: " + orjson.dumps({"detail": str(exc)}) + b"\n\n"
            await asyncio.sleep(context.stream_period_s)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
