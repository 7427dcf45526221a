"""Build the wire messages from samples (pure: no clock, no I/O) and serialise them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import cast

import orjson

from agent.collect import Sample, StaticFacts
from agent.pi import decode_throttled
from agent.rates import cpu_percent, rate
from shared import __version__
from shared.schema import (
    SCHEMA_VERSION,
    Cpu,
    Disk,
    DiskIo,
    Memory,
    Meta,
    MetricsV1,
    NetIo,
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


def counters_and_rates(fields: tuple[str, ...], prev: Counters | None, cur: Counters | None,
                       dt: float) -> dict[str, int | float | None]:
    """Return ``{field: cumulative, field_per_s: rate}`` for each field of a counter tuple."""
    out: dict[str, int | float | None] = {}
    for i, name in enumerate(fields):
        value = cur[i] if cur is not None else None
        out[name] = value
        out[name + "_per_s"] = rate(prev[i] if prev is not None else None, value, dt)
    return out


def _sum(rows: Iterable[Counters]) -> Counters | None:
    rows = list(rows)
    return tuple(map(sum, zip(*rows, strict=True))) if rows else None


def totals(fields: tuple[str, ...], before: Mapping[str, Counters], now: Mapping[str, Counters],
           names: list[str], dt: float) -> dict[str, int | float | None]:
    """Sum counters over ``names``; rates only over the names present in both readings,
    so a disk or interface that appears between two readings is not a burst of traffic."""
    common = [n for n in names if n in before]
    out = counters_and_rates(fields, _sum(before[n] for n in common),
                             _sum(now[n] for n in common), dt)
    cumulative = _sum(now[n] for n in names)
    for i, name in enumerate(fields):
        out[name] = cumulative[i] if cumulative else None
    return out


def _cpu(prev: Sample | None, cur: Sample, dt: float) -> Cpu:
    total, per_core = cpu_percent(prev.core_times if prev else None, cur.core_times)
    load = cur.load or (None, None, None)

    def counter_rate(name: str) -> float | None:
        return rate(getattr(prev, name) if prev else None, getattr(cur, name), dt)

    return {
        "percent": total, "per_core_percent": per_core,
        "freq_current_mhz": cur.freq_mhz[0], "freq_min_mhz": cur.freq_mhz[1],
        "freq_max_mhz": cur.freq_mhz[2],
        "ctx_switches": cur.ctx_switches, "ctx_switches_per_s": counter_rate("ctx_switches"),
        "interrupts": cur.interrupts, "interrupts_per_s": counter_rate("interrupts"),
        "soft_interrupts": cur.soft_interrupts,
        "soft_interrupts_per_s": counter_rate("soft_interrupts"),
        "syscalls": cur.syscalls, "syscalls_per_s": counter_rate("syscalls"),
        "load_1": load[0], "load_5": load[1], "load_15": load[2],
    }


def _memory(prev: Sample | None, cur: Sample, dt: float) -> Memory:
    m = cur.memory
    return cast(Memory, {
        **m,
        "swap_in_bytes_per_s": rate(prev.memory["swap_in_bytes"] if prev else None,
                                    m["swap_in_bytes"], dt),
        "swap_out_bytes_per_s": rate(prev.memory["swap_out_bytes"] if prev else None,
                                     m["swap_out_bytes"], dt),
    })


def _disk(prev: Sample | None, cur: Sample, dt: float) -> Disk:
    before = prev.disk_io if prev else {}
    per_disk = [cast(DiskIo, {"name": name, **counters_and_rates(DISK_FIELDS, before.get(name),
                                                                  counters, dt)})
                for name, counters in sorted(cur.disk_io.items())]
    return cast(Disk, {**totals(DISK_FIELDS, before, cur.disk_io, list(cur.disk_io), dt),
                       "partitions": cur.partitions, "per_disk": per_disk})


def _network(prev: Sample | None, cur: Sample, dt: float) -> Network:
    before = prev.net_io if prev else {}
    per_interface = [cast(NetIo, {"name": name, **counters_and_rates(NET_FIELDS, before.get(name),
                                                                      counters, dt)})
                     for name, counters in sorted(cur.net_io.items())]
    # Totals leave out loopback: traffic a machine sends itself is not network traffic.
    external = [n for n in cur.net_io if n != "lo" and not n.lower().startswith("loopback")]
    return cast(Network, {**totals(NET_FIELDS, before, cur.net_io, external, dt),
                          "per_interface": per_interface})


def _sensors(cur: Sample) -> Sensors:
    percent, charging, seconds_left = cur.battery
    return {
        "cpu_celsius": pick_celsius(cur.temperatures, CPU_SENSORS, _CPU_LABELS),
        "gpu_celsius": pick_celsius(cur.temperatures, GPU_SENSORS, ("edge", "")),
        "temperatures": cur.temperatures,
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
