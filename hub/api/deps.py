"""What the routers get through ``Depends``: the reader, the clock, the token check, and the
request helpers they share (time ranges, a device that must exist).

:func:`~hub.api.app.create_app` keeps an :class:`ApiContext` in ``app.state``; a test passes
its own reader, clock and health to ``create_app``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, cast

from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hub.alerts import Rule
from hub.api.models import DeviceOut, HubHealth, device_out
from hub.read import FleetReader, Streamer
from hub.rollup import MAX_RANGE
from hub.sync import SettingsDesk
from hub.when import TIME_SYNTAX, parse_when
from shared.config import Secret

DEFAULT_RANGE = timedelta(hours=1)


class LatestCache:
    """The fleet's newest values, fetched at most once per period for all stream clients."""

    def __init__(self, reader: FleetReader, now: Callable[[], datetime],
                 max_age_s: float = 0.5) -> None:
        self._reader = reader
        self._now = now
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._at = -1e9
        self._value: list[DeviceOut] = []

    def get(self) -> list[DeviceOut]:
        with self._lock:
            if time.monotonic() - self._at >= self._max_age_s:
                now = self._now()
                self._value = [device_out(r, now) for r in self._reader.devices()]
                self._at = time.monotonic()
            return self._value


@dataclass(frozen=True)
class ApiContext:
    """Everything the routes use, passed to ``create_app``."""

    reader: FleetReader
    streamer: Streamer
    health: Callable[[], HubHealth]
    token: Secret | None
    rules: tuple[Rule, ...]
    now: Callable[[], datetime]
    latest: LatestCache
    stream_period_s: float
    settings: SettingsDesk | None = None  # None: no broker connection to send them
    # Set when the server stops: open event streams end themselves, before uvicorn's
    # graceful period is over and it cancels them (which logged a traceback).
    stopping: threading.Event = field(default_factory=threading.Event)


def get_context(request: Request) -> ApiContext:
    return cast(ApiContext, request.app.state.fleetpulse)


Context = Annotated[ApiContext, Depends(get_context)]


def get_reader(context: Context) -> FleetReader:
    return context.reader


def get_clock(context: Context) -> Callable[[], datetime]:
    return context.now


Reader = Annotated[FleetReader, Depends(get_reader)]
Clock = Annotated[Callable[[], datetime], Depends(get_clock)]

# Declares the token in the OpenAPI description (the docs' Authorize button). Module-level:
# FastAPI resolves the handlers' string annotations in this module's namespace.
BEARER = HTTPBearer(auto_error=False, description="the hub's api_token (needed only when it "
                    "is set); ?token= works too")


def authorise(request: Request, context: Context,
              _: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
    """Refuse a request without the API token, when one is set."""
    # The parameter documents the scheme (the docs' Authorize button); the check reads the
    # header or ?token= itself.
    token = context.token
    if token is None:
        return
    given = request.query_params.get("token", "")
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        given = header[7:].strip()
    if not secrets.compare_digest(given.encode(), token.reveal().encode()):
        raise HTTPException(401, "a valid API token is required: send 'Authorization: "
                                 "Bearer <token>' (or ?token=<token>)",
                            headers={"WWW-Authenticate": "Bearer"})


Auth = Depends(authorise)

# The same time syntax as the CLI's --start/--end (hub/when.py).
When = Annotated[str | None, Query(description=f"{TIME_SYNTAX}; an age counts back from now")]


def parse_time(text: str, name: str, now: datetime) -> datetime:
    """Parse one time of the API's syntax; 422 naming the parameter when it is wrong."""
    try:
        return parse_when(text, now)
    except ValueError as exc:
        raise HTTPException(422, f"{name}: {exc}") from exc


def time_range(start: str | None, end: str | None, now: datetime,
               limit: timedelta = MAX_RANGE) -> tuple[datetime, datetime]:
    """Parse ``start``/``end`` (default: the hour up to now); 422 when the range is wrong."""
    end_ = parse_time(end, "end", now) if end is not None else now
    start_ = parse_time(start, "start", now) if start is not None else end_ - DEFAULT_RANGE
    if end_ <= start_:
        raise HTTPException(422, f"end ({end_.isoformat()}) must be after start "
                                 f"({start_.isoformat()})")
    if end_ - start_ > limit:
        raise HTTPException(422, f"the range of {(end_ - start_).days} days is longer than "
                                 f"the {limit.days} days allowed; ask for a shorter range")
    return start_, end_


def _unknown(device_id: str) -> HTTPException:
    return HTTPException(404, f"device {device_id!r} is not known "
                              "(GET /api/devices lists the fleet)")


def known_device(reader: FleetReader, device_id: str, now: datetime) -> DeviceOut:
    """The device as the API shows it; 404 when it is not known."""
    rows = reader.devices(device_id)
    if not rows:
        raise _unknown(device_id)
    return device_out(rows[0], now)


def require_device(reader: FleetReader, device_id: str) -> None:
    """404 when the device is not known."""
    if not reader.device_exists(device_id):
        raise _unknown(device_id)
