"""The fleet as a text table, for ``fleetpulse-hub status`` (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def describe_throttling(raw: int | None, throttled_now: bool | None,
                        under_voltage_now: bool | None) -> str:
    if raw is None:
        return "-"
    now = [name for name, on in (("under-voltage", under_voltage_now),
                                 ("throttled", throttled_now)) if on]
    if now:
        return ", ".join(now)
    return f"ok (0x{raw:x})" if raw else "ok"


def format_fleet(devices: Sequence[dict[str, Any]], now: datetime) -> str:
    """Render one line per device: status, last seen and the newest main values."""
    header = ("DEVICE", "HOST", "STATUS", "SINCE", "LAST SEEN", "CPU %", "MEM %", "TEMP °C",
              "THROTTLING")
    lines = [header]
    for d in devices:
        lines.append((
            d["device_id"], d.get("hostname") or "-", d["status"],
            _ago(d.get("status_since"), now), _ago(d.get("last_seen"), now),
            _num(d.get("cpu_percent")), _num(d.get("memory_percent")),
            _num(d.get("sensors_cpu_celsius")),
            describe_throttling(d.get("throttling_raw"), d.get("throttling_throttled_now"),
                                d.get("throttling_under_voltage_now")),
        ))
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    text = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in lines]
    online = sum(1 for d in devices if d["status"] == "online")
    text.append(f"{len(devices)} devices, {online} online")
    return "\n".join(text)
