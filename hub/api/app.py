"""Build the FastAPI application from the routers; serve it with uvicorn in a thread."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from hub.alerts import Rule
from hub.api import alerts, anomalies, devices, processes, series, settings, system
from hub.api.deps import ApiContext, LatestCache
from hub.api.models import HubHealth
from hub.api.responses import JSONResponse
from hub.read import FleetReader, Streamer
from hub.sync import SettingsDesk
from hub.when import TIME_SYNTAX
from shared.config import Secret
from shared.errors import StoreError

log = logging.getLogger("hub.api")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STREAM_PERIOD_S = 1.0


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"] if p not in ("query", "path"))
        problems.append(f"{where}: {error['msg']}")
    return JSONResponse({"detail": "; ".join(problems)}, status_code=422)


async def _database_failed(request: Request, exc: Exception) -> Response:
    log.warning("API request failed at the database: %s", exc)
    return JSONResponse({"detail": f"the database failed: {exc}"}, status_code=503)


def create_app(reader: FleetReader, *, streamer: Streamer,
               health: Callable[[], HubHealth], token: Secret | None = None,
               rules: Sequence[Rule] = (), now: Callable[[], datetime] = lambda: datetime.now(UTC),
               web_dir: Path | None = WEB_DIR, stream_period_s: float = STREAM_PERIOD_S,
               settings_desk: SettingsDesk | None = None) -> FastAPI:
    """Build the application; every dependency comes in (the tests pass their own)."""
    # Interactive docs at /docs with Swagger UI's files shipped in fastapi-offline (no CDN:
    # a hub on a closed network shows them too).
    app = FastAPIOffline(docs_url="/docs", redoc_url=None, static_url="/docs/static",
                         title="fleetpulse hub", version="1",
                         default_response_class=JSONResponse, openapi_url="/api/openapi.json",
                         description="Fleet status, history, alerts and exports of fleetpulse. "
                         f"Times (start, end) are {TIME_SYNTAX}.")
    app.state.fleetpulse = ApiContext(reader, streamer, health, token, tuple(rules), now,
                                      LatestCache(reader, now), stream_period_s, settings_desk)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StoreError, _database_failed)
    for router in (devices.router, series.router, alerts.router, system.router,
                   settings.router, anomalies.router, processes.router):
        app.include_router(router)
    if web_dir is not None:
        app.mount("/", StaticFiles(directory=web_dir, html=True), name="web")
    return app


class HttpServer:
    """Run uvicorn in a thread of the hub; :meth:`stop` ends it."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._app = app
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
        context = getattr(self._app.state, "fleetpulse", None)
        if isinstance(context, ApiContext):
            context.stopping.set()  # event streams end within a period (see devices.stream)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)
