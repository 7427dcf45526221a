"""What both backends of the collector share: the Sample, the static facts, the list of
what to read (:class:`Listing`), and pure helpers that compute figures as psutil does.

No psutil here: ``portable.py`` is the only module that imports it.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.rates import CoreTimes
from shared.schema import Partition, Temperature

if TYPE_CHECKING:
    from agent import pi
    from agent.processes import Scanner

# Mounts that are not storage a person cares about (psutil's all=False already drops most
# pseudo file systems; these remain on Linux desktops and Pis).
SKIP_FSTYPES = {"squashfs", "tmpfs", "devtmpfs", "overlay", "iso9660", "ramfs"}
# Block devices that would count the same I/O twice (device-mapper, RAID) or are not disks.
SKIP_DISK_PREFIXES = ("loop", "ram", "zram", "dm-", "md", "fd")


@dataclass
class Sample:
    """Raw readings at one instant; counters are cumulative since boot. Not changed once made.

    Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__,
    ~20k instructions and ~10 µs at cold caches for every reading.
    """

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


@dataclass
class Listing:
    """What changes rarely, listed at start and every ``refresh_s``: what readings cover."""

    mounts: list[tuple[str, str, str]] = field(default_factory=list)  # mountpoint, device, fstype
    disks: set[str] | None = None  # whole disks (/sys/block); None: every disk psutil lists
    zones: list[tuple[str, Path]] = field(default_factory=list)  # thermal zones: type, temp file


class Backend(Protocol):
    """How a :class:`~agent.collect.Collector` reads the machine: procfs or portable."""

    def refresh(self, listing: Listing) -> None: ...

    def sample(self, now: float, listing: Listing,
               throttle: pi.ThrottleReader | None) -> Sample: ...

    def process_scanner(self) -> Scanner: ...


def none_if_zero(value: float | None) -> float | None:
    # psutil reports 0 for a frequency it cannot know (e.g. min/max without cpufreq).
    return value if value else None


def mean_freq(freqs: list[tuple[float, float, float]],
               ) -> tuple[float | None, float | None, float | None]:
    """psutil.cpu_freq's figure from (current, min, max) per CPU or cpufreq policy."""
    if not freqs:
        return (None, None, None)
    if len(freqs) == 1:
        current, low, high = freqs[0]
    else:
        current = low = high = 0.0
        for c, lo, hi in freqs:
            current += c
            low += lo
            high += hi
        current, low, high = current / len(freqs), low / len(freqs), high / len(freqs)
    return (none_if_zero(current), none_if_zero(low), none_if_zero(high))


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


# --- Linux fast path ------------------------------------------------------------------------
# At one reading a second the psutil calls above cost ~2 ms of CPU (cold caches: each call
# opens its file through Python's io stack, parses every line, and several read the same
# file: /proc/stat twice, /proc/meminfo twice; sensors_temperatures globs sysfs each call).
# On Linux the collector instead keeps the /proc files open, reads each once per sample
# (seq_file regenerates the text when read from offset 0: fs/seq_file.c, seq_read_iter) and
# picks out only the numbers it publishes — computing them exactly as psutil 5.9-7.x does


def usage_percent(used: int, total: int) -> float:
    # psutil._common.usage_percent(used, total, round_=1)
    try:
        return round(float(used) / total * 100, 1)
    except ZeroDivisionError:
        return 0.0


def blank_zone_type(zone: Path) -> bool:
    try:
        return not (zone / "type").read_text().strip()
    except OSError:
        return False


def process_cpu_s() -> float:
    """CPU seconds this process has used (for the agent's own cost report)."""
    t = os.times()
    return t.user + t.system
