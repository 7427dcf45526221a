"""The signals a device's detector watches, derived from a stored reading; pure.

One function serves both paths: training reads :data:`SOURCE_COLUMNS` from the stored history
(both tiers), live scoring picks the same columns out of the row tuples it is about to write;
both hand the values, in that order, to :func:`signal_rows`. A value the device cannot give
(no swap, no sensor) is NaN, which every detector treats as "no value" (hub/detect/__init__.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from hub.detect.model import Floats

# The metrics columns the signals are made from, in the order :func:`signal_values` reads them.
SOURCE_COLUMNS: tuple[str, ...] = (
    "cpu_percent", "cpu_per_core_percent", "cpu_load_1",
    "memory_available_bytes", "memory_swap_used_bytes",
    "memory_swap_in_bytes_per_s", "memory_swap_out_bytes_per_s",
    "disk_read_bytes_per_s", "disk_write_bytes_per_s",
    "network_bytes_sent_per_s", "network_bytes_recv_per_s",
    "sensors_cpu_celsius", "sensors_temperatures",
    "cpu_ctx_switches_per_s", "cpu_interrupts_per_s", "cpu_soft_interrupts_per_s",
)
# The detector's input streams, in order (stored with each model: a model trained on another
# list is not used).
SIGNALS: tuple[str, ...] = (
    "cpu_percent", "cpu_core_spread_percent", "cpu_load_1",
    "memory_available_bytes", "memory_swap_used_bytes",
    "memory_swap_in_bytes_per_s", "memory_swap_out_bytes_per_s",
    "disk_read_bytes_per_s", "disk_write_bytes_per_s",
    "network_bytes_sent_per_s", "network_bytes_recv_per_s",
    "cpu_celsius", "max_temperature_celsius",
    "cpu_ctx_switches_per_s", "cpu_interrupts_per_s", "cpu_soft_interrupts_per_s",
)
# The same signals computed by PostgreSQL from the stored columns, for training: a device-day
# then reaches the hub as 86,400 rows of plain numbers instead of arrays and JSON to decode
# (tests/integration/test_models.py checks both give the same matrix).
SIGNAL_SQL: tuple[str, ...] = (
    "cpu_percent",
    "(select max(v) - min(v) from unnest(cpu_per_core_percent) v)",
    "cpu_load_1",
    "memory_available_bytes::float8", "memory_swap_used_bytes::float8",
    "memory_swap_in_bytes_per_s", "memory_swap_out_bytes_per_s",
    "disk_read_bytes_per_s", "disk_write_bytes_per_s",
    "network_bytes_sent_per_s", "network_bytes_recv_per_s",
    "sensors_cpu_celsius",
    "(select max((t->>'celsius')::float8) from jsonb_array_elements(sensors_temperatures) t)",
    "cpu_ctx_switches_per_s", "cpu_interrupts_per_s", "cpu_soft_interrupts_per_s",
)
NAN = math.nan

# The smallest change of each signal, in its own units, that can count as anomalous by itself
# (Novelty's ``floor`` state; tuned on bench/data/faults.jsonl.xz and faults2.jsonl.xz, judged
# on faults3.jsonl.xz, docs/anomaly.md). A quiet machine trains on a tiny range: a load of
# 0.2 or 20 MB of memory beyond it is a new record by the range alone, and nothing an operator
# would call a fault. Memory sizes are floored by a share of the most memory ever available
# (:func:`signal_floors`); the others by a fixed amount.
KIB, MIB = 1024.0, 1024.0 ** 2
FIXED_FLOORS: dict[str, float] = {
    "cpu_percent": 10.0,  # points: a tenth of the machine
    "cpu_core_spread_percent": 10.0,
    "cpu_load_1": 0.5,
    "memory_swap_in_bytes_per_s": 256 * KIB,  # 64 pages a second
    "memory_swap_out_bytes_per_s": 256 * KIB,
    "disk_read_bytes_per_s": MIB,
    "disk_write_bytes_per_s": MIB,
    "network_bytes_sent_per_s": 128 * KIB,  # 1 Mbit/s
    "network_bytes_recv_per_s": 128 * KIB,
    "cpu_celsius": 2.0,
    "max_temperature_celsius": 2.0,
    "cpu_ctx_switches_per_s": 1000.0,
    "cpu_interrupts_per_s": 1000.0,
    "cpu_soft_interrupts_per_s": 500.0,
}
MEMORY_FLOORS: dict[str, float] = {  # shares of the most memory available in the history
    "memory_available_bytes": 0.01,
    "memory_swap_used_bytes": 0.01,
}


def _number(value: Any) -> float:
    return NAN if value is None else float(value)


def signal_values(raw: Sequence[Any]) -> list[float]:
    """Return the :data:`SIGNALS` of one reading from its :data:`SOURCE_COLUMNS` values.

    The per-core spread is the busiest core's percentage minus the idlest's (a spin on one
    core shows there even when the total barely moves on a many-core machine); the hottest
    temperature is the largest of the reading's sensor list.
    """
    (cpu, cores, load, available, swap_used, swap_in, swap_out, disk_read, disk_write,
     net_sent, net_recv, cpu_celsius, temperatures, ctx, interrupts, soft_interrupts) = raw
    spread = float(max(cores) - min(cores)) if cores else NAN
    hottest = max((float(t["celsius"]) for t in temperatures), default=NAN) \
        if temperatures else NAN
    return [_number(cpu), spread, _number(load), _number(available), _number(swap_used),
            _number(swap_in), _number(swap_out), _number(disk_read), _number(disk_write),
            _number(net_sent), _number(net_recv), _number(cpu_celsius), hottest,
            _number(ctx), _number(interrupts), _number(soft_interrupts)]


def signal_rows(raws: Iterable[Sequence[Any]]) -> Floats:
    """Return a ``T x len(SIGNALS)`` matrix of the readings' signals (NaN: no value)."""
    rows = [signal_values(raw) for raw in raws]
    if not rows:
        return np.zeros((0, len(SIGNALS)))
    return np.array(rows, dtype=np.float64)


def signal_floors(history: Floats) -> Floats:
    """Return each of the :data:`SIGNALS`' floor (:data:`FIXED_FLOORS`, :data:`MEMORY_FLOORS`)
    for a device whose history is ``history`` (``T x len(SIGNALS)``)."""
    available = history[:, SIGNALS.index("memory_available_bytes")]
    most = float(np.nanmax(available)) if np.isfinite(available).any() else 0.0
    return np.array([FIXED_FLOORS.get(name, 0.0) + MEMORY_FLOORS.get(name, 0.0) * most
                     for name in SIGNALS])
