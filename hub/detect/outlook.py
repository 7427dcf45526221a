"""Forecast what takes a device down, reading by reading; pure (readings and times come in).

Three forecasts per device, each a time until a limit, in seconds (None: not enough data, or
the forecast never gets there):

- ``memory_exhaustion_s``: available memory falls to :data:`MEMORY_FLOOR_PERCENT` of the total;
- ``disk_full_s``: the first partition to reach 100 % used;
- ``thermal_throttle_s``: the CPU temperature reaches the throttling limit: 80 °C on a
  Raspberry Pi (the firmware throttles progressively from 80 to 85 °C), 60 °C on a Pi 3B+,
  whose firmware has a soft limit there (its ``get_throttled`` bit 19 then says "soft
  temperature limit has occurred since boot").

Each signal is averaged into one value per :data:`STEP_S` and forecast by the least-squares
line through the last :data:`WINDOW` values (hub/detect/forecast.py ``Line``, as Prometheus'
``predict_linear(x[5m])``): it warned of every machine-temperature crossing of NAB in
bench/forecast_eval.py, damped Holt of 14 of 17 (fewer false warnings). Per-second readings
are too noisy for a line through a few seconds, and a damped trend per second flattens out
within a minute: the step makes both a question of minutes. A partition's line starts again
when space is freed (:data:`DISK_RESTART_POINTS` in one step): a line through a deletion
points away from the fill that follows it for the next five minutes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson

from hub.detect.forecast import Line, steps_to_threshold_1

STEP_S = 10.0
WINDOW = 30  # steps: five minutes
MIN_STEPS = 6  # a minute of steps before a forecast speaks
MEMORY_FLOOR_PERCENT = 5.0
# Space freed on a partition (files deleted) in one step, in points of its size, that restarts
# its line: the fill before the deletion is no longer the trend.
DISK_RESTART_POINTS = 0.5
THROTTLE_CELSIUS = 80.0  # Raspberry Pi: progressive throttling from 80 °C to 85 °C
PI3B_PLUS_SOFT_LIMIT_CELSIUS = 60.0
FORECASTS = ("memory_exhaustion_s", "disk_full_s", "thermal_throttle_s")


def throttle_limit(pi_model: str | None) -> float:
    """The temperature at which a device's firmware starts slowing it down."""
    if pi_model and "3 Model B Plus" in pi_model:
        return PI3B_PLUS_SOFT_LIMIT_CELSIUS
    return THROTTLE_CELSIUS


class Forecaster(Protocol):
    """What a series needs of a forecaster (hub/detect/forecast.py): one stream, its level
    and trend as floats (``Line``) or as arrays of one (the others)."""

    phi: float

    def step(self, x: Any) -> None: ...

    @property
    def level(self) -> Any: ...

    @property
    def trend(self) -> Any: ...


def _one(value: Any) -> float:
    return value if isinstance(value, float) else float(value[0])


@dataclass
class Series:
    """One signal averaged per step, a forecaster fed those averages, and the time until its
    forecast reaches ``target`` (computed once per step: readings in between cost an
    addition). The hub's forecaster is the line through the last :data:`WINDOW` steps;
    bench/fault_eval.py passes the others."""

    target: float
    falling: bool = False  # heading down towards the target (memory) rather than up
    # A step back from the target by more than this restarts the line from the new level
    # (None: never): a line through a deletion says nothing of the fill that follows it.
    restart_back: float | None = None
    make_model: Callable[[], Forecaster] = lambda: Line(window=WINDOW)
    model: Forecaster = field(init=False)
    step_at: float | None = None  # start of the open step (seconds)
    steps: int = 0  # steps closed since the start (or the last restart)
    last_step: float | None = None  # the last closed step's mean
    total: float = 0.0
    count: int = 0
    eta_s: float | None = None

    def __post_init__(self) -> None:
        self.model = self.make_model()

    def add(self, t_s: float, value: float) -> None:
        if self.step_at is None:
            self.step_at = t_s
        elif t_s >= self.step_at + STEP_S:
            if self.count:
                self._close_step(self.total / self.count)
            self.step_at += STEP_S * math.floor((t_s - self.step_at) / STEP_S)
            self.total, self.count = 0.0, 0
        self.total += value
        self.count += 1

    def _close_step(self, mean: float) -> None:
        back = (mean - self.last_step) * (1.0 if self.falling else -1.0) \
            if self.last_step is not None else 0.0
        if self.restart_back is not None and back > self.restart_back:
            self.model, self.steps = self.make_model(), 0
        self.last_step = mean
        self.model.step(mean)  # a float: the array forecasters take it as one stream
        self.steps += 1
        self.eta_s = self._eta_s()

    def _eta_s(self) -> float | None:
        """Seconds until the forecast reaches the target (0 once past it)."""
        if self.steps < MIN_STEPS:
            return None
        level = _one(self.model.level)
        if (level <= self.target) if self.falling else (level >= self.target):
            return 0.0
        steps = steps_to_threshold_1(level, _one(self.model.trend), self.target, self.model.phi)
        return steps * STEP_S if math.isfinite(steps) else None


