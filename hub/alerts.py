"""Alert rules and their evaluation (pure: readings, device states and the clock come in).

A threshold rule fires when a metric has stayed above its threshold for ``duration_s`` of
consecutive readings (reading time stamps, so a device with a wrong clock is judged
consistently) and clears when the newest reading is at or below ``clear`` (hysteresis, so a
value hovering at the threshold does not flap). Two rules look at the device instead:
``device_offline`` (its retained status says offline for more than N intervals) and
``no_data`` (it says online, yet no reading has arrived for N intervals, by the hub's
clock). ``duplicate_device`` looks at the device's agent sessions: two sessions whose
readings overlap in time and that both delivered readings in the last ``threshold``
seconds are two machines claiming one device id (one machine's sessions follow each
other; a replayed spool's readings are older than the next session's).
:func:`evaluate` compares what fires with the open alerts and returns the changes to
store and publish; it keeps no state of its own, so a restarted hub carries on. What it
reads of a device's readings is a :class:`Run` per threshold rule, folded in one reading at
a time (:func:`fold`): no window of readings is held in memory.

Rules are configurable from a TOML table (``alert_rules_file``)::

    [cpu_temperature_high]
    threshold = 75.0
    duration_s = 30
    [swap_thrashing]
    enabled = false
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

Kind = Literal["above", "below", "offline", "no_data", "duplicate"]


@dataclass(frozen=True)
class Rule:
    name: str
    kind: Kind
    metric: str  # key of Reading.values; for offline/no_data, unused
    threshold: float  # for offline/no_data: a number of the device's intervals
    duration_s: float = 0.0
    clear: float | None = None  # close at or below this, "below": at or above (default: the
    # threshold)
    enabled: bool = True
    unit: str = ""
    description: str = ""

    @property
    def clear_at(self) -> float:
        return self.threshold if self.clear is None else self.clear


MIB = 1024 * 1024
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("cpu_temperature_high", "above", "cpu_celsius", 80.0, 60.0, 75.0, unit="°C",
         description="CPU temperature high"),
    Rule("under_voltage", "above", "under_voltage", 0.5, 0.0, unit="",
         description="Raspberry Pi under-voltage"),
    Rule("throttled", "above", "throttled", 0.5, 10.0, unit="",
         description="Raspberry Pi throttled or frequency capped"),
    Rule("disk_nearly_full", "above", "disk_percent", 90.0, 60.0, 88.0, unit="%",
         description="A disk partition nearly full"),
    Rule("memory_pressure", "above", "memory_percent", 90.0, 120.0, 85.0, unit="%",
         description="Memory nearly exhausted"),
    Rule("swap_thrashing", "above", "swap_bytes_per_s", 1.0 * MIB, 60.0, 0.5 * MIB,
         unit="B/s", description="Swapping in and out heavily"),
    # The reading's anomaly score (hub/detect/live.py) in [0, 1): 0.5 is a surprise of 1,
    # "clearly anomalous" by the detector's own scale (hub/detect/novelty.py).
    Rule("anomaly", "above", "anomaly_score", 0.5, 7.0, 0.3, unit="score",
         description="Unusual behaviour"),
    # Forecasts (hub/detect/outlook.py): seconds until a limit; they fire before the fact.
    Rule("memory_exhaustion_forecast", "below", "memory_exhaustion_s", 900.0, 30.0, 1800.0,
         unit="s", description="Memory exhaustion forecast"),
    Rule("disk_full_forecast", "below", "disk_full_s", 6 * 3600.0, 60.0, 12 * 3600.0,
         unit="s", description="Disk full forecast"),
    Rule("thermal_throttling_forecast", "below", "thermal_throttle_s", 600.0, 30.0, 1200.0,
         unit="s", description="CPU throttling temperature forecast"),
    Rule("device_offline", "offline", "", 60.0, unit="intervals",
         description="Device offline"),
    Rule("no_data", "no_data", "", 10.0, unit="intervals",
         description="No readings while online"),
    Rule("duplicate_device", "duplicate", "", 120.0, unit="s",
         description="Two machines use one device id"),
)
METRICS = ("cpu_celsius", "under_voltage", "throttled", "disk_percent", "memory_percent",
           "swap_bytes_per_s", "anomaly_score")
# What the forecasts name when their alert fires (hub/detect/outlook.py gives the seconds).
FORECAST_LIMITS = {
    "memory_exhaustion_s": "available memory falls to 5 % of the total",
    "disk_full_s": "a partition is full",
    "thermal_throttle_s": "the CPU reaches its throttling temperature",
}
_TUNABLE = {"threshold": float, "duration_s": float, "clear": float, "enabled": bool}


def rules_from_table(table: Mapping[str, Any]) -> list[Rule]:
    """Apply a TOML table of overrides to the default rules; raise ValueError listing problems.

    Each key names a rule; its table may set ``threshold``, ``duration_s``, ``clear`` and
    ``enabled``.
    """
    rules = {rule.name: rule for rule in DEFAULT_RULES}
    problems = []
    for name, overrides in table.items():
        if name not in rules:
            problems.append(f"unknown alert rule {name!r} (known: {', '.join(rules)})")
            continue
        if not isinstance(overrides, Mapping):
            problems.append(f"alert rule {name!r} must be a table like [{name}]")
            continue
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            expected = _TUNABLE.get(key)
            if expected is None:
                problems.append(f"{name}.{key} is not a setting of a rule (use "
                                f"{', '.join(_TUNABLE)})")
            elif expected is bool and not isinstance(value, bool):
                problems.append(f"{name}.{key} = {value!r} is not true or false")
            elif expected is float and (isinstance(value, bool)
                                        or not isinstance(value, int | float) or value < 0):
                problems.append(f"{name}.{key} = {value!r} is not a number ≥ 0")
            else:
                changes[key] = float(value) if expected is float else value
        rules[name] = dataclasses.replace(rules[name], **changes)
    if problems:
        raise ValueError("; ".join(problems))
    return list(rules.values())


@dataclass(frozen=True)
class Reading:
    """The values of one stored reading that rules look at (None: the device cannot tell)."""

    ts: datetime
    values: Mapping[str, float | None]


@dataclass(frozen=True)
class SessionSpan:
    """One agent session of a device (device_sessions): its machine and its readings' span."""

    session_id: str
    hostname: str | None
    first_ts: datetime
    last_ts: datetime


