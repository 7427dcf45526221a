"""Text tables for ``fleetpulse-hub status``: the fleet, and the bytes of each tier (pure)."""

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


def _size(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return "-"


def format_tiers(summary: dict[str, object]) -> str:
    """Render the storage tiers: bytes of each, the budget and the device-days that fit."""
    per_day = summary.get("cold_bytes_per_device_day")
    fit = summary.get("device_days_fit")
    lines = [
        "STORAGE",
        f"hot (one row per reading)      {_size(summary['hot_bytes'])}, "
        f"{summary['hot_readings']:,} readings",
        f"cold (one row per device-hour) {_size(summary['cold_bytes'])}, "
        f"{summary['cold_readings']:,} readings"
        + (f", {_size(per_day)} per device-day" if per_day is not None else ""),
        f"rollups (minute, hour)         {_size(summary['minute_bytes'])}, "
        f"{_size(summary['hour_bytes'])}",
        f"quarantine                     {_size(summary['quarantine_bytes'])}",
        f"process samples                {_size(summary.get('processes_bytes', 0))}",
        f"database (files)               {_size(summary['database_bytes'])}",
        "budget                         " + (
            f"{_size(summary['used_bytes'])} used of {_size(summary['budget_bytes'])}"
            + (f", room for {fit:,.0f} device-days of cold history"
               if isinstance(fit, int | float) else "")
            if summary.get("budget_bytes") else "none (storage_budget_bytes = 0)"),
    ]
    return "\n".join(lines)
