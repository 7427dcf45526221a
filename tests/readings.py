"""Build schema-valid readings for the hub's integration and browser tests and for bench/.

Every field of ``MetricsV1`` is filled (null where a real device may not know), derived
from the schema's own type hints, so a new field never breaks the builder silently.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast, get_type_hints

from hub.ingest.batch import DeviceEvents
from hub.store import Store, WriteResult
from shared.schema import (
    Cpu,
    Disk,
    Memory,
    MetricsV1,
    Network,
    Sensors,
    Throttling,
    metrics_row,
)

_SECTIONS = {"cpu": Cpu, "memory": Memory, "disk": Disk, "network": Network,
             "sensors": Sensors, "throttling": Throttling}
_LISTS = {"per_core_percent", "partitions", "per_disk", "per_interface", "temperatures"}
_FIELDS = {section: tuple(get_type_hints(cls)) for section, cls in _SECTIONS.items()}


def reading(device_id: str, ts: datetime, *, seq: int = 1, session_id: str = "s1",
            interval_s: float = 1.0, **values: Any) -> MetricsV1:
    """Return one reading; ``values`` set fields as ``<section>_<field>=value``."""
    message: dict[str, Any] = {"v": 1, "device_id": device_id, "session_id": session_id,
                               "seq": seq, "ts": ts, "interval_s": interval_s}
    for section, fields in _FIELDS.items():
        message[section] = {field: ([] if field in _LISTS else None) for field in fields}
    for key, value in values.items():
        section, field = key.split("_", 1)
        assert field in message[section], f"{key} is not a field of the schema"
        message[section][field] = value
    return cast(MetricsV1, message)


def partition(mountpoint: str, percent: float) -> dict[str, Any]:
    total = 100 * 2**30
    used = int(total * percent / 100)
    return {"mountpoint": mountpoint, "device": "/dev/sda1", "fstype": "ext4",
            "total_bytes": total, "used_bytes": used, "free_bytes": total - used,
            "percent": percent}


def write_readings(store: Store, messages: list[MetricsV1],
                   received_at: datetime | None = None) -> WriteResult:
    """Store readings as the hub would (rows, then the devices table)."""
    received = received_at or datetime.now(UTC)
    events = DeviceEvents()
    for m in messages:
        seen = events.seen.get(m["device_id"])
        if seen is None or m["ts"] > seen[0]:
            events.seen[m["device_id"]] = (m["ts"], received)
    return store.write([metrics_row(m, received) for m in messages], [], events)


def series(device_id: str, start: datetime, count: int, step_s: float = 1.0,
           **values: Any) -> list[MetricsV1]:
    """Return ``count`` readings a step apart; a callable value gets the index."""
    out = []
    for i in range(count):
        fields = {k: (v(i) if callable(v) else v) for k, v in values.items()}
        out.append(reading(device_id, start + timedelta(seconds=i * step_s), seq=i + 1,
                           interval_s=step_s, **fields))
    return out
