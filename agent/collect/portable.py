"""The portable backend: every reading through psutil (macOS, BSD, Windows; Linux without
/proc access, a fake platform in tests), and the procfs backend's fallback for a reading it
cannot make. The only module of the agent that imports psutil.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from agent import pi
from agent.collect.common import (
    SKIP_FSTYPES,
    Listing,
    Sample,
    core_times_from,
    none_if_zero,
    read_zone_celsius,
)
from agent.processes import STATUSES, ProcRecord, Scanner
from shared.schema import Partition, Temperature

log = logging.getLogger("agent.collect")

PSUTIL: Any = psutil  # the module itself, the collector's default platform


class PortableBackend:
    """Read the machine through psutil (``ps``: the psutil module, or a fake of it)."""

    def __init__(self, ps: Any = psutil) -> None:
        self.ps = ps

    def refresh(self, listing: Listing) -> None:
        """Nothing to open: psutil reads its files at each call."""

    def process_scanner(self) -> Scanner:
        return PsutilProcesses(self.ps)

    def sample(self, now: float, listing: Listing,
               throttle: pi.ThrottleReader | None) -> Sample:
        return Sample(
            monotonic_s=now,
            core_times=[core_times_from(t) for t in self.ps.cpu_times(percpu=True)],
            freq_mhz=self.freq(),
            **self.cpu_stats(),
            load=self.load(),
            memory=self.memory(),
            partitions=self.partitions(listing.mounts),
            disk_io=self.disk_io(listing.disks),
            net_io=self.net_io(),
            temperatures=self.temperatures(listing.zones),
            battery=self.battery(),
            throttled_raw=throttle.read() if throttle else None,
        )

    def memory_total(self) -> int | None:
        try:
            total: int | None = self.ps.virtual_memory().total
        except Exception:  # noqa: BLE001 - a platform without it reports null
            total = None
        return total

    def cpu_counts(self) -> tuple[int | None, int | None]:
        """Logical and physical CPUs."""
        return self.ps.cpu_count(logical=True), self.ps.cpu_count(logical=False)

    def mounts(self) -> list[tuple[str, str, str]]:
        """The partitions readings cover: (mountpoint, device, fstype), one per device."""
        seen_devices: set[str] = set()
        mounts = []
        try:
            for part in self.ps.disk_partitions(all=False):
                if part.fstype in SKIP_FSTYPES or part.mountpoint.startswith("/snap/"):
                    continue
                if part.device in seen_devices:  # bind mounts show the same device again
                    continue
                seen_devices.add(part.device)
                mounts.append((part.mountpoint, part.device, part.fstype))
        except Exception as exc:  # noqa: BLE001
            log.debug("cannot list partitions: %s", exc)
        return mounts

    def freq(self) -> tuple[float | None, float | None, float | None]:
        try:
            freq = self.ps.cpu_freq()
        except Exception:  # noqa: BLE001 - e.g. FileNotFoundError in some containers
            freq = None
        if freq is None:
            return (None, None, None)
        return (none_if_zero(freq.current), none_if_zero(freq.min), none_if_zero(freq.max))

    def cpu_stats(self) -> dict[str, int | None]:
        stats = self.ps.cpu_stats()
        return {
            "ctx_switches": stats.ctx_switches,
            "interrupts": stats.interrupts,
            "soft_interrupts": stats.soft_interrupts,
            # Linux has no system-wide syscall counter; psutil reports 0 there.
            "syscalls": None if sys.platform.startswith("linux") else stats.syscalls,
        }

    def load(self) -> tuple[float, float, float] | None:
        try:
            one, five, fifteen = self.ps.getloadavg()
            return (float(one), float(five), float(fifteen))
        except (OSError, AttributeError):
            return None

    def memory(self) -> dict[str, int | float | None]:
        vm = self.ps.virtual_memory()
        memory: dict[str, int | float | None] = {
            "total_bytes": vm.total, "available_bytes": vm.available, "used_bytes": vm.used,
            "free_bytes": vm.free, "percent": vm.percent}
        try:
            sw = self.ps.swap_memory()
            memory.update({"swap_total_bytes": sw.total, "swap_used_bytes": sw.used,
                           "swap_free_bytes": sw.free, "swap_percent": sw.percent,
                           "swap_in_bytes": sw.sin, "swap_out_bytes": sw.sout})
        except Exception:  # noqa: BLE001 - no swap accounting in some containers
            memory.update(dict.fromkeys(("swap_total_bytes", "swap_used_bytes",
                                         "swap_free_bytes", "swap_percent",
                                         "swap_in_bytes", "swap_out_bytes")))
        return memory

    def partitions(self, mounts: list[tuple[str, str, str]]) -> list[Partition]:
        partitions: list[Partition] = []
        for mountpoint, device, fstype in mounts:
            try:
                usage = self.ps.disk_usage(mountpoint)
            except OSError:  # unmounted since the last refresh
                continue
            partitions.append({"mountpoint": mountpoint, "device": device, "fstype": fstype,
                               "total_bytes": usage.total, "used_bytes": usage.used,
                               "free_bytes": usage.free, "percent": usage.percent})
        return partitions

    def disk_io(self, disks: set[str] | None) -> dict[str, tuple[int, ...]]:
        try:
            # perdisk=True is cheaper than the total, and gives the total by summing.
            per_disk = self.ps.disk_io_counters(perdisk=True, nowrap=True) or {}
        except Exception:  # noqa: BLE001 - no /proc/diskstats in some containers
            return {}
        return {name: (c.read_count, c.write_count, c.read_bytes, c.write_bytes)
                for name, c in per_disk.items()
                if disks is None or name in disks}

    def net_io(self) -> dict[str, tuple[int, ...]]:
        try:
            per_nic = self.ps.net_io_counters(pernic=True, nowrap=True)
        except Exception:  # noqa: BLE001
            return {}
        return {name: (c.bytes_sent, c.bytes_recv, c.packets_sent, c.packets_recv,
                       c.errin, c.errout, c.dropin, c.dropout)
                for name, c in per_nic.items()}

    def temperatures(self, zones: list[tuple[str, Path]]) -> list[Temperature]:
        temps: list[Temperature] = []
        zone_types = {kind for kind, _ in zones}
        reader = getattr(self.ps, "sensors_temperatures", None)  # absent on Windows
        if reader is not None:
            try:
                for sensor, entries in reader().items():
                    for entry in entries:
                        # With no hwmon, psutil falls back to thermal zones (empty label);
                        # those are read below with their zone name, so skip them here.
                        if not entry.label and sensor in zone_types:
                            continue
                        if entry.current is not None and -100 <= entry.current <= 300:
                            temps.append({"sensor": sensor, "label": entry.label,
                                          "celsius": float(entry.current)})
            except Exception as exc:  # noqa: BLE001
                log.debug("cannot read temperatures: %s", exc)
        for kind, temp_file in zones:
            celsius = read_zone_celsius(temp_file)
            if celsius is not None and -100 <= celsius <= 300:
                temps.append({"sensor": kind, "label": temp_file.parent.name,
                              "celsius": celsius})
        return temps

    def battery(self) -> tuple[float | None, bool | None, float | None]:
        reader = getattr(self.ps, "sensors_battery", None)
        try:
            battery = reader() if reader else None
        except Exception:  # noqa: BLE001
            battery = None
        if battery is None:
            return (None, None, None)
        secs = battery.secsleft
        seconds_left = float(secs) if isinstance(secs, (int, float)) and secs >= 0 else None
        return (float(battery.percent), battery.power_plugged, seconds_left)


class PsutilProcesses:
    """:class:`agent.processes.ProcScanner`'s readings from psutil (macOS, BSD, Windows).

    Only cheap attributes are asked of every process each period; name and user are
    asked once per (pid, create time) and kept.
    """

    _ATTRS = ("cpu_times", "memory_info", "num_threads", "status")
    _STATUS_NAMES = frozenset(STATUSES.values())

    def __init__(self, ps: Any = psutil) -> None:
        self.ps = ps
        self._known: dict[tuple[int, float], tuple[str, str | None]] = {}

    def scan(self) -> list[ProcRecord]:
        records: list[ProcRecord] = []
        known: dict[tuple[int, float], tuple[str, str | None]] = {}
        for proc in self.ps.process_iter(list(self._ATTRS)):
            info = proc.info
            try:
                key = (proc.pid, float(proc.create_time()))  # cached by psutil after once
            except Exception:  # noqa: BLE001, S112 - gone, or not allowed
                continue
            ident = self._known.get(key)
            if ident is None:
                ident = (self._ask(proc.name) or str(proc.pid), self._ask(proc.username))
            known[key] = ident
            times, memory = info.get("cpu_times"), info.get("memory_info")
            status = info.get("status") or "unknown"
            records.append(ProcRecord(
                proc.pid, key[1], status if status in self._STATUS_NAMES else "unknown",
                float(times.user + times.system) if times else 0.0,
                int(memory.rss) if memory else 0, info.get("num_threads"), *ident))
        self._known = known
        return records

    @staticmethod
    def _ask(method: Callable[[], str]) -> str | None:
        try:
            return method()
        except Exception:  # noqa: BLE001 - AccessDenied, NoSuchProcess, …
            return None

    def io(self, pid: int) -> tuple[int | None, int | None]:
        try:
            counters = self.ps.Process(pid).io_counters()
        except Exception:  # noqa: BLE001 - not on macOS; not allowed; gone
            return (None, None)
        return (int(counters.read_bytes), int(counters.write_bytes))
