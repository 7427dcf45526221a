"""The HTTP API and the dashboard: FastAPI over :class:`~hub.read.FleetReader`.

    GET /api/fleet                        counts: online, offline, silent, alerting
    GET /api/devices                      every device with status and newest values
    GET /api/devices/{id}                 one device: newest values, meta, completeness
    GET /api/devices/{id}/series          a time range at automatic resolution (≤ ~1000 points)
    GET /api/devices/{id}/completeness    readings expected vs stored over a range
    GET /api/devices/{id}/alerts          its alerts, open first
    GET /api/devices/{id}/export          its history as CSV or Parquet (streamed)
    GET /api/devices/{id}/processes       its top processes now or at a time (api_processes.py)
    GET /api/devices/{id}/processes/history   its process samples over a range
    GET /api/alerts                       alerts of the fleet
    GET /api/quarantine                   what was refused, summarised
    GET /api/health                       broker, database, last write, backlog (no token)
    GET /api/stream                       Server-Sent Events: the fleet's newest values each second
    GET /api/openapi.json                 this API described
    GET /docs                             the API's interactive docs (Swagger UI, shipped)
    GET /                                 the dashboard (hub/web)

With ``api_token`` set every ``/api`` route but health needs ``Authorization: Bearer
<token>``; ``?token=`` is accepted too, because a browser's EventSource and download links
cannot send headers.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio.to_thread
import orjson
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

from hub.alerts import Rule
from hub.api_processes import processes_router
from hub.export import MEDIA_TYPES, encode_chunks, export_sql
from hub.processes import ProcessReader
from hub.read import SERIES_COLUMNS, FleetReader, Streamer
from hub.rollup import MAX_RANGE, choose_resolution
from hub.when import TIME_SYNTAX, parse_when
from shared.config import Secret
from shared.errors import StoreError

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
DEFAULT_RANGE = timedelta(hours=1)
MAX_RAW_RANGE = timedelta(days=7)
SILENT_INTERVALS = 10  # online, yet no reading for this many intervals: shown as "silent"
STREAM_PERIOD_S = 1.0


class JSONResponse(Response):
    """JSON by orjson: ~10× faster than the standard library on series of numbers."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot serialise {type(value).__name__}")


# --- output models (what the API promises; documented in the OpenAPI description) -----------

class FleetSummary(BaseModel):
    devices: int
    online: int
    offline: int
    silent: int
    unknown: int
    alerting: int
    open_alerts: int


class DeviceOut(BaseModel):
    device_id: str
    hostname: str | None
    pi_model: str | None
    os: str | None
    status: str  # online, offline, unknown (as the device last said)
    state: str  # online, offline, unknown or silent (online but no readings arriving)
    status_since: datetime | None
    first_seen: datetime
    last_seen: datetime | None
    last_received_at: datetime | None
    interval_s: float | None
    alerts: list[str]
    latest: dict[str, Any] | None  # the newest reading's main values, None before any


class CompletenessOut(BaseModel):
    start: datetime
    end: datetime
    expected: int
    stored: int
    ratio: float | None


class DeviceDetail(DeviceOut):
    meta: dict[str, Any] | None
    completeness_1h: CompletenessOut
    completeness_24h: CompletenessOut


class Aggregates(BaseModel):
    mean: list[float | None]
    min: list[float | None]
    max: list[float | None]


class SeriesOut(BaseModel):
    device_id: str
    start: datetime
    end: datetime
    source: str  # raw, 1m or 1h
    step_s: int
    t: list[float]  # bucket starts, seconds since the epoch
    series: dict[str, Aggregates]
    per_core: list[list[float | None]] | None  # per-second source only


class AlertOut(BaseModel):
    id: int
    device_id: str
    rule: str
    started_at: datetime
    ended_at: datetime | None
    peak_value: float | None
    last_value: float | None
    threshold: float | None
    message: str


class RuleOut(BaseModel):
    name: str
    kind: str
    threshold: float
    clear: float
    duration_s: float
    enabled: bool
    unit: str
    description: str


class QuarantineOut(BaseModel):
    since: datetime
    total: int
    bytes: int
    by_reason: list[dict[str, Any]]
    by_device: list[dict[str, Any]]
    recent: list[dict[str, Any]]


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    broker_connected: bool
    database_reachable: bool
    last_write_at: datetime | None
    backlog: int  # messages taken off the broker, not yet stored
    received: int
    stored: int
    quarantined: int
    # Bytes per storage tier, the budget and the device-days it leaves room for; what the
    # budget dropped (null until the compactor's first round).
    storage: dict[str, Any] | None = None