def _partitions(value: Any) -> Sequence[Mapping[str, Any]]:
    if isinstance(value, (str, bytes)):  # the stored jsonb as text: parsed only when used
        value = orjson.loads(value)
    return value if isinstance(value, list) else []


def partition_percent(partition: Mapping[str, Any]) -> float | None:
    """A partition's use in %, from its bytes where it has them (the reading's ``percent``
    is rounded to 0.1, as psutil's: 250 MB on a 250 GB disk)."""
    used, free = partition.get("used_bytes"), partition.get("free_bytes")
    if isinstance(used, int) and isinstance(free, int) and used + free > 0:
        return 100.0 * used / (used + free)
    percent = partition.get("percent")
    return None if percent is None else float(percent)


@dataclass
class Outlook:
    """One device's forecasts, fed its readings in time order."""

    throttle_celsius: float = THROTTLE_CELSIUS
    memory: Series = field(default_factory=lambda: Series(MEMORY_FLOOR_PERCENT, falling=True))
    temperature: Series = field(init=False)
    disks: dict[str, Series] = field(default_factory=dict)
    disk_step_at: float | None = None  # when the partitions were last taken

    def __post_init__(self) -> None:
        self.temperature = Series(self.throttle_celsius)

    def add(self, ts: datetime, reading: Mapping[str, Any]) -> dict[str, float | None]:
        """Take one reading; return the time to each limit (see :data:`FORECASTS`).

        ``reading`` holds ``memory_available_bytes``, ``memory_total_bytes``,
        ``sensors_cpu_celsius`` and ``disk_partitions`` (a list of records with
        ``mountpoint`` and ``used_bytes`` and ``free_bytes`` or ``percent``, or that list as
        JSON text), any of them None.
        """
        t = ts.timestamp()
        available, total = reading.get("memory_available_bytes"), reading.get(
            "memory_total_bytes")
        if available is not None and total:
            self.memory.add(t, 100.0 * float(available) / float(total))
        celsius = reading.get("sensors_cpu_celsius")
        if celsius is not None:
            self.temperature.add(t, float(celsius))
        if self.disk_step_at is None or t >= self.disk_step_at + STEP_S:
            # Partitions fill slowly: one reading per step feeds their lines, and the other
            # readings' partition lists are never parsed (the alert watcher reads them as
            # JSON text, so a busy hub does not decode every reading's list).
            self.disk_step_at = t
            self._add_partitions(t, reading.get("disk_partitions"))
        disk = [s.eta_s for s in self.disks.values() if s.eta_s is not None]
        return {"memory_exhaustion_s": self.memory.eta_s,
                "disk_full_s": min(disk) if disk else None,
                "thermal_throttle_s": self.temperature.eta_s}

    def _add_partitions(self, t: float, value: Any) -> None:
        seen = set()
        for partition in _partitions(value):
            name, percent = partition.get("mountpoint"), partition_percent(partition)
            if name is None or percent is None:
                continue
            seen.add(str(name))
            series = self.disks.get(str(name))
            if series is None:
                series = self.disks[str(name)] = Series(100.0,
                                                        restart_back=DISK_RESTART_POINTS)
            series.add(t, percent)
        for gone in set(self.disks) - seen:  # unmounted: its forecast would go stale
            del self.disks[gone]
