"""Read the machine: the only module that imports psutil.

A :class:`Collector` returns a :class:`Sample` of raw values (cumulative counters and
gauges); turning two samples into percentages and rates is pure work done in
``agent/rates.py`` and ``agent/encode.py``. What is slow and rarely changes (partition
list, disk names, thermal zones, core counts, Pi model) is read at start and refreshed
every ``refresh_s``; what a platform lacks comes back as None, never as an exception.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from agent import pi
from agent.rates import CoreTimes
from shared.schema import Partition, Temperature

log = logging.getLogger(__name__)

# Mounts that are not storage a person cares about (psutil's all=False already drops most
# pseudo file systems; these remain on Linux desktops and Pis).
_SKIP_FSTYPES = {"squashfs", "tmpfs", "devtmpfs", "overlay", "iso9660", "ramfs"}
# Block devices that would count the same I/O twice (device-mapper, RAID) or are not disks.
_SKIP_DISK_PREFIXES = ("loop", "ram", "zram", "dm-", "md", "fd")


@dataclass(frozen=True)
class Sample:
    """Raw readings at one instant; counters are cumulative since boot."""

    monotonic_s: float
    core_times: list[CoreTimes]
    freq_mhz: tuple[float | None, float | None, float | None]
    ctx_switches: int | None
    interrupts: int | None
    soft_interrupts: int | None
    syscalls: int | None
    load: tuple[float, float, float] | None
    memory: dict[str, int | float | None]  # Memory's fields but the two swap rates
    partitions: list[Partition]
    disk_io: dict[str, tuple[int, ...]]  # name -> counters in encode.DISK_FIELDS order
    net_io: dict[str, tuple[int, ...]]  # name -> counters in encode.NET_FIELDS order
    temperatures: list[Temperature]
    battery: tuple[float | None, bool | None, float | None]  # percent, charging, seconds left
    throttled_raw: int | None


@dataclass(frozen=True)
class StaticFacts:
    hostname: str
    os: str
    kernel: str
    architecture: str
    pi_model: str | None
    cpu_count_logical: int | None
    cpu_count_physical: int | None
    memory_total_bytes: int | None


def _none_if_zero(value: float | None) -> float | None:
    # psutil reports 0 for a frequency it cannot know (e.g. min/max without cpufreq).
    return value if value else None


def core_times_from(times: Any) -> CoreTimes:
    """Turn a psutil cpu_times entry into busy/total seconds, as psutil.cpu_percent does."""
    total = sum(times)
    # On Linux guest time is already counted in user/nice (kernel doc: proc.rst, /proc/stat).
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return CoreTimes(busy_s=total - idle, total_s=total)


def read_os_name(root: Path = Path("/")) -> str:
    """Return the distribution's pretty name (os-release) or the platform's name."""
    try:
        for line in (root / "etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}".strip()


def read_thermal_zones(root: Path = Path("/sys")) -> list[tuple[str, Path]]:
    """List Linux thermal zones as (type, temp file); empty where there are none."""
    zones = []
    for zone in sorted((root / "class/thermal").glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip()
        except OSError:
            continue
        zones.append((kind or zone.name, zone / "temp"))
    return zones


def read_zone_celsius(temp_file: Path) -> float | None:
    """Read one thermal zone in °C (sysfs gives millidegrees); None if unreadable."""
    try:
        return int(temp_file.read_text()) / 1000.0
    except (OSError, ValueError):
        return None


@dataclass
class Collector:
    """Take samples of this machine; keeps the slow-to-read, rarely-changing facts cached."""

    refresh_s: float = 60.0
    sys_root: Path = Path("/sys")
    ps: Any = psutil  # the psutil module; tests pass a fake platform
    clock: Callable[[], float] = time.monotonic
    _refreshed_at: float = field(default=-1e18, init=False)
    _mounts: list[tuple[str, str, str]] = field(default_factory=list, init=False)
    _disks: set[str] | None = field(default=None, init=False)
    _zones: list[tuple[str, Path]] = field(default_factory=list, init=False)
    _throttle: pi.ThrottleReader | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._throttle = pi.ThrottleReader(self.sys_root)

    def static_facts(self) -> StaticFacts:
        """Read what does not change while the agent runs (called once, for meta)."""
        try:
            memory_total: int | None = self.ps.virtual_memory().total
        except Exception:  # noqa: BLE001 - a platform without it reports null
            memory_total = None
        return StaticFacts(
            hostname=socket.gethostname(),
            os=read_os_name(),
            kernel=platform.release(),
            architecture=platform.machine(),
            pi_model=pi.read_model(),
            cpu_count_logical=self.ps.cpu_count(logical=True),
            cpu_count_physical=self.ps.cpu_count(logical=False),
            memory_total_bytes=memory_total,
        )

    def _refresh(self, now: float) -> None:
        """Re-read the partition list, disk names and thermal zones (costly; done rarely)."""
        self._refreshed_at = now
        seen_devices: set[str] = set()
        mounts = []
        try:
            for part in self.ps.disk_partitions(all=False):
                if part.fstype in _SKIP_FSTYPES or part.mountpoint.startswith("/snap/"):
                    continue
                if part.device in seen_devices:  # bind mounts show the same device again
                    continue
                seen_devices.add(part.device)
                mounts.append((part.mountpoint, part.device, part.fstype))
        except Exception as exc:  # noqa: BLE001
            log.debug("cannot list partitions: %s", exc)
        self._mounts = mounts
        block = self.sys_root / "block"
        if block.is_dir():  # Linux: whole disks are the entries of /sys/block
            self._disks = {p.name for p in block.iterdir()
                           if not p.name.startswith(_SKIP_DISK_PREFIXES)}
        self._zones = read_thermal_zones(self.sys_root) if sys.platform == "linux" else []

    def sample(self) -> Sample:
        """Read every metric once. Never raises for a missing sensor."""
        now = self.clock()
        if now - self._refreshed_at >= self.refresh_s:
            self._refresh(now)
        return Sample(
            monotonic_s=now,
            core_times=[core_times_from(t) for t in self.ps.cpu_times(percpu=True)],
            freq_mhz=self._freq(),
            **self._cpu_stats(),
            load=self._load(),
            memory=self._memory(),
            partitions=self._partitions(),
            disk_io=self._disk_io(),
            net_io=self._net_io(),
            temperatures=self._temperatures(),
            battery=self._battery(),
            throttled_raw=self._throttle.read() if self._throttle else None,
        )

    def _freq(self) -> tuple[float | None, float | None, float | None]:
        try:
            freq = self.ps.cpu_freq()
        except Exception:  # noqa: BLE001 - e.g. FileNotFoundError in some containers
            freq = None
        if freq is None:
            return (None, None, None)
        return (_none_if_zero(freq.current), _none_if_zero(freq.min), _none_if_zero(freq.max))

    def _cpu_stats(self) -> dict[str, int | None]:
        stats = self.ps.cpu_stats()
        return {
            "ctx_switches": stats.ctx_switches,
            "interrupts": stats.interrupts,
            "soft_interrupts": stats.soft_interrupts,
            # Linux has no system-wide syscall counter; psutil reports 0 there.
            "syscalls": None if sys.platform.startswith("linux") else stats.syscalls,
        }

    def _load(self) -> tuple[float, float, float] | None:
        try:
            one, five, fifteen = self.ps.getloadavg()
            return (float(one), float(five), float(fifteen))
        except (OSError, AttributeError):
            return None

    def _memory(self) -> dict[str, int | float | None]:
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

    def _partitions(self) -> list[Partition]:
        partitions: list[Partition] = []
        for mountpoint, device, fstype in self._mounts:
            try:
                usage = self.ps.disk_usage(mountpoint)
            except OSError:  # unmounted since the last refresh
                continue
            partitions.append({"mountpoint": mountpoint, "device": device, "fstype": fstype,
                               "total_bytes": usage.total, "used_bytes": usage.used,
                               "free_bytes": usage.free, "percent": usage.percent})
        return partitions

    def _disk_io(self) -> dict[str, tuple[int, ...]]:
        try:
            # perdisk=True is cheaper than the total, and gives the total by summing.
            per_disk = self.ps.disk_io_counters(perdisk=True, nowrap=True) or {}
        except Exception:  # noqa: BLE001 - no /proc/diskstats in some containers
            return {}
        return {name: (c.read_count, c.write_count, c.read_bytes, c.write_bytes)
                for name, c in per_disk.items()
                if self._disks is None or name in self._disks}

    def _net_io(self) -> dict[str, tuple[int, ...]]:
        try:
            per_nic = self.ps.net_io_counters(pernic=True, nowrap=True)
        except Exception:  # noqa: BLE001
            return {}
        return {name: (c.bytes_sent, c.bytes_recv, c.packets_sent, c.packets_recv,
                       c.errin, c.errout, c.dropin, c.dropout)
                for name, c in per_nic.items()}

    def _temperatures(self) -> list[Temperature]:
        temps: list[Temperature] = []
        zone_types = {kind for kind, _ in self._zones}
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
        for kind, temp_file in self._zones:
            celsius = read_zone_celsius(temp_file)
            if celsius is not None and -100 <= celsius <= 300:
                temps.append({"sensor": kind, "label": temp_file.parent.name,
                              "celsius": celsius})
        return temps

    def _battery(self) -> tuple[float | None, bool | None, float | None]:
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


def process_cpu_s() -> float:
    """CPU seconds this process has used (for the agent's own cost report)."""
    t = os.times()
    return t.user + t.system
