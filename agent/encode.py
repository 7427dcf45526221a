"""Build the wire messages from samples (pure: no clock, no I/O) and serialise them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import orjson

from agent.collect import Sample, StaticFacts
from agent.pi import decode_throttled
from agent.rates import cpu_percent
from shared import __version__
from shared.schema import (
    SCHEMA_VERSION,
    Cpu,
    Disk,
    Memory,
    Meta,
    MetricsV1,
    Network,
    Sensors,
    Temperature,
)

# Sensor names that mean "the CPU" / "the GPU", best first (Pi, Intel, AMD, ARM SoCs, ACPI).
CPU_SENSORS = ("cpu_thermal", "cpu-thermal", "coretemp", "k10temp", "zenpower",
               "x86_pkg_temp", "soc_thermal", "soc-thermal", "cpu0_thermal", "acpitz")
GPU_SENSORS = ("gpu_thermal", "gpu-thermal", "amdgpu", "nouveau", "radeon", "gpu0_thermal")
_CPU_LABELS = ("package id 0", "tctl", "tdie", "")


def pick_celsius(temperatures: Iterable[Temperature], sensors: tuple[str, ...],
                 preferred_labels: tuple[str, ...] = ()) -> float | None:
    """Pick the temperature of the first sensor name in ``sensors`` that is present."""
    by_sensor: dict[str, list[Temperature]] = {}
    for t in temperatures:
        by_sensor.setdefault(t["sensor"], []).append(t)
    for name in sensors:
        entries = by_sensor.get(name)
        if not entries:
            continue
        for label in preferred_labels:
            for entry in entries:
                if entry["label"].lower() == label:
                    return entry["celsius"]
        return entries[0]["celsius"]
    return None


def utc_ms(epoch_s: float) -> datetime:
    """Return a UTC datetime truncated to the millisecond."""
    return datetime.fromtimestamp(int(epoch_s * 1000) / 1000, tz=UTC)


DISK_FIELDS = ("read_count", "write_count", "read_bytes", "write_bytes")
NET_FIELDS = ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv",
              "errors_in", "errors_out", "drops_in", "drops_out")
Counters = tuple[int, ...]

# This runs once a second on every device, with cold caches: the message is built with as
# few calls and temporary objects as possible (key names computed once, rates inlined).
# The values are those of agent.rates.rate: None without a previous value, for a
# non-positive interval or a counter that went backwards; else rounded to 3 decimals.
_DISK_KEYS = tuple((name, name + "_per_s") for name in DISK_FIELDS)
_NET_KEYS = tuple((name, name + "_per_s") for name in NET_FIELDS)


def _rates(keys: tuple[tuple[str, str], ...], prev: Counters | None, cur: Counters | None,
           dt: float, out: dict[str, Any]) -> dict[str, Any]:
    """Put ``field: cumulative, field_per_s: rate`` into ``out`` for each field."""
    if cur is None:
        for name, per_s in keys:
            out[name] = None
            out[per_s] = None
    elif prev is None or dt <= 0:
        for (name, per_s), value in zip(keys, cur, strict=False):
            out[name] = value
            out[per_s] = None
    else:
        for (name, per_s), value, before in zip(keys, cur, prev, strict=False):
            out[name] = value
            out[per_s] = (None if value is None or before is None or value < before
                          else round((value - before) / dt, 3))
    return out


def counters_and_rates(fields: tuple[str, ...], prev: Counters | None, cur: Counters | None,
                       dt: float) -> dict[str, int | float | None]:
    """Return ``{field: cumulative, field_per_s: rate}`` for each field of a counter tuple."""
    keys = _DISK_KEYS if fields is DISK_FIELDS else _NET_KEYS if fields is NET_FIELDS else \
        tuple((name, name + "_per_s") for name in fields)
    return _rates(keys, prev, cur, dt, {})


def _sum(rows: list[Counters]) -> Counters | None:
    if len(rows) == 1:
        return rows[0]
    return tuple(map(sum, zip(*rows, strict=True))) if rows else None


def _totals(keys: tuple[tuple[str, str], ...], before: Mapping[str, Counters],
            now: Mapping[str, Counters], names: list[str], dt: float,
            out: dict[str, Any]) -> dict[str, Any]:
    common = [n for n in names if n in before]
    current = [now[n] for n in names]
    if len(common) == len(names):
        _rates(keys, _sum([before[n] for n in names]), _sum(current), dt, out)
        return out
    _rates(keys, _sum([before[n] for n in common]), _sum([now[n] for n in common]), dt, out)
    cumulative = _sum(current)
    for i, (name, _) in enumerate(keys):
        out[name] = cumulative[i] if cumulative else None
    return out


def totals(fields: tuple[str, ...], before: Mapping[str, Counters], now: Mapping[str, Counters],
           names: list[str], dt: float) -> dict[str, int | float | None]:
    """Sum counters over ``names``; rates only over the names present in both readings,
    so a disk or interface that appears between two readings is not a burst of traffic."""
    keys = tuple((name, name + "_per_s") for name in fields)
    return _totals(keys, before, now, names, dt, {})


def _rate(prev: float | None, cur: float | None, dt: float) -> float | None:
    if prev is None or cur is None or dt <= 0 or cur < prev:
        return None
    return round((cur - prev) / dt, 3)


def _cpu(prev: Sample | None, cur: Sample, dt: float) -> Cpu:
    total, per_core = cpu_percent(prev.core_times if prev else None, cur.core_times)
    load = cur.load or (None, None, None)
    freq = cur.freq_mhz
    if prev is None:
        ctx_rate = intr_rate = soft_rate = sys_rate = None
    else:
        ctx_rate = _rate(prev.ctx_switches, cur.ctx_switches, dt)
        intr_rate = _rate(prev.interrupts, cur.interrupts, dt)
        soft_rate = _rate(prev.soft_interrupts, cur.soft_interrupts, dt)
        sys_rate = _rate(prev.syscalls, cur.syscalls, dt)
    return {
        "percent": total, "per_core_percent": per_core,
        "freq_current_mhz": freq[0], "freq_min_mhz": freq[1], "freq_max_mhz": freq[2],
        "ctx_switches": cur.ctx_switches, "ctx_switches_per_s": ctx_rate,
        "interrupts": cur.interrupts, "interrupts_per_s": intr_rate,
        "soft_interrupts": cur.soft_interrupts, "soft_interrupts_per_s": soft_rate,
        "syscalls": cur.syscalls, "syscalls_per_s": sys_rate,
        "load_1": load[0], "load_5": load[1], "load_15": load[2],
    }


def _memory(prev: Sample | None, cur: Sample, dt: float) -> Memory:
    m = cur.memory
    out: dict[str, Any] = dict(m)
    if prev is None:
        out["swap_in_bytes_per_s"] = out["swap_out_bytes_per_s"] = None
    else:
        before = prev.memory
        out["swap_in_bytes_per_s"] = _rate(before["swap_in_bytes"], m["swap_in_bytes"], dt)
        out["swap_out_bytes_per_s"] = _rate(before["swap_out_bytes"], m["swap_out_bytes"],
                                            dt)
    return cast(Memory, out)


def _disk(prev: Sample | None, cur: Sample, dt: float) -> Disk:
    before = prev.disk_io if prev else {}
    now = cur.disk_io
    per_disk = []
    for name in sorted(now):
        per_disk.append(_rates(_DISK_KEYS, before.get(name), now[name], dt, {"name": name}))
    out = _totals(_DISK_KEYS, before, now, list(now), dt, {})
    out["partitions"] = cur.partitions
    out["per_disk"] = per_disk
    return cast(Disk, out)


def _network(prev: Sample | None, cur: Sample, dt: float) -> Network:
    before = prev.net_io if prev else {}
    now = cur.net_io
    per_interface = []
    for name in sorted(now):
        per_interface.append(_rates(_NET_KEYS, before.get(name), now[name], dt, {"name": name}))
    # Totals leave out loopback: traffic a machine sends itself is not network traffic.
    external = [n for n in now if n != "lo" and not n.lower().startswith("loopback")]
    out = _totals(_NET_KEYS, before, now, external, dt, {})
    out["per_interface"] = per_interface
    return cast(Network, out)


def _sensors(cur: Sample) -> Sensors:
    percent, charging, seconds_left = cur.battery
    temperatures = cur.temperatures
    return {
        "cpu_celsius": pick_celsius(temperatures, CPU_SENSORS, _CPU_LABELS)
        if temperatures else None,
        "gpu_celsius": pick_celsius(temperatures, GPU_SENSORS, ("edge", ""))
        if temperatures else None,
        "temperatures": temperatures,
        "battery_percent": percent, "battery_charging": charging,
        "battery_s_left": seconds_left,
    }


def build_metrics(prev: Sample | None, cur: Sample, *, device_id: str, session_id: str,
                  seq: int, epoch_s: float, interval_s: float) -> MetricsV1:
    """Build one reading from the current sample and the one before it (None at start)."""
    dt = cur.monotonic_s - prev.monotonic_s if prev else 0.0
    return {
        "v": SCHEMA_VERSION, "device_id": device_id, "session_id": session_id, "seq": seq,
        "ts": utc_ms(epoch_s), "interval_s": interval_s,
        "cpu": _cpu(prev, cur, dt), "memory": _memory(prev, cur, dt),
        "disk": _disk(prev, cur, dt), "network": _network(prev, cur, dt),
        "sensors": _sensors(cur), "throttling": decode_throttled(cur.throttled_raw),
    }


def build_meta(facts: StaticFacts, *, device_id: str, session_id: str, interval_s: float,
               spool_readings: int = 0, spool_dropped: int = 0) -> Meta:
    """Build the retained meta message from the machine's static facts."""
    return {
        "v": SCHEMA_VERSION, "device_id": device_id, "hostname": facts.hostname,
        "os": facts.os, "kernel": facts.kernel, "architecture": facts.architecture,
        "pi_model": facts.pi_model, "cpu_count_logical": facts.cpu_count_logical,
        "cpu_count_physical": facts.cpu_count_physical,
        "memory_total_bytes": facts.memory_total_bytes, "agent_version": __version__,
        "schema_version": SCHEMA_VERSION, "interval_s": interval_s, "session_id": session_id,
        "spool_readings": spool_readings, "spool_dropped": spool_dropped,
    }


def encode(message: MetricsV1 | Meta) -> bytes:
    """Serialise a message to compact JSON (orjson: ~10× faster than json.dumps)."""
    return orjson.dumps(message, option=orjson.OPT_UTC_Z)