@dataclass(frozen=True)
class HubHealth:
    """What the running hub knows about itself (the database is checked by the API)."""

    broker_connected: bool
    last_write_at: datetime | None
    backlog: int
    received: int = 0
    stored: int = 0
    quarantined: int = 0
    storage: dict[str, Any] | None = None  # bytes per tier, budget (hub/retention.py)


# --- helpers ---------------------------------------------------------------------------------

# Declares the token in the OpenAPI description (the docs' Authorize button). Module-level:
# FastAPI resolves the handlers' string annotations in this module's namespace.
BEARER = HTTPBearer(auto_error=False, description="the hub's api_token (needed only when it "
                    "is set); ?token= works too")


# The same time syntax as the CLI's --start/--end (hub/when.py).
When = Annotated[str | None, Query(description=f"{TIME_SYNTAX}; an age counts back from now")]


def _when(text: str, name: str, now: datetime) -> datetime:
    try:
        return parse_when(text, now)
    except ValueError as exc:
        raise HTTPException(422, f"{name}: {exc}") from exc


def _range(start: str | None, end: str | None, now: datetime,
           limit: timedelta = MAX_RANGE) -> tuple[datetime, datetime]:
    end_ = _when(end, "end", now) if end is not None else now
    start_ = _when(start, "start", now) if start is not None else end_ - DEFAULT_RANGE
    if end_ <= start_:
        raise HTTPException(422, f"end ({end_.isoformat()}) must be after start "
                                 f"({start_.isoformat()})")
    if end_ - start_ > limit:
        raise HTTPException(422, f"the range of {(end_ - start_).days} days is longer than "
                                 f"the {limit.days} days allowed; ask for a shorter range")
    return start_, end_


