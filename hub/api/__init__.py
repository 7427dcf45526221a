"""The HTTP API and the dashboard: FastAPI over :class:`~hub.read.FleetReader`.

    GET /api/fleet                        counts: online, offline, silent, alerting
    GET /api/devices                      every device with status and newest values
    GET /api/devices/{id}                 one device: newest values, meta, completeness
    GET /api/devices/{id}/series          a time range at automatic resolution (≤ ~1000 points)
    GET /api/devices/{id}/completeness    readings expected vs stored over a range
    GET /api/devices/{id}/alerts          its alerts, open first
    GET /api/devices/{id}/export          its history as CSV or Parquet (streamed)
    GET /api/devices/{id}/processes       its top processes now or at a time
    GET /api/devices/{id}/processes/history   its process samples over a range
    GET /api/alerts                       alerts of the fleet
    GET /api/quarantine                   what was refused, summarised
    GET /api/devices/{id}/settings        its settings: in effect, requested, their state
    PUT /api/devices/{id}/settings        change some of its settings (sent by hub/sync.py)
    POST /api/settings                    change the settings of listed devices, or of all
    GET /api/health                       broker, database, last write, backlog (no token)
    GET /api/stream                       Server-Sent Events: the fleet's newest values each second
    GET /api/openapi.json                 this API described
    GET /docs                             the API's interactive docs (Swagger UI, shipped)
    GET /                                 the dashboard (hub/web)

One router per module: ``devices`` (fleet, devices, stream), ``series`` (series,
completeness, export), ``alerts`` (alerts, rules), ``system`` (health, quarantine),
``settings`` (settings changed remotely, with its own models), ``processes`` (top
processes); what they share comes through ``Depends`` (``deps``), their output models are
in ``models``.

With ``api_token`` set every ``/api`` route but health needs ``Authorization: Bearer
<token>``; ``?token=`` is accepted too, because a browser's EventSource and download links
cannot send headers.
"""

from hub.api.app import WEB_DIR, HttpServer, create_app
from hub.api.models import HubHealth

__all__ = ["WEB_DIR", "HttpServer", "HubHealth", "create_app"]
