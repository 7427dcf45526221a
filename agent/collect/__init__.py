"""Read the machine: a :class:`Collector` returns a :class:`Sample` of raw values.

Cumulative counters and gauges; turning two samples into percentages and rates is pure work
done in ``agent/rates.py`` and ``agent/encode.py``. What is slow and rarely changes
(partition list, disk names, thermal zones, core counts, Pi model) is read at start and
refreshed every ``refresh_s``; what a platform lacks comes back as None, never as an
exception.

Two backends, as psutil itself has one module per platform, chosen once when the
collector is made:

    procfs.py     Linux: /proc and /sys read directly, files kept open (the fast path)
    portable.py   psutil, everywhere else, and the fast path's fallback for a reading it
                  cannot make; the only module that imports psutil
    common.py     the Sample, the static facts and the pure helpers both use
"""

from __future__ import annotations

import logging
import platform
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import pi
from agent.collect.common import (
    SKIP_DISK_PREFIXES,
    Backend,
    Listing,
    Sample,
    StaticFacts,
    core_times_from,
    process_cpu_s,
    read_os_name,
    read_thermal_zones,
    read_zone_celsius,
)
from agent.collect.portable import PSUTIL, PortableBackend, PsutilProcesses
from agent.collect.procfs import (
    CPUINFO_EVERY_S,
    ProcFile,
    ProcfsBackend,
    ProcReader,
    Unwrap,
    cpufreq_dirs,
    disk_counters,
    hwmon_sensors,
)
from agent.processes import Scanner

__all__ = [
    "CPUINFO_EVERY_S", "Collector", "ProcFile", "ProcReader", "PsutilProcesses", "Sample",
    "StaticFacts", "Unwrap", "core_times_from", "cpufreq_dirs", "disk_counters",
    "hwmon_sensors", "process_cpu_s", "read_os_name", "read_thermal_zones",
    "read_zone_celsius",
]

log = logging.getLogger(__name__)


@dataclass
class Collector:
    """Take samples of this machine; keeps the slow-to-read, rarely-changing facts cached."""

    refresh_s: float = 60.0
    sys_root: Path = Path("/sys")
    ps: Any = PSUTIL  # the psutil module; tests pass a fake platform
    clock: Callable[[], float] = time.monotonic
    # On Linux with the real psutil, read /proc and /sys directly (see ProcReader).
    fast: bool = True
    proc_root: str = "/proc"
    _refreshed_at: float = field(default=-1e18, init=False)
    _listing: Listing = field(default_factory=Listing, init=False)
    _throttle: pi.ThrottleReader | None = field(default=None, init=False)
    _proc: ProcReader | None = field(default=None, init=False)
    _portable: PortableBackend = field(init=False)
    _backend: Backend = field(init=False)

    def __post_init__(self) -> None:
        throttle = pi.ThrottleReader(self.sys_root)
        self._throttle = throttle if throttle.available else None
        self._portable = PortableBackend(self.ps)
        self._backend = self._portable
        if self.fast and self.ps is PSUTIL and sys.platform.startswith("linux"):
            try:
                self._proc = ProcReader(self.ps, self.proc_root, str(self.sys_root))
                self._backend = ProcfsBackend(self._proc, self._portable, self.proc_root)
            except (OSError, ValueError) as exc:
                log.debug("reading /proc through psutil: %s", exc)

    def static_facts(self) -> StaticFacts:
        """Read what does not change while the agent runs (called once, for meta)."""
        memory_total = self._portable.memory_total()
        logical, physical = self._portable.cpu_counts()
        return StaticFacts(
            hostname=socket.gethostname(),
            os=read_os_name(),
            kernel=platform.release(),
            architecture=platform.machine(),
            pi_model=pi.read_model(),
            cpu_count_logical=logical,
            cpu_count_physical=physical,
            memory_total_bytes=memory_total,
        )

    def _refresh(self, now: float) -> None:
        """Re-read the partition list, disk names and thermal zones (costly; done rarely)."""
        self._refreshed_at = now
        listing = self._listing
        listing.mounts = self._portable.mounts()
        block = self.sys_root / "block"
        if block.is_dir():  # Linux: whole disks are the entries of /sys/block
            listing.disks = {p.name for p in block.iterdir()
                             if not p.name.startswith(SKIP_DISK_PREFIXES)}
        listing.zones = read_thermal_zones(self.sys_root) if sys.platform == "linux" else []
        self._backend.refresh(listing)

    def process_scanner(self) -> Scanner:
        """Return what lists processes here: /proc read directly on Linux, else psutil."""
        return self._backend.process_scanner()

    def watched(self) -> tuple[list[str], list[str]]:
        """Re-list and return the mountpoints and whole disks that readings cover."""
        self._refresh(self.clock())
        return ([mountpoint for mountpoint, _, _ in self._listing.mounts],
                sorted(self._listing.disks or ()))

    def sample(self) -> Sample:
        """Read every metric once. Never raises for a missing sensor."""
        now = self.clock()
        if now - self._refreshed_at >= self.refresh_s:
            self._refresh(now)
        return self._backend.sample(now, self._listing, self._throttle)