@dataclass(frozen=True)
class DeviceState:
    device_id: str
    status: str  # "online", "offline" or "unknown"
    status_since: datetime | None
    interval_s: float
    last_reading_received_at: datetime | None  # hub clock
    # Sessions that delivered readings recently (see duplicate_window_s), oldest first.
    sessions: tuple[SessionSpan, ...] = ()


@dataclass(frozen=True)
class OpenAlert:
    device_id: str
    rule: str
    started_at: datetime
    peak_value: float | None


@dataclass(frozen=True)
class Change:
    action: Literal["open", "update", "close"]
    device_id: str
    rule: str
    started_at: datetime  # when the condition began
    ended_at: datetime | None  # close: when it ended
    value: float | None
    peak_value: float | None
    threshold: float
    message: str


@dataclass(frozen=True)
class _Firing:
    started_at: datetime
    value: float
    peak: float
    detail: str = ""


def reading_values(row: Mapping[str, Any]) -> dict[str, float | None]:
    """Derive the rule metrics from a stored reading's columns (see ``METRICS``)."""

    def flag(*names: str) -> float | None:
        known = [row.get(n) for n in names if row.get(n) is not None]
        return None if not known else float(any(known))

    swap = [row.get("memory_swap_in_bytes_per_s"), row.get("memory_swap_out_bytes_per_s")]
    return {
        "cpu_celsius": row.get("sensors_cpu_celsius"),
        "under_voltage": flag("throttling_under_voltage_now"),
        "throttled": flag("throttling_throttled_now", "throttling_freq_capped_now",
                          "throttling_soft_temp_limit_now"),
        "disk_percent": row.get("disk_max_percent"),
        "memory_percent": row.get("memory_percent"),
        "swap_bytes_per_s": None if all(v is None for v in swap)
        else float(sum(v for v in swap if v is not None)),
        "anomaly_score": row.get("anomaly_score"),
    }


def _beyond(rule: Rule, value: float | None, limit: float) -> bool:
    """Whether ``value`` breaches ``limit``: above it, or below it for a "below" rule."""
    if value is None:
        return False
    return value < limit if rule.kind == "below" else value > limit


def _worst(rule: Rule, values: Iterable[float]) -> float:
    return min(values) if rule.kind == "below" else max(values)