def _device_out(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    interval = row.get("device_interval_s")
    state = row["status"]
    heard = row.get("last_received_at")
    if state == "online" and heard is not None and interval and \
            (now - heard).total_seconds() > SILENT_INTERVALS * interval:
        state = "silent"
    latest = None
    if row.get("ts") is not None:
        latest = {k: row[k] for k in ("ts", "cpu_percent", "cpu_per_core_percent", "cpu_load_1",
                                      "cpu_freq_current_mhz", "memory_percent",
                                      "memory_used_bytes", "memory_total_bytes",
                                      "memory_swap_percent", "memory_swap_in_bytes_per_s",
                                      "memory_swap_out_bytes_per_s", "sensors_cpu_celsius",
                                      "sensors_gpu_celsius", "disk_read_bytes_per_s",
                                      "disk_write_bytes_per_s", "disk_max_percent",
                                      "network_bytes_sent_per_s", "network_bytes_recv_per_s",
                                      "throttling_raw", "throttling_under_voltage_now",
                                      "throttling_throttled_now", "throttling_freq_capped_now",
                                      "throttling_soft_temp_limit_now",
                                      "throttling_under_voltage_occurred",
                                      "throttling_throttled_occurred")}
    return {"device_id": row["device_id"], "hostname": row["hostname"],
            "pi_model": row["pi_model"], "os": row["os"], "status": row["status"],
            "state": state, "status_since": row["status_since"], "first_seen": row["first_seen"],
            "last_seen": row["last_seen"], "last_received_at": heard, "interval_s": interval,
            "alerts": list(row["alerts"] or []), "latest": latest}


def summarise(devices: Sequence[dict[str, Any]]) -> dict[str, int]:
    states = [d["state"] for d in devices]
    return {"devices": len(devices), "online": states.count("online"),
            "offline": states.count("offline"), "silent": states.count("silent"),
            "unknown": states.count("unknown"),
            "alerting": sum(1 for d in devices if d["alerts"]),
            "open_alerts": sum(len(d["alerts"]) for d in devices)}


class _LatestCache:
    """The fleet's newest values, fetched at most once per period for all stream clients."""

    def __init__(self, reader: FleetReader, now: Callable[[], datetime],
                 max_age_s: float = 0.5) -> None:
        self._reader = reader
        self._now = now
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._at = -1e9
        self._value: list[dict[str, Any]] = []

    def get(self) -> list[dict[str, Any]]:
        with self._lock:
            if time.monotonic() - self._at >= self._max_age_s:
                now = self._now()
                self._value = [_device_out(r, now) for r in self._reader.devices()]
                self._at = time.monotonic()
            return self._value


def create_app(reader: FleetReader, *, streamer: Streamer,
               health: Callable[[], HubHealth], token: Secret | None = None,
               rules: Sequence[Rule] = (), now: Callable[[], datetime] = lambda: datetime.now(UTC),
               web_dir: Path | None = WEB_DIR, stream_period_s: float = STREAM_PERIOD_S) -> FastAPI:
    """Build the application; every dependency comes in (the tests pass their own)."""
    # Interactive docs at /docs with Swagger UI's files shipped in fastapi-offline (no CDN:
    # a hub on a closed network shows them too).
    app = FastAPIOffline(docs_url="/docs", redoc_url=None, static_url="/docs/static",
                         title="fleetpulse hub", version="1",
                         default_response_class=JSONResponse, openapi_url="/api/openapi.json",
                         description="Fleet status, history, alerts and exports of fleetpulse. "
                         f"Times (start, end) are {TIME_SYNTAX}.")
    latest = _LatestCache(reader, now)

    def authorise(request: Request,
                  _: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        # The parameter documents the scheme (the docs' Authorize button); the check reads
        # the header or ?token= itself.
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

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"] if p not in ("query", "path"))
            problems.append(f"{where}: {error['msg']}")
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.exception_handler(StoreError)
    async def database_failed(request: Request, exc: StoreError) -> Response:
        log.warning("API request failed at the database: %s", exc)
        return JSONResponse({"detail": f"the database failed: {exc}"}, status_code=503)

    def known(device_id: str) -> dict[str, Any]:
        rows = reader.devices(device_id)
        if not rows:
            raise HTTPException(404, f"device {device_id!r} is not known "
                                     "(GET /api/devices lists the fleet)")
        return _device_out(rows[0], now())

    def exists(device_id: str) -> None:
        if not reader.device_exists(device_id):
            raise HTTPException(404, f"device {device_id!r} is not known "
                                     "(GET /api/devices lists the fleet)")

    @app.get("/api/fleet", response_model=FleetSummary, dependencies=[Auth])
    def fleet() -> dict[str, int]:
        """Count the devices by state and those with open alerts."""
        return summarise([_device_out(r, now()) for r in reader.devices()])

    @app.get("/api/devices", response_model=list[DeviceOut], dependencies=[Auth])
    def devices() -> list[dict[str, Any]]:
        """List every device with its status, newest values and open alert rules."""
        current = now()
        return [_device_out(r, current) for r in reader.devices()]

    @app.get("/api/devices/{device_id}", response_model=DeviceDetail, dependencies=[Auth])
    def device(device_id: str) -> dict[str, Any]:
        """One device: newest values, static facts, completeness over 1 h and 24 h."""
        out = known(device_id)
        current = now()
        for name, hours in (("completeness_1h", 1), ("completeness_24h", 24)):
            c = reader.completeness(device_id, current - timedelta(hours=hours), current)
            out[name] = {"start": c.start, "end": c.end, "expected": c.expected,
                         "stored": c.stored, "ratio": c.ratio}
        out["meta"] = reader.meta(device_id)
        return out

    @app.get("/api/devices/{device_id}/series", response_model=SeriesOut, dependencies=[Auth])
    def series(device_id: str, start: When = None, end: When = None,
               resolution: Literal["auto", "raw", "1m", "1h"] = "auto",
               columns: Annotated[str | None, Query(
                   description="comma-separated; default all of " + ", ".join(SERIES_COLUMNS)
               )] = None,
               max_points: Annotated[int, Query(ge=10, le=5000)] = 1000) -> Response:
        """A device's values over [start, end): per-second for short ranges, minute or hour
        rollups for long ones, binned to at most ``max_points`` points (mean, min, max)."""
        start_, end_ = _range(start, end, now())
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
        exists(device_id)
        chosen = choose_resolution(start_, end_, max_points, resolution)
        data = reader.series(device_id, start_, end_, chosen, wanted)
        # Serialised straight by orjson: validating ~30,000 floats against SeriesOut again
        # would cost more than the query (the model still documents the shape).
        return JSONResponse({"device_id": device_id, "start": start_, "end": end_,
                             "source": chosen.source, "step_s": chosen.step_s, **data})

    @app.get("/api/devices/{device_id}/completeness", response_model=CompletenessOut,
             dependencies=[Auth])
    def device_completeness(device_id: str, start: When = None,
                            end: When = None) -> dict[str, Any]:
        """Readings expected (range / interval) against readings stored."""
        start_, end_ = _range(start, end, now())
        exists(device_id)
        c = reader.completeness(device_id, start_, end_)
        return {"start": c.start, "end": c.end, "expected": c.expected, "stored": c.stored,
                "ratio": c.ratio}

    @app.get("/api/devices/{device_id}/alerts", response_model=list[AlertOut],
             dependencies=[Auth])
    def device_alerts(device_id: str, open: bool = False,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        """A device's alerts, open ones first, newest first."""
        exists(device_id)
        return reader.alerts(device_id, open, limit)

    @app.get("/api/devices/{device_id}/export", dependencies=[Auth],
             response_class=StreamingResponse,
             responses={200: {"content": {MEDIA_TYPES["csv"]: {},
                                          MEDIA_TYPES["parquet"]: {}}}})
    def export(device_id: str, start: When = None, end: When = None,
               format: Literal["csv", "parquet"] = "csv") -> StreamingResponse:
        """A device's per-second history as CSV or Parquet, streamed as it is read."""
        start_, end_ = _range(start, end, now())
        exists(device_id)
        chunks = streamer.stream(export_sql(True), {"device": device_id, "start": start_,
                                                    "end": end_})
        name = f"{device_id}_{start_:%Y%m%dT%H%M%SZ}_{end_:%Y%m%dT%H%M%SZ}.{format}"
        return StreamingResponse(encode_chunks(chunks, format), media_type=MEDIA_TYPES[format],
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/api/alerts", response_model=list[AlertOut], dependencies=[Auth])
    def alerts(open: bool = False, device: str | None = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        """Alerts of the fleet (or one device), open ones first."""
        return reader.alerts(device, open, limit)

    @app.get("/api/rules", response_model=list[RuleOut], dependencies=[Auth])
    def alert_rules() -> list[dict[str, Any]]:
        """The alert rules in force."""
        return [{"name": r.name, "kind": r.kind, "threshold": r.threshold, "clear": r.clear_at,
                 "duration_s": r.duration_s, "enabled": r.enabled, "unit": r.unit,
                 "description": r.description} for r in rules]

    @app.get("/api/quarantine", response_model=QuarantineOut, dependencies=[Auth])
    def quarantine(hours: Annotated[float, Query(gt=0, le=24 * 3660)] = 24,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> dict[str, Any]:
        """Messages refused over the last ``hours``: by reason, by device, the newest."""
        return reader.quarantine(now() - timedelta(hours=hours), limit)

    @app.get("/api/health", response_model=HealthOut,
             responses={503: {"model": HealthOut, "description": "broker or database down"}})
    def hub_health() -> Response:
        """Is the hub connected to the broker and the database; when did it last write."""
        hub = health()
        try:
            reachable = reader.check()
        except StoreError:
            reachable = False
        ok = hub.broker_connected and reachable
        body = HealthOut(status="ok" if ok else "degraded", broker_connected=hub.broker_connected,
                         database_reachable=reachable, last_write_at=hub.last_write_at,
                         backlog=hub.backlog, received=hub.received, stored=hub.stored,
                         quarantined=hub.quarantined, storage=hub.storage)
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/api/stream", dependencies=[Auth], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def stream(request: Request, device: str | None = None) -> StreamingResponse:
        """Server-Sent Events: an event ``fleet`` each second with every device's newest
        values (or one device's, with ``device``) and the fleet summary."""

        async def events() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            while not await request.is_disconnected():
                try:
                    rows = await anyio.to_thread.run_sync(latest.get)
                    chosen = [d for d in rows if device is None or d["device_id"] == device]
                    body = {"at": now(), "summary": summarise(rows), "devices": chosen}
                    yield b"event: fleet\ndata: " + orjson.dumps(body) + b"\n\n"
                except StoreError as exc:
                    yield b"event: problem\ndata: " + orjson.dumps({"detail": str(exc)}) + b"\n\n"
                await asyncio.sleep(stream_period_s)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.include_router(processes_router(ProcessReader(reader.db), exists, now),
                       dependencies=[Auth])

    if web_dir is not None:
        app.mount("/", StaticFiles(directory=web_dir, html=True), name="web")
    return app


class HttpServer:
    """Run uvicorn in a thread of the hub; :meth:`stop` ends it."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
            timeout_graceful_shutdown=2))
        self._thread: threading.Thread | None = None

    def _serve(self, sock: socket.socket) -> None:
        try:
            self._server.run(sockets=[sock])
        except SystemExit:
            pass  # uvicorn exits when it cannot serve; start() reports it

    def start(self, timeout_s: float = 10.0) -> None:
        """Start listening; raise OSError with a clear message when it cannot."""
        # Bound here, not by uvicorn: a busy port is then one error of ours (uvicorn would
        # log its own line first), raised before the hub goes on to the broker.
        try:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.create_server((self.host, self.port), family=family)
        except OSError as exc:
            raise OSError(f"cannot serve HTTP on {self.host}:{self.port} ({exc.strerror or exc}"
                          "); set http_port to a free port (0: no HTTP) or http_host to an "
                          "address of this machine") from exc
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="http",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise OSError(f"cannot serve HTTP on {self.host}:{self.port}; set http_port "
                              "(0: no HTTP)")
            time.sleep(0.02)
        log.info("Dashboard and API on http://%s:%d/.", self.host, self.port)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)
