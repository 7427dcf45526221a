"""Settings changed remotely, the hub's side: check a device's report, judge each request.

Pure: no clock, no database, no MQTT (``hub/sync.py`` is the edge that reads the tables,
sends and records). The hub keeps what it wants each device's settings to be (a *request*,
one per device and setting) and what the device last reported on its retained
``<prefix>/<id>/config``; a request is

- ``applied`` once the report shows the value in effect from a remote source (``null``:
  the device's own value again);
- ``refused`` when the report's ``last_refusal`` is new since the hub sent it and names the
  hub's topic and payload (the agent's reason is kept), or when the device does not take
  that setting at all;
- ``pending`` otherwise. A pending request is sent when the device is online: at once,
  again each time it comes back online (a set sent while it is away is lost: the agent
  subscribes with Retain Handling 2 and keeps no session), and again at most
  :data:`MAX_SENDS` times per online spell, :data:`RESEND_AFTER_S` apart, while the report
  still differs. Never in a loop: an agent that ignores it is not flooded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from shared.remote import BOUNDS, ConfigV1, check_value
from shared.topics import set_topic

_CONFIG = TypeAdapter(ConfigV1)
MAX_SENDS = 3  # per online spell
RESEND_AFTER_S = 30.0  # the agent reads a set within 10 s (its longest idle wait)
State = Literal["pending", "applied", "refused"]


def check_config(device_id: str, payload: bytes) -> ConfigV1 | str | None:
    """Return the checked report, None for an empty payload (cleared), or why it is bad."""
    if not payload.strip():
        return None
    try:
        config = _CONFIG.validate_json(payload, strict=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        more = exc.error_count() - 1
        return (f"config message: {where}: {first['msg']}"
                + (f" (and {more} more)" if more > 0 else ""))
    if config["device_id"] != device_id:
        return (f"device id {config['device_id']!r} in the config does not match "
                f"{device_id!r} in the topic")
    for name, value in config["settings"].items():
        if not math.isfinite(value):
            return f"config message: settings.{name}: {value} is not a finite number"
    return config


def payload_of(setting: str, value: float | None) -> bytes:
    """The JSON value the hub sends on ``set/<setting>`` (an integer setting as an integer)."""
    if value is None:
        return b"null"
    bound = BOUNDS.get(setting)
    if bound is not None and bound.kind is int:
        return str(int(value)).encode()
    return json.dumps(float(value)).encode()


@dataclass(frozen=True)
class Request:
    """What the hub wants one setting of one device to be, and what it did about it."""

    device_id: str
    setting: str
    value: float | None  # None: back to the device's own value
    state: State
    sent_at: datetime | None = None
    send_count: int = 0
    refusal_seen: float | None = None  # the report's last_refusal.at when last sent


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def judge(request: Request, config: ConfigV1 | None, prefix: str) -> tuple[State, str | None]:
    """Return a pending request's state after the device's report, with a reason if refused."""
    if config is None:
        return "pending", None
    name = request.setting
    if name not in config["bounds"]:
        return "refused", (f"the device's agent does not take {name} remotely (it takes "
                           f"{', '.join(sorted(config['bounds'])) or 'nothing'})")
    source = config["source"].get(name)
    if request.value is None:
        if source == "local":
            return "applied", None
    elif source == "remote" and _same(config["settings"].get(name, math.nan), request.value):
        return "applied", None
    refusal = config["last_refusal"]
    if (request.sent_at is not None and refusal is not None
            and refusal["at"] != request.refusal_seen
            and refusal["topic"] == set_topic(prefix, request.device_id, name)
            and refusal["payload"] == payload_of(name, request.value).decode()):
        return "refused", refusal["reason"]
    return "pending", None


def should_send(request: Request, config: ConfigV1 | None, status: str | None,
                status_since: datetime | None, now: datetime) -> bool:
    """Tell whether to send a pending request now (see the module's docstring)."""
    if config is None or status != "online":
        return False  # no report: an agent from before remote settings would drop it
    if request.sent_at is None:
        return True
    if status_since is not None and status_since > request.sent_at:
        return True  # it came back online since: what was sent before may be lost
    return (request.send_count < MAX_SENDS
            and (now - request.sent_at).total_seconds() >= RESEND_AFTER_S)


def waiting_reason(request: Request, config: ConfigV1 | None, status: str | None) -> str:
    """Say, for people, why a pending request is not applied yet."""
    if config is None:
        return ("the device has not reported its settings: its agent is older than remote "
                "settings, its broker ACL lacks the config line, or it has not connected yet")
    if status != "online":
        return "the device is offline: sent when it comes back online"
    if request.send_count >= MAX_SENDS:
        return (f"sent {request.send_count} times without the device reporting it in effect; "
                "sent again when the device next comes online")
    return "sent; waiting for the device to report it in effect"


def outside_reported(change: dict[str, float | None], config: ConfigV1) -> str | None:
    """Say why the device's own reported bounds refuse a change (an agent of another
    version may have others); None if they take it."""
    for name, value in change.items():
        bound = config["bounds"].get(name)
        if bound is None:
            return (f"its agent does not take {name} remotely (it takes "
                    f"{', '.join(sorted(config['bounds'])) or 'nothing'})")
        if value is None or (bound["zero_is_off"] and value == 0):
            continue
        if bound["type"] == "integer" and not float(value).is_integer():
            return f"its agent takes whole numbers only for {name}"
        if not bound["min"] <= value <= bound["max"]:
            return (f"its agent takes {name} from {bound['min']:g} to {bound['max']:g}"
                    + (" (or 0: off)" if bound["zero_is_off"] else "") + f", not {value:g}")
    return None


def check_change(change: dict[str, Any]) -> dict[str, float | None]:
    """Return a requested change with each value checked by the agent's own rules.

    Raises:
        shared.remote.Refused: an unknown setting, a wrong type or a value out of bounds.
    """
    return {name: (None if (v := check_value(name, raw)) is None else float(v))
            for name, raw in change.items()}
