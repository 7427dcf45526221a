"""The time syntax of the hub's CLI and API, in one place (pure).

``fleetpulse-hub export --start 24h`` and ``GET /api/devices/{id}/series?start=24h`` accept
the same values: an ISO 8601 time (UTC when no zone is given), ``now``, or an age such as
``90s``, ``5m``, ``24h``, ``7d`` meaning that long before now.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

TIME_SYNTAX = "ISO 8601 (2026-11-23T17:00:00Z), 'now', or an age like 5m, 24h, 7d"


def parse_when(text: str, now: datetime) -> datetime:
    """Parse an ISO 8601 time (UTC when no zone is given), ``now``, or an age like ``90m``,
    ``24h``, ``7d`` meaning that long before ``now``; raise ValueError."""
    text = text.strip()
    if text == "now":
        return now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use {TIME_SYNTAX}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
