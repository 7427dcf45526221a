"""Settings changed remotely: read ``set`` messages, keep them, report what is in effect.

The hub (or an admin with MQTT Explorer) publishes on ``<prefix>/<id>/set/<setting>`` one
JSON value (``5``, ``0.5``; ``null`` goes back to the local value) or on ``<prefix>/<id>/set``
one JSON object of several (``{"interval_s": 5, "process_top_n": 20}``). A message is
applied whole or not at all: one bad field refuses the whole document, with a reason that
the device reports on its retained ``<prefix>/<id>/config``. An empty payload changes
nothing (it is what clearing a retained message sends).

Precedence: built-in default < TOML file < environment < flags (the local settings,
``shared/config.py``) < a remote change. A remote value is kept in
``<state_dir>/remote-settings.json`` and wins at every start until it is set back to
``null``.

Pure: parsing and checking (:func:`parse_set`), merging (:func:`effective`), the report
(:func:`config_message`). I/O at the end: loading and atomically saving the state file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# The bounds and the check of one value are shared with the hub's API (shared/remote.py).
from shared.remote import BOUNDS, Bound, Refused, Value, bounds_json, check_value

__all__ = ["BOUNDS", "Bound", "Refused", "Value", "check_value"]  # re-exported

log = logging.getLogger(__name__)

FILE_NAME = "remote-settings.json"
Source = Literal["local", "remote"]
REFUSED_PAYLOAD_CHARS = 200  # of a refused payload, kept in the report


def parse_set(setting: str | None, payload: bytes) -> dict[str, Value | None]:
    """Return the change a set message asks for: setting -> value (None: back to local).

    Args:
        setting: the topic's last level for ``set/<setting>``; None for the ``set`` document.
        payload: the message; empty changes nothing.

    Raises:
        Refused: bad JSON, not an object, an unknown setting, a wrong type or a value out
            of bounds. Nothing of the message applies then.
    """
    if not payload.strip():
        return {}
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        shown = payload[:40].decode("utf-8", "replace")
        raise Refused(f"not JSON: {shown!r}; send a number such as 5, or null") from None
    if setting is not None:
        return {setting: check_value(setting, data)}
    if not isinstance(data, dict):
        raise Refused('the set document is not a JSON object such as {"interval_s": 5}')
    problems, change = [], {}
    for name, raw in data.items():
        try:
            change[name] = check_value(name, raw)
        except Refused as exc:
            problems.append(exc.reason)
    if problems:
        raise Refused("; ".join(problems) + " (nothing changed)")
    return change


def apply_change(remote: Mapping[str, Value], change: Mapping[str, Value | None]
                 ) -> dict[str, Value]:
    """Return the remote overrides after ``change`` (None removes one)."""
    merged = dict(remote)
    for name, value in change.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def effective(local: Mapping[str, Value], remote: Mapping[str, Value]
              ) -> tuple[dict[str, Value], dict[str, Source]]:
    """Return the value in effect of each remotely settable setting, and its source."""
    values: dict[str, Value] = {}
    sources: dict[str, Source] = {}
    for name in BOUNDS:
        if name in remote:
            values[name], sources[name] = remote[name], "remote"
        else:
            values[name], sources[name] = local[name], "local"
    return values, sources


@dataclass
class Refusal:
    at: float  # epoch seconds
    topic: str
    payload: str  # the first REFUSED_PAYLOAD_CHARS characters
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"at": round(self.at, 3), "topic": self.topic, "payload": self.payload,
                "reason": self.reason}


def refusal(at: float, topic: str, payload: bytes, reason: str) -> Refusal:
    return Refusal(at, topic, payload[:REFUSED_PAYLOAD_CHARS].decode("utf-8", "replace"),
                   reason)


@dataclass
class RemoteState:
    """What the state file keeps: the overrides, when they last changed, the last refusal."""

    settings: dict[str, Value] = field(default_factory=dict)
    changed_at: float | None = None
    last_refusal: Refusal | None = None

    def as_json(self) -> dict[str, Any]:
        return {"v": 1, "settings": self.settings, "changed_at": self.changed_at,
                "last_refusal": self.last_refusal.as_json() if self.last_refusal else None}


def config_message(device_id: str, local: Mapping[str, Value], state: RemoteState
                   ) -> dict[str, Any]:
    """Return the retained ``config`` report: settings in effect, sources, bounds, refusal."""
    values, sources = effective(local, state.settings)
    return {
        "v": 1,
        "device_id": device_id,
        "settings": values,
        "source": sources,
        "bounds": bounds_json(),
        "changed_at": state.changed_at,
        "last_refusal": state.last_refusal.as_json() if state.last_refusal else None,
    }


def state_from_json(data: Any) -> RemoteState:
    """Read a state file's JSON; values that are no longer valid are dropped (pure)."""
    state = RemoteState()
    if not isinstance(data, dict):
        return state
    settings = data.get("settings")
    for name, raw in (settings.items() if isinstance(settings, dict) else ()):
        try:
            value = check_value(name, raw)
        except Refused:
            continue  # e.g. bounds narrowed by an upgrade: the local value applies again
        if value is not None:
            state.settings[name] = value
    changed_at = data.get("changed_at")
    if isinstance(changed_at, (int, float)) and not isinstance(changed_at, bool):
        state.changed_at = float(changed_at)
    last = data.get("last_refusal")
    if isinstance(last, dict):
        try:
            state.last_refusal = Refusal(float(last["at"]), str(last["topic"]),
                                         str(last["payload"]), str(last["reason"]))
        except (KeyError, TypeError, ValueError):
            pass
    return state


# --- I/O ------------------------------------------------------------------------------------
def load_state(state_dir: Path) -> RemoteState:
    """Return the kept state; a missing or unreadable file means no remote change."""
    path = state_dir / FILE_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return RemoteState()
    except (OSError, ValueError) as exc:
        log.warning("Cannot read the remote settings in %s (%s); using the local settings.",
                    path, exc)
        return RemoteState()
    return state_from_json(data)


def save_state(state_dir: Path, state: RemoteState) -> bool:
    """Write the state atomically (temporary file, fsync, rename); False if it failed."""
    path = state_dir / FILE_NAME
    partial = path.with_name(FILE_NAME + ".partial")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with open(partial, "w") as f:
            json.dump(state.as_json(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except OSError as exc:
        log.error("Cannot keep the remote settings in %s (%s): they apply until the agent "
                  "stops.", path, exc.strerror)
        return False
    return True
