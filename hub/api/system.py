"""Routes about the hub itself: health (no token) and what it refused (quarantine)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from hub.api.deps import Auth, Clock, Context, Reader
from hub.api.models import HealthOut, QuarantineOut
from hub.api.responses import JSONResponse
from shared.errors import StoreError

router = APIRouter()


@router.get("/api/quarantine", response_model=QuarantineOut, dependencies=[Auth])
def quarantine(reader: Reader, clock: Clock,
               hours: Annotated[float, Query(gt=0, le=24 * 3660)] = 24,
               limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> QuarantineOut:
    """Messages refused over the last ``hours``: by reason, by device, the newest."""
    return QuarantineOut.model_validate(reader.quarantine(clock() - timedelta(hours=hours),
                                                          limit))


@router.get("/api/health", response_model=HealthOut,
            responses={503: {"model": HealthOut, "description": "broker or database down"}})
def hub_health(context: Context) -> Response:
    """Is the hub connected to the broker and the database; when did it last write."""
    hub = context.health()
    try:
        reachable = context.reader.check()
    except StoreError:
        reachable = False
    ok = hub.broker_connected and reachable
    body = HealthOut(status="ok" if ok else "degraded", broker_connected=hub.broker_connected,
                     database_reachable=reachable, last_write_at=hub.last_write_at,
                     backlog=hub.backlog, received=hub.received, stored=hub.stored,
                     quarantined=hub.quarantined, storage=hub.storage,
                     detection=hub.detection)
    return JSONResponse(body, status_code=200 if ok else 503)