@dataclass
class Run:
    """What one threshold rule needs of a device's readings, folded in one at a time.

    No window of readings is kept: only the newest run of readings beyond the threshold
    (when it began, its worst value), the same beyond ``clear`` (how long an open alert
    holds), and when the readings came back within ``clear`` after the last one beyond it.
    So its size is the same for a device sending once a minute or fifty times a second.
    """

    ts: datetime | None = None  # the newest reading's
    value: float | None = None
    since: datetime | None = None  # first of the newest readings beyond the threshold
    worst: float = 0.0
    held_since: datetime | None = None  # first of the newest readings beyond ``clear``
    held_worst: float = 0.0
    # The first reading back within ``clear`` after the last one beyond it (or the first
    # reading folded in, if none was beyond).
    cleared_at: datetime | None = None

    def add(self, rule: Rule, ts: datetime, value: float | None) -> None:
        """Fold in the device's next reading (readings come oldest first)."""
        if self.ts is None:
            self.cleared_at = ts
        self.ts, self.value = ts, value
        if value is not None and _beyond(rule, value, rule.clear_at):
            if self.held_since is None:
                self.held_since, self.held_worst = ts, value
            else:
                self.held_worst = _worst(rule, (self.held_worst, value))
        elif self.held_since is not None:
            self.held_since, self.cleared_at = None, ts
        if value is not None and _beyond(rule, value, rule.threshold):
            if self.since is None:
                self.since, self.worst = ts, value
            else:
                self.worst = _worst(rule, (self.worst, value))
        else:
            self.since = None


def fold(rules: Iterable[Rule], readings: Iterable[Reading],
         runs: dict[str, Run] | None = None) -> dict[str, Run]:
    """Fold readings (oldest first) into each threshold rule's :class:`Run`, by rule name."""
    runs = {} if runs is None else runs
    pairs = run_pairs(rules, runs)
    for reading in readings:
        fold_reading(pairs, reading.ts, reading.values)
    return runs


def run_pairs(rules: Iterable[Rule], runs: dict[str, Run]) -> list[tuple[Rule, Run]]:
    """Each enabled threshold rule with its :class:`Run` in ``runs`` (added if missing)."""
    return [(rule, runs.setdefault(rule.name, Run())) for rule in rules
            if rule.enabled and rule.kind in ("above", "below")]


def fold_reading(pairs: list[tuple[Rule, Run]], ts: datetime,
                 values: Mapping[str, float | None]) -> None:
    """Fold one reading (newer than those folded before) into the runs of ``pairs``."""
    for rule, run in pairs:
        run.add(rule, ts, values.get(rule.metric))


def _above(rule: Rule, run: Run, is_open: bool) -> _Firing | None:
    """Return the run of breaching readings ending at the newest, if it lasted long enough."""
    since, worst = (run.held_since, run.held_worst) if is_open else (run.since, run.worst)
    if since is None or run.ts is None or run.value is None:
        return None
    if not is_open and (run.ts - since).total_seconds() < rule.duration_s:
        return None
    detail = ""
    if rule.kind == "below" and rule.unit == "s":  # a forecast: say when
        detail = (run.ts + timedelta(seconds=run.value)).isoformat(timespec="seconds")
    return _Firing(since, run.value, worst, detail)


def _host(span: SessionSpan) -> str:
    return repr(span.hostname) if span.hostname else "a machine whose hostname is not known yet"


def _duplicate(device: DeviceState) -> _Firing | None:
    """Return a firing when two recent sessions overlap for more than two intervals."""
    min_overlap = timedelta(seconds=2 * device.interval_s)
    spans = device.sessions
    for i, a in enumerate(spans):
        for b in spans[i + 1:]:
            start, end = max(a.first_ts, b.first_ts), min(a.last_ts, b.last_ts)
            if end - start > min_overlap:
                others = len({s.session_id for s in spans})
                detail = (f"{_host(a)} (session {a.session_id[:8]}) and {_host(b)} "
                          f"(session {b.session_id[:8]}) send readings at the same time")
                if a.hostname and a.hostname == b.hostname:
                    detail += " (same hostname: a copied disk image?)"
                return _Firing(start, float(others), float(others), detail)
    return None


