"""Settings a device takes remotely: their bounds and the check of one value (pure).

One definition for both sides: the agent refuses a ``set`` with these rules
(``agent/remote.py``), and the hub's API refuses the same values with a 422 before it
sends anything (``hub/api/settings.py``). README "Settings changed remotely".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from typing_extensions import TypedDict

Value = float | int


@dataclass(frozen=True)
class Bound:
    """What a setting may be set to remotely."""

    kind: type[float] | type[int]
    low: float
    high: float
    zero_is_off: bool = False
    help: str = ""

    def describe(self) -> str:
        unit = " s" if self.kind is float else ""
        text = f"from {self.low:g}{unit} to {self.high:g}{unit}"
        return ("0 (off) or " + text) if self.zero_is_off else text


# Bounds (README "Settings changed remotely"). interval_s: the 0.1 s to 1 h.
# process_period_s: a scan costs a few ms per few hundred processes (agent/processes.py),
# so more often than once a second would cost more than the readings themselves.
# process_top_n: each process is ~200 bytes in a message; 50 x 2 lists stays ~20 KB.
BOUNDS: dict[str, Bound] = {
    "interval_s": Bound(float, 0.1, 3600.0, help="seconds between readings"),
    "process_period_s": Bound(float, 1.0, 3600.0, zero_is_off=True,
                              help="seconds between scans of the top processes"),
    "process_top_n": Bound(int, 1, 50, help="processes in each top list"),
}


class Refused(Exception):
    """A set message that changes nothing; ``reason`` says why, for the operator."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_value(name: str, raw: Any) -> Value | None:
    """Return ``raw`` as the setting's type; None (back to local) for JSON null; raise Refused."""
    bound = BOUNDS.get(name)
    if bound is None:
        raise Refused(f"unknown setting {name!r} (known: {', '.join(sorted(BOUNDS))})")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise Refused(f"{name}: {json.dumps(raw)[:40]} is not a number")
    value: Value
    if bound.kind is int:
        if isinstance(raw, float) and not raw.is_integer():
            raise Refused(f"{name}: {raw!r} is not a whole number")
        value = int(raw)
    else:
        value = float(raw)
    if bound.zero_is_off and value == 0:
        return value
    if not bound.low <= value <= bound.high:
        raise Refused(f"{name}: {raw!r} is out of bounds ({bound.describe()})")
    return value


def bounds_json() -> dict[str, dict[str, Any]]:
    """Return the bounds as the agent reports them in its ``config`` message."""
    return {name: {"min": b.low, "max": b.high, "zero_is_off": b.zero_is_off,
                   "type": "integer" if b.kind is int else "number"}
            for name, b in BOUNDS.items()}


# The device's retained report on <prefix>/<id>/config (agent/remote.py config_message),
# declared here as plain TypedDicts, as shared/schema.py declares the readings: the agent
# builds dicts, the hub checks them with pydantic (hub/remote.py). Fields a newer agent
# adds are ignored by the hub, so agents and hubs upgrade in either order.
class RefusalV1(TypedDict):
    at: float  # the device's clock, epoch seconds
    topic: str
    payload: str  # its first 200 characters
    reason: str


class BoundV1(TypedDict):
    min: float
    max: float
    zero_is_off: bool
    type: Literal["number", "integer"]


class ConfigV1(TypedDict):
    v: Literal[1]
    device_id: str
    settings: dict[str, float]
    source: dict[str, Literal["local", "remote"]]
    bounds: dict[str, BoundV1]
    changed_at: float | None
    last_refusal: RefusalV1 | None
