"""Build the wire messages from samples (pure: no clock, no I/O) and serialise them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from operator import add, sub
from typing import Any, cast

import orjson

from agent.collect import Sample, StaticFacts
from agent.pi import decode_throttled
from agent.rates import cpu_percent, rate
from shared import __version__
from shared.schema import (
    SCHEMA_VERSION,
    Cpu,
    Disk,
    Memory,
    Meta,
    MetricsV1,
    Network,
    ProcessesV1,
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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def utc_ms(epoch_s: float) -> datetime:
    """Return a UTC datetime truncated to the millisecond."""
    # The same value as datetime.fromtimestamp(ms / 1000, UTC) for every ms (a float is
    # far finer than a microsecond there), touching less of the datetime module's code: at
    # cold caches that costs more than the arithmetic (fromtimestamp also calls fromutc).
    return _EPOCH + _MILLISECOND * int(epoch_s * 1000)


DISK_FIELDS = ("read_count", "write_count", "read_bytes", "write_bytes")
NET_FIELDS = ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv",
              "errors_in", "errors_out", "drops_in", "drops_out")
Counters = tuple[int, ...]
Rates = Sequence[float | None]

# This runs once a second on every device, with cold caches: there, what costs is each
# kind of work done at all (every function, builtin and allocation is a cache miss), far
# more than repeating it. So a counter block is one dict display (one allocation, no helper
# per field), sums and differences use map, and no builtin gets keyword arguments
# (zip(strict=...) parses them: ~15 µs cold). tests/unit/agent/test_encode.py checks the
# displays against DISK_FIELDS / NET_FIELDS and the schema.
_NO_DISK: tuple[None, ...] = (None,) * len(DISK_FIELDS)  # values or rates unknown
_NO_NET: tuple[None, ...] = (None,) * len(NET_FIELDS)


def _rates(prev: Counters | None, cur: Counters, dt: float) -> Rates | None:
    """Return each counter's rate as agent.rates.rate does; None without a usable interval."""
    if prev is None or dt <= 0:
        return None
    # An unchanged counter (most of them, each second) is 0.0 without a division and round.
    return [None if delta < 0 else 0.0 if delta == 0 else round(delta / dt, 3)
            for delta in map(sub, cur, prev)]


def _totals(before: Mapping[str, Counters], now: Mapping[str, Counters], names: list[str],
            dt: float) -> tuple[Counters | None, Rates | None]:
    """Sum counters over ``names``; rates only over the names present in both readings,
    so a disk or interface that appears between two readings is not a burst of traffic."""
    total: Counters | None = None
    common_now: Counters | None = None  # over the names also in the reading before
    common_before: Counters | None = None
    for name in names:
        values = now[name]
        total = values if total is None else tuple(map(add, total, values))
        old = before.get(name)
        if old is not None:
            common_now = values if common_now is None else tuple(map(add, common_now, values))
            common_before = old if common_before is None else tuple(map(add, common_before, old))
    if common_now is None:
        return total, None
    return total, _rates(common_before, common_now, dt)


def _cpu(prev: Sample | None, cur: Sample, dt: float) -> Cpu:
    total, per_core = cpu_percent(prev.core_times if prev else None, cur.core_times)
    load = cur.load or (None, None, None)
    freq = cur.freq_mhz
    if prev is None:
        ctx_rate = intr_rate = soft_rate = sys_rate = None
    else:
        ctx_rate = rate(prev.ctx_switches, cur.ctx_switches, dt)
        intr_rate = rate(prev.interrupts, cur.interrupts, dt)
        soft_rate = rate(prev.soft_interrupts, cur.soft_interrupts, dt)
        sys_rate = rate(prev.syscalls, cur.syscalls, dt)
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
        out["swap_in_bytes_per_s"] = rate(before["swap_in_bytes"], m["swap_in_bytes"], dt)
        out["swap_out_bytes_per_s"] = rate(before["swap_out_bytes"], m["swap_out_bytes"], dt)
    return cast(Memory, out)


def _disk_io(name: str, c: Sequence[int | None], r: Rates) -> dict[str, Any]:
    """One disk's counters and rates (the totals are the same without the name)."""
    return {"name": name,
            "read_count": c[0], "read_count_per_s": r[0],
            "write_count": c[1], "write_count_per_s": r[1],
            "read_bytes": c[2], "read_bytes_per_s": r[2],
            "write_bytes": c[3], "write_bytes_per_s": r[3]}


def _disk(prev: Sample | None, cur: Sample, dt: float) -> Disk:
    before = prev.disk_io if prev else {}
    now = cur.disk_io
    per_disk = [_disk_io(name, now[name], _rates(before.get(name), now[name], dt) or _NO_DISK)
                for name in sorted(now)]
    cumulative, rates = _totals(before, now, list(now), dt)
    out = _disk_io("", cumulative or _NO_DISK, rates or _NO_DISK)
    del out["name"]  # the totals have none
    out["partitions"] = cur.partitions
    out["per_disk"] = per_disk
    return cast(Disk, out)


def _net_io(name: str, c: Sequence[int | None], r: Rates) -> dict[str, Any]:
    """One interface's counters and rates (the totals are the same without the name)."""
    return {"name": name,
            "bytes_sent": c[0], "bytes_sent_per_s": r[0],
            "bytes_recv": c[1], "bytes_recv_per_s": r[1],
            "packets_sent": c[2], "packets_sent_per_s": r[2],
            "packets_recv": c[3], "packets_recv_per_s": r[3],
            "errors_in": c[4], "errors_in_per_s": r[4],
            "errors_out": c[5], "errors_out_per_s": r[5],
            "drops_in": c[6], "drops_in_per_s": r[6],
            "drops_out": c[7], "drops_out_per_s": r[7]}


def _network(prev: Sample | None, cur: Sample, dt: float) -> Network:
    before = prev.net_io if prev else {}
    now = cur.net_io
    per_interface = [_net_io(name, now[name], _rates(before.get(name), now[name], dt) or _NO_NET)
                     for name in sorted(now)]
    # Totals leave out loopback: traffic a machine sends itself is not network traffic.
    external = [n for n in now if n != "lo" and n[:8].lower() != "loopback"]
    cumulative, rates = _totals(before, now, external, dt)
    out = _net_io("", cumulative or _NO_NET, rates or _NO_NET)
    del out["name"]  # the totals have none
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
                  seq: int, epoch_s: float, interval_s: float,
                  hub_reads: frozenset[str] = frozenset(),
                  clock_synced: bool | None = None,
                  processes: ProcessesV1 | None = None) -> MetricsV1:
    """Build one reading from the current sample and the one before it (None at start).

    Args:
        hub_reads: the optional fields the hub says it reads (its capability message);
            the others are left out, so a hub that predates them accepts the reading.
        processes: a process scan not sent yet (agent/processes.py), or None.
    """
    dt = cur.monotonic_s - prev.monotonic_s if prev else 0.0
    message: MetricsV1 = {
        "v": SCHEMA_VERSION, "device_id": device_id, "session_id": session_id, "seq": seq,
        "ts": utc_ms(epoch_s), "interval_s": interval_s,
        "cpu": _cpu(prev, cur, dt), "memory": _memory(prev, cur, dt),
        "disk": _disk(prev, cur, dt), "network": _network(prev, cur, dt),
        "sensors": _sensors(cur), "throttling": decode_throttled(cur.throttled_raw),
    }
    if "clock_synced" in hub_reads:
        message["clock_synced"] = clock_synced
    if processes is not None and "processes" in hub_reads:
        message["processes"] = processes
    return message


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
