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
line through the last :data:`WINDOW` values (hub/detect/forecast.py ``Linear``, as Prometheus'
``predict_linear(x[5m])``): it warned of every machine-temperature crossing of NAB in
bench/forecast_eval.py, damped Holt of 14 of 17 (fewer false warnings). Per-second readings
are too noisy for a line through a few seconds, and a damped trend per second flattens out
within a minute: the step makes both a question of minutes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from hub.detect.forecast import Linear, steps_to_threshold

STEP_S = 10.0
WINDOW = 30  # steps: five minutes
MIN_STEPS = 6  # a minute of steps before a forecast speaks
MEMORY_FLOOR_PERCENT = 5.0
THROTTLE_CELSIUS = 80.0  # Raspberry Pi: progressive throttling from 80 °C to 85 °C
PI3B_PLUS_SOFT_LIMIT_CELSIUS = 60.0
FORECASTS = ("memory_exhaustion_s", "disk_full_s", "thermal_throttle_s")


def throttle_limit(pi_model: str | None) -> float:
    """The temperature at which a device's firmware starts slowing it down."""
    if pi_model and "3 Model B Plus" in pi_model:
        return PI3B_PLUS_SOFT_LIMIT_CELSIUS
    return THROTTLE_CELSIUS


@dataclass
class _Series:
    """One signal averaged per step, the line through its last steps, and the time until the
    line reaches ``target`` (computed once per step: readings in between cost an addition)."""

    target: float
    falling: bool = False  # heading down towards the target (memory) rather than up
    line: Linear = field(default_factory=lambda: Linear(k=1, window=WINDOW))
    step_at: float | None = None  # start of the open step (seconds)
    total: float = 0.0
    count: int = 0
    eta_s: float | None = None

    def add(self, t_s: float, value: float) -> None:
        if self.step_at is None:
            self.step_at = t_s
        elif t_s >= self.step_at + STEP_S:
            if self.count:
                self.line.step(np.array([self.total / self.count]))
                self.eta_s = self._eta_s()
            self.step_at += STEP_S * math.floor((t_s - self.step_at) / STEP_S)
            self.total, self.count = 0.0, 0
        self.total += value
        self.count += 1

    def _eta_s(self) -> float | None:
        """Seconds until the line reaches the target (0 once past it)."""
        if self.line.count < MIN_STEPS:
            return None
        level = float(self.line.level[0])
        if (level <= self.target) if self.falling else (level >= self.target):
            return 0.0
        steps = float(steps_to_threshold(self.line.level, self.line.trend, self.target)[0])
        return steps * STEP_S if math.isfinite(steps) else None


def _partitions(value: Any) -> Sequence[Mapping[str, Any]]:
    return value if isinstance(value, list) else []


@dataclass
class Outlook:
    """One device's forecasts, fed its readings in time order."""

    throttle_celsius: float = THROTTLE_CELSIUS
    memory: _Series = field(default_factory=lambda: _Series(MEMORY_FLOOR_PERCENT, falling=True))
    temperature: _Series = field(init=False)
    disks: dict[str, _Series] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.temperature = _Series(self.throttle_celsius)

    def add(self, ts: datetime, reading: Mapping[str, Any]) -> dict[str, float | None]:
        """Take one reading; return the time to each limit (see :data:`FORECASTS`).

        ``reading`` holds ``memory_available_bytes``, ``memory_total_bytes``,
        ``sensors_cpu_celsius`` and ``disk_partitions`` (records with ``mountpoint`` and
        ``percent``), any of them None.
        """
        t = ts.timestamp()
        available, total = reading.get("memory_available_bytes"), reading.get(
            "memory_total_bytes")
        if available is not None and total:
            self.memory.add(t, 100.0 * float(available) / float(total))
        celsius = reading.get("sensors_cpu_celsius")
        if celsius is not None:
            self.temperature.add(t, float(celsius))
        seen = set()
        for partition in _partitions(reading.get("disk_partitions")):
            name, percent = partition.get("mountpoint"), partition.get("percent")
            if name is None or percent is None:
                continue
            seen.add(name)
            series = self.disks.get(str(name))
            if series is None:
                series = self.disks[str(name)] = _Series(100.0)
            series.add(t, float(percent))
        if len(seen) < len(self.disks):  # unmounted: its forecast would go stale
            for gone in set(self.disks) - seen:
                del self.disks[gone]
        disk = [s.eta_s for s in self.disks.values() if s.eta_s is not None]
        return {"memory_exhaustion_s": self.memory.eta_s,
                "disk_full_s": min(disk) if disk else None,
                "thermal_throttle_s": self.temperature.eta_s}
