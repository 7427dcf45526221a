"""What the API promises: its output models (in the OpenAPI description), built from rows.

The builders are pure: a row of :class:`~hub.read.FleetReader` (and the time) in, a model out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from hub.alerts import Rule
from hub.read import LATEST_COLUMNS, Completeness

SILENT_INTERVALS = 10  # online, yet no reading for this many intervals: shown as "silent"


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
    # Live anomaly scoring: devices with a model, readings seen and scored, CPU per reading.
    detection: dict[str, Any] | None = None


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
    detection: dict[str, Any] | None = None  # live scoring (hub/detect/live.py)


def device_out(row: dict[str, Any], now: datetime) -> DeviceOut:
    """A row of ``FleetReader.devices()``, with its state as seen at ``now``."""
    interval = row.get("device_interval_s")
    state = row["status"]
    heard = row.get("last_received_at")
    if state == "online" and heard is not None and interval and \
            (now - heard).total_seconds() > SILENT_INTERVALS * interval:
        state = "silent"
    latest = None
    if row.get("ts") is not None:
        latest = {k: row[k] for k in LATEST_COLUMNS}
    return DeviceOut(device_id=row["device_id"], hostname=row["hostname"],
                     pi_model=row["pi_model"], os=row["os"], status=row["status"], state=state,
                     status_since=row["status_since"], first_seen=row["first_seen"],
                     last_seen=row["last_seen"], last_received_at=heard, interval_s=interval,
                     alerts=list(row["alerts"] or []), latest=latest)


def summarise(devices: Sequence[DeviceOut]) -> FleetSummary:
    states = [d.state for d in devices]
    return FleetSummary(devices=len(devices), online=states.count("online"),
                        offline=states.count("offline"), silent=states.count("silent"),
                        unknown=states.count("unknown"),
                        alerting=sum(1 for d in devices if d.alerts),
                        open_alerts=sum(len(d.alerts) for d in devices))


def completeness_out(c: Completeness) -> CompletenessOut:
    return CompletenessOut(start=c.start, end=c.end, expected=c.expected, stored=c.stored,
                           ratio=c.ratio)


def rule_out(rule: Rule) -> RuleOut:
    return RuleOut(name=rule.name, kind=rule.kind, threshold=rule.threshold, clear=rule.clear_at,
                   duration_s=rule.duration_s, enabled=rule.enabled, unit=rule.unit,
                   description=rule.description)


# --- top processes (routes in hub/api/processes.py) --------------------------------------

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