def _device_rule(rule: Rule, device: DeviceState, now: datetime) -> _Firing | None:
    if rule.kind == "duplicate":
        return _duplicate(device)
    limit_s = rule.threshold * device.interval_s
    if rule.kind == "offline":
        if device.status != "offline" or device.status_since is None:
            return None
        offline_s = (now - device.status_since).total_seconds()
        return _Firing(device.status_since, offline_s, offline_s) if offline_s > limit_s \
            else None
    # no_data: the device says it is online but nothing arrives.
    if device.status != "online":
        return None
    since = device.last_reading_received_at or device.status_since
    if since is None:
        return None
    gap_s = (now - since).total_seconds()
    if gap_s <= limit_s:
        return None
    return _Firing(since + timedelta(seconds=device.interval_s), gap_s, gap_s)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _message(rule: Rule, device_id: str, firing: _Firing) -> str:
    if rule.kind == "duplicate":
        return (f"{rule.description}: {device_id}: {firing.detail}. Give each machine its "
                "own device_id; the readings of both are kept apart by session "
                "(device_sessions)")
    if rule.kind in ("offline", "no_data"):
        return f"{rule.description}: {device_id} for {firing.value:.0f} s"
    if rule.unit == "":
        return f"{rule.description}: {device_id}"
    if rule.metric in FORECAST_LIMITS:
        return (f"{rule.description}: {device_id}: {FORECAST_LIMITS[rule.metric]} in about "
                f"{_duration(firing.value)}, around {firing.detail} (forecast from the last "
                "5 minutes)")
    if rule.unit == "score":
        return (f"{rule.description}: {device_id} scored up to {firing.peak:.2f} on its "
                f"anomaly model (threshold {rule.threshold:g}, for {rule.duration_s:g} s)")
    value = f"{firing.peak / MIB:.1f} MiB/s" if rule.unit == "B/s" else \
        f"{firing.peak:.1f} {rule.unit}"
    limit = f"{rule.threshold / MIB:g} MiB/s" if rule.unit == "B/s" else \
        f"{rule.threshold:g} {rule.unit}"
    return f"{rule.description}: {device_id} peaked at {value} (threshold {limit})"


def evaluate(rules: Iterable[Rule], device: DeviceState, runs: Mapping[str, Run],
             open_alerts: Mapping[str, OpenAlert], now: datetime) -> list[Change]:
    """Return what changes for one device: alerts to open, to update (new peak), to close.

    Args:
        runs: the device's readings as each threshold rule sees them, by rule name
            (:func:`fold`); a rule without one has no reading to judge by.
        open_alerts: the device's open alerts by rule name.
    """
    changes: list[Change] = []
    for rule in rules:
        if not rule.enabled:
            continue
        current = open_alerts.get(rule.name)
        run = runs.get(rule.name)
        if run is not None and run.ts is None:
            run = None  # nothing folded in yet
        if rule.kind in ("above", "below"):
            if run is None and current is not None:
                continue  # nothing to judge by (the offline rules speak for the device)
            firing = None if run is None else _above(rule, run, current is not None)
        else:
            firing = _device_rule(rule, device, now)
        if firing is not None and current is None:
            changes.append(Change("open", device.device_id, rule.name, firing.started_at,
                                  None, firing.value, firing.peak, rule.threshold,
                                  _message(rule, device.device_id, firing)))
        elif firing is not None and current is not None:
            if current.peak_value is None or (firing.peak < current.peak_value
                                              if rule.kind == "below"
                                              else firing.peak > current.peak_value):
                peak = firing.peak
                changes.append(Change("update", device.device_id, rule.name,
                                      current.started_at, None, firing.value, peak, rule.threshold,
                                      _message(rule, device.device_id,
                                               dataclasses.replace(firing, peak=peak))))
        elif firing is None and current is not None:
            ended_at = run.cleared_at if run is not None and run.cleared_at else now
            changes.append(Change("close", device.device_id, rule.name, current.started_at,
                                  ended_at, None, current.peak_value, rule.threshold, ""))
    return changes


def duplicate_window_s(rules: Iterable[Rule]) -> float | None:
    """Seconds back to look for sessions delivering readings; None if the rule is off."""
    windows = [r.threshold for r in rules if r.enabled and r.kind == "duplicate"]
    return max(windows) if windows else None


def window_s(rules: Iterable[Rule]) -> float:
    """Seconds of readings a device's runs are rebuilt from (a hub starting): the longest
    threshold duration, plus slack."""
    return max([r.duration_s for r in rules if r.enabled and r.kind in ("above", "below")]
               + [0.0]) + 10.0


@dataclass
class FleetInput:
    """What one evaluation round reads: every device, its runs and its open alerts."""

    devices: list[DeviceState] = field(default_factory=list)
    runs: dict[str, dict[str, Run]] = field(default_factory=dict)  # by device, rule
    open_alerts: dict[str, dict[str, OpenAlert]] = field(default_factory=dict)


def evaluate_fleet(rules: Sequence[Rule], fleet: FleetInput, now: datetime) -> list[Change]:
    """Run :func:`evaluate` for every device."""
    changes = []
    for device in fleet.devices:
        changes += evaluate(rules, device, fleet.runs.get(device.device_id, {}),
                            fleet.open_alerts.get(device.device_id, {}), now)
    return changes


def alert_payload(change: Change, rule: Rule | None) -> dict[str, Any]:
    """Return the retained MQTT payload of an open alert."""
    return {"device_id": change.device_id, "rule": change.rule,
            "started_at": change.started_at.isoformat(),
            "value": change.value, "peak_value": change.peak_value,
            "threshold": change.threshold, "unit": rule.unit if rule else "",
            "message": change.message}
