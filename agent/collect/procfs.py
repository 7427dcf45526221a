"""The procfs backend: Linux readings from /proc and /sys directly, psutil as fallback.

At one reading a second the psutil calls cost ~2 ms of CPU (cold caches: each call opens
its file through Python's io stack, parses every line, and several read the same file:
/proc/stat twice, /proc/meminfo twice; sensors_temperatures globs sysfs each call). On
Linux the collector instead keeps the /proc files open, reads each once per sample
(seq_file regenerates the text when read from offset 0: fs/seq_file.c, seq_read_iter) and
picks out only the numbers it publishes — computing them exactly as psutil 5.9-7.x does
(_pslinux.py), so the message is the same. Anything unexpected falls back to psutil
(:class:`~agent.collect.portable.PortableBackend`).
"""

from __future__ import annotations

import glob
import operator
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from agent import pi
from agent.collect.common import (
    Listing,
    Sample,
    blank_zone_type,
    core_times_from,
    mean_freq,
    usage_percent,
)
from agent.collect.portable import PortableBackend
from agent.processes import ProcScanner, Scanner
from agent.rates import CoreTimes
from shared.schema import Partition, Temperature

_CPUINFO_MHZ = re.compile(rb"^cpu mhz[^:\n]*:([^\n]*)", re.M | re.I)
_SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors whatever the device's sector
# seq_file's buffer is at least a page (fs/seq_file.c, seq_buf_alloc), and it stops a read
# early only when the next record (a line of diskstats, net/dev, vmstat...) does not fit.
_PAGE_BYTES = 4096
_RECORD_BYTES = 1024  # longer than any line of the files read here (at most ~400 bytes)


class ProcFile:
    """A /proc or /sys file kept open; :meth:`read` returns its current text.

    Args:
        whole: the kernel writes the file in one go (single_open, a sysfs attribute), so
            any read shorter than the buffer has all of it.
        lazy: open at the first read instead of now; a read that fails closes the file and
            the next one opens it again (as reading it by name each time would: a sensor
            or disk that went away and came back is found again).
    """

    __slots__ = ("fd", "path", "size", "whole")

    def __init__(self, path: str, *, whole: bool = False, lazy: bool = False) -> None:
        self.path = path
        self.size = _PAGE_BYTES  # grows to fit the file
        self.whole = whole
        self.fd = -1 if lazy else os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def read(self) -> bytes:
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        # Reading from offset 0 makes seq_file generate the text afresh (fs/seq_file.c,
        # seq_read_iter): one pread a reading, no lseek, open or close.
        try:
            data = os.pread(self.fd, self.size, 0)
        except OSError:
            self.close()  # e.g. ENODEV: the device is gone; open it by name next time
            raise
        n = len(data)
        if n < self.size and (self.whole or n <= _PAGE_BYTES - _RECORD_BYTES):
            return data
        # Longer than a page: seq_file may have stopped at its buffer; read on until EOF.
        more = os.pread(self.fd, self.size, n)
        while more:
            data += more
            more = os.pread(self.fd, self.size, len(data))
        self.size = max(self.size, len(data) + _PAGE_BYTES)
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _number_after(data: bytes, key: bytes, start: int = 0) -> int | None:
    """Return the integer after the first ``key`` in ``data[start:]`` (None if absent)."""
    at = data.find(key, start)
    if at < 0:
        return None
    at += len(key)
    end = data.find(b"\n", at)
    words = data[at:end if end >= 0 else len(data)].split(None, 1)
    return int(words[0]) if words and words[0].isdigit() else None


def disk_counters(name: str, fields: list[bytes]) -> tuple[int, int, int, int]:
    """Return (reads, writes, read bytes, write bytes) from a disk's counters.

    ``fields`` are the numbers after the name in /proc/diskstats, or all of
    /sys/block/<disk>/stat (kernel doc: admin-guide/iostats.rst); as psutil reads them.
    """
    if len(fields) == 11 or len(fields) >= 15:  # 11 counters, +4 since Linux 4.18, +2 since 5.5
        return (int(fields[0]), int(fields[4]), int(fields[2]) * _SECTOR_BYTES,
                int(fields[6]) * _SECTOR_BYTES)
    if len(fields) == 4:  # a partition on Linux 2.6
        return (int(fields[0]), int(fields[2]), int(fields[1]) * _SECTOR_BYTES,
                int(fields[3]) * _SECTOR_BYTES)
    # e.g. Linux 2.4's layout: psutil knows it
    raise ValueError(f"not sure how to interpret diskstats line of {name}")


def _read_bytes(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


class Unwrap:
    """psutil's ``nowrap=True``: a counter that went down is taken to have wrapped.

    From then on the value it had is added to it (per name and field), as
    psutil._common._WrapNumbers does; the common case (nothing went down) costs one
    comparison per name and returns the reading itself.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, ...]] | None = None
        self._offsets: dict[str, list[int]] = {}

    def run(self, current: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        last, self._last = self._last, current
        if last is None:
            return current
        offsets = self._offsets
        if not offsets:
            for name, values in current.items():
                old = last.get(name)
                if old is not None and any(map(operator.lt, values, old)):
                    break
            else:
                return current  # nothing has wrapped, nothing went down: as it is
        for gone in [name for name in offsets if name not in current]:
            del offsets[gone]
        out = {}
        for name, values in current.items():
            old = last.get(name)
            if old is None:
                out[name] = values
                continue
            offset = offsets.get(name)
            if offset is None:
                if not any(map(operator.lt, values, old)):
                    out[name] = values
                    continue
                offset = offsets[name] = [0] * len(values)
            for i, (value, before) in enumerate(zip(values, old, strict=True)):
                if value < before:
                    offset[i] += before
            out[name] = tuple(map(operator.add, values, offset))
        return out


def hwmon_sensors(sys_root: str = "/sys") -> list[tuple[str, str, str]]:
    """List the hwmon temperature inputs as psutil.sensors_temperatures finds them.

    Returns (input file, sensor name, label) in psutil's order; the names and labels are
    read here, once, instead of at every reading.
    """
    hwmon = f"{sys_root}/class/hwmon"
    found = glob.glob(f"{hwmon}/hwmon*/temp*_*")  # as psutil 7.2 _pslinux.sensors_temperatures
    found.extend(glob.glob(f"{hwmon}/hwmon*/device/temp*_*"))
    # psutil cuts the whole path at its first "_"; under /sys that is in the file name.
    bases = sorted({os.path.join(os.path.dirname(x), os.path.basename(x).split("_")[0])
                    for x in found})
    coretemp = re.compile(f"{re.escape(sys_root)}/devices/platform/coretemp.*/hwmon/")
    for name in glob.glob(f"{sys_root}/devices/platform/coretemp.*/hwmon/hwmon*/temp*_*"):
        if coretemp.sub(f"{hwmon}/", name) not in bases:
            bases.append(name)
    sensors = []
    for base in bases:
        try:
            unit = _read_bytes(os.path.join(os.path.dirname(base), "name")).decode().strip()
        except (OSError, ValueError):
            continue
        try:
            label = _read_bytes(base + "_label").decode().strip()
        except (OSError, ValueError):
            label = ""
        sensors.append((base + "_input", unit, label))
    return sensors


def cpufreq_dirs(sys_root: str = "/sys") -> list[str]:
    """The cpufreq directories psutil.cpu_freq reads, in its order."""
    dirs = (glob.glob(f"{sys_root}/devices/system/cpu/cpufreq/policy[0-9]*")
            or glob.glob(f"{sys_root}/devices/system/cpu/cpu[0-9]*/cpufreq"))
    number = re.compile(r"[0-9]+")

    def key(path: str) -> int:
        found = number.search(path[len(sys_root):])
        return int(found.group()) if found else 0

    return sorted(dirs, key=key)


CPUINFO_EVERY_S = 30.0


class ProcReader:
    """The Linux readings of :class:`Collector`, from /proc and /sys directly."""

    def __init__(self, ps: Any, proc_root: str = "/proc", sys_root: str = "/sys") -> None:
        self.ps = ps
        self.sys_root = sys_root
        self.stat = ProcFile(f"{proc_root}/stat", whole=True)  # single_open: fs/proc/stat.c
        self.meminfo = ProcFile(f"{proc_root}/meminfo", whole=True)  # fs/proc/meminfo.c
        self.diskstats = ProcFile(f"{proc_root}/diskstats")
        self.net_dev = ProcFile(f"{proc_root}/net/dev")
        self.ticks = float(os.sysconf("SC_CLK_TCK"))
        # psutil sizes its cpu_times tuple from the first line of /proc/stat once, at import.
        self.cpu_fields = min(10, len(self.stat.read().split(b"\n", 1)[0].split()) - 1)
        try:
            self.vmstat: ProcFile | None = ProcFile(f"{proc_root}/vmstat")
        except OSError:
            self.vmstat = None
        try:
            self.cpuinfo: ProcFile | None = ProcFile(f"{proc_root}/cpuinfo")
            has_mhz = bool(_CPUINFO_MHZ.search(self.cpuinfo.read()))
        except OSError:
            self.cpuinfo, has_mhz = None, False
        # psutil picks its cpu_freq at import: sysfs cpufreq if present (current from
        # /proc/cpuinfo when it has one "cpu MHz" per cpufreq directory), else /proc/cpuinfo.
        self.freq_sysfs = (os.path.exists(f"{sys_root}/devices/system/cpu/cpufreq/policy0")
                           or os.path.exists(f"{sys_root}/devices/system/cpu/cpu0/cpufreq"))
        if not has_mhz and self.cpuinfo is not None:
            self.cpuinfo.close()
            self.cpuinfo = None  # e.g. ARM: nothing to read there each second
        self._cpuinfo_freq: tuple[float | None, float | None, float | None] | None = None
        self._cpuinfo_at = 0.0
        self.hwmon_found = False
        self.has_battery = True
        self.disk_names: set[str] | None = None
        self.swap_io: tuple[int, int] | None = None  # pswpin, pswpout while there is no swap
        self.disk_unwrap = Unwrap()
        self.net_unwrap = Unwrap()
        # Opened at each refresh (lazily, see ProcFile) and read every reading:
        self.freq_files: list[tuple[ProcFile, ProcFile, ProcFile]] = []  # cur, min, max
        # whole disk -> /sys/block/<disk>/stat; None: read /proc/diskstats
        self.disk_files: dict[str, ProcFile] | None = None
        # hwmon input, sensor, label, reported; zone temp, sensor, label, number parser
        self.sensors: list[tuple[ProcFile, str, str, bool]] = []
        self.zones: list[tuple[ProcFile, str, str, Callable[[bytes], float]]] = []

    def refresh(self, disks: set[str] | None,
                zones: Sequence[tuple[str, Path]] = ()) -> None:
        """List again what changes rarely, and open the files read every reading.

        Args:
            disks: the whole disks (entries of /sys/block), None to take all of diskstats.
            zones: the thermal zones, as :func:`read_thermal_zones` lists them.
        """
        self.close_listed()
        self.disk_names = disks
        self.swap_io = None
        sysfs = self.sys_root
        self.disk_files = None if disks is None else {
            name: ProcFile(f"{sysfs}/block/{name}/stat", whole=True, lazy=True)
            for name in sorted(disks)}
        self.freq_files = [
            (ProcFile(f"{d}/scaling_cur_freq", whole=True, lazy=True),
             ProcFile(f"{d}/scaling_min_freq", whole=True, lazy=True),
             ProcFile(f"{d}/scaling_max_freq", whole=True, lazy=True))
            for d in (cpufreq_dirs(sysfs) if self.freq_sysfs else [])]
        sensors = hwmon_sensors(sysfs)
        self.hwmon_found = bool(sensors) or bool(glob.glob(f"{sysfs}/class/hwmon/hwmon*/temp*_*"))
        # A hwmon input without a label named as a thermal zone is that zone again (read
        # below with its zone name): read, to keep psutil's grouping, but not reported.
        zone_types = {kind for kind, _ in zones}
        self.sensors = [(ProcFile(path, whole=True, lazy=True), unit, label,
                         bool(label) or unit not in zone_types)
                        for path, unit, label in sensors]
        # Without hwmon, psutil lists the thermal zones themselves (empty label): all are
        # dropped as copies, except a zone whose type is blank (reported with no name).
        blank: list[tuple[str, str, str, Callable[[bytes], float]]] = [
            (str(path), "", "", float) for kind, path in zones
            if not self.hwmon_found and kind == path.parent.name and blank_zone_type(path.parent)]
        named = [(str(path), kind, path.parent.name, int) for kind, path in zones]
        self.zones = [(ProcFile(path, whole=True, lazy=True), kind, label, parse)
                      for path, kind, label, parse in blank + named]
        try:
            supplies = os.listdir(f"{sysfs}/class/power_supply")
            # psutil.sensors_battery returns None when no entry looks like a battery.
            self.has_battery = any(x.startswith("BAT") or "battery" in x.lower()
                                   for x in supplies)
        except OSError:
            self.has_battery = False

    def close_disk_files(self) -> None:
        for f in (self.disk_files or {}).values():
            f.close()
        self.disk_files = None

    def close_listed(self) -> None:
        self.close_disk_files()
        for files in self.freq_files:
            for f in files:
                f.close()
        for f, *_ in self.sensors:
            f.close()
        for f, *_ in self.zones:
            f.close()

    def close(self) -> None:
        self.close_listed()
        for f in (self.stat, self.meminfo, self.diskstats, self.net_dev, self.vmstat,
                  self.cpuinfo):
            if f is not None:
                f.close()

    # /proc/stat: per-core times (psutil.cpu_times(percpu=True)) and cpu_stats().
    def cpu(self) -> tuple[list[CoreTimes], int | None, int | None, int | None]:
        data = self.stat.read()
        ticks, n = self.ticks, self.cpu_fields
        # The all-CPU line, one "cpuN ..." line per CPU, then "intr" (a long line: one
        # number per interrupt) and the other counters: only the cpu lines are split.
        end = data.find(b"\nintr ")
        cores = []
        for line in (data if end < 0 else data[:end]).split(b"\n")[1:]:
            if not line.startswith(b"cpu"):  # as psutil: each "cpu..." line after the first
                continue
            t = [float(x) / ticks for x in line.split()[1:n + 1]]
            # As core_times_from: guest time is already in user/nice.
            total = sum(t)
            total -= (t[8] if n > 8 else 0.0) + (t[9] if n > 9 else 0.0)
            idle = t[3] + t[4]
            cores.append(CoreTimes(total - idle, total))
        start = max(end, 0)
        return (cores, _number_after(data, b"\nctxt ", start),
                _number_after(data, b"\nintr ", start),
                _number_after(data, b"\nsoftirq ", start))

    def freq(self) -> tuple[float | None, float | None, float | None]:
        if not self.freq_sysfs:
            # No cpufreq driver (VMs, containers): /proc/cpuinfo is the only source and the
            # costliest file we read (~110 µs at 1 Hz); its "cpu MHz" is then the nominal
            # clock, so read it (and work out the figures) every CPUINFO_EVERY_S only.
            now = time.monotonic()
            if self._cpuinfo_freq is None or now - self._cpuinfo_at >= CPUINFO_EVERY_S:
                self._cpuinfo_freq = mean_freq([(x, 0.0, 0.0) for x in self._cpuinfo_mhz()])
                self._cpuinfo_at = now
            return self._cpuinfo_freq
        mhz = self._cpuinfo_mhz()
        files = self.freq_files
        freqs = []
        for i, (cur_file, min_file, max_file) in enumerate(files):
            if len(files) == len(mhz):
                current = int(mhz[i] * 1000) / 1000
            else:
                current = int(cur_file.read()) / 1000
            freqs.append((current, int(min_file.read()) / 1000, int(max_file.read()) / 1000))
        return mean_freq(freqs)

    def _cpuinfo_mhz(self) -> list[float]:
        if self.cpuinfo is None:
            return []
        return [float(x) for x in _CPUINFO_MHZ.findall(self.cpuinfo.read())]

    def memory(self) -> dict[str, int | float | None] | None:
        """Memory as psutil's virtual_memory and swap_memory; None to ask psutil instead."""
        data = self.meminfo.read()
        total = _number_after(data, b"MemTotal:")
        free = _number_after(data, b"MemFree:")
        available = _number_after(data, b"MemAvailable:")
        swap_total = _number_after(data, b"SwapTotal:")
        swap_free = _number_after(data, b"SwapFree:")
        if (total is None or free is None or not available or swap_total is None
                or swap_free is None or self.vmstat is None):
            return None  # old kernel or odd container: psutil's own estimates apply
        if swap_total == 0 and self.swap_io is not None:
            # With no swap space there is no swap traffic: the counters stand still, so
            # /proc/vmstat (~170 counters summed over every CPU) is read once per refresh.
            swap_in, swap_out = self.swap_io
        else:
            vmstat = self.vmstat.read()
            pswpin = _number_after(vmstat, b"\npswpin ")
            pswpout = _number_after(vmstat, b"\npswpout ")
            if pswpin is None or pswpout is None:
                return None
            swap_in, swap_out = self.swap_io = (pswpin, pswpout)
        total, free, available = total * 1024, free * 1024, available * 1024
        if available > total:  # psutil: symptomatic of an LXC container; use free
            available = free
        swap_total, swap_free = swap_total * 1024, swap_free * 1024
        return {"total_bytes": total, "available_bytes": available,
                "used_bytes": total - available, "free_bytes": free,
                "percent": usage_percent(total - available, total),
                "swap_total_bytes": swap_total, "swap_used_bytes": swap_total - swap_free,
                "swap_free_bytes": swap_free,
                "swap_percent": usage_percent(swap_total - swap_free, swap_total),
                "swap_in_bytes": swap_in * 4096, "swap_out_bytes": swap_out * 4096}

    def disk_io(self) -> dict[str, tuple[int, ...]]:
        files = self.disk_files
        if files is not None:
            # One small sysfs file per whole disk: cheaper than /proc/diskstats, which
            # lists every partition, loop and ram device (block/genhd.c: part_stat_show
            # and diskstats_show print the same counters).
            try:
                return self.disk_unwrap.run({name: disk_counters(name, f.read().split())
                                             for name, f in files.items()})
            except OSError:  # a disk went away, or no such files here: until the next
                self.close_disk_files()  # refresh, read /proc/diskstats instead
        return self.disk_unwrap.run(self._diskstats())

    def _diskstats(self) -> dict[str, tuple[int, ...]]:
        names = self.disk_names
        current: dict[str, tuple[int, ...]] = {}
        for line in self.diskstats.read().splitlines():
            fields = line.split()  # major minor name counters...
            if len(fields) < 3:
                continue
            name = fields[2].decode()
            if names is None or name in names:
                current[name] = disk_counters(name, fields[3:])
        return current

    def net_io(self) -> dict[str, tuple[int, ...]]:
        current: dict[str, tuple[int, ...]] = {}
        for line in self.net_dev.read().splitlines()[2:]:  # after the two header lines
            # As psutil: "name: rx bytes packets errs drop fifo frame compressed multicast
            # tx bytes packets errs drop ..." (net/core/net-procfs.c, dev_seq_printf_stats).
            name, _, counters = line.rpartition(b":")
            f = counters.split()
            current[name.strip().decode()] = (
                int(f[8]), int(f[0]), int(f[9]), int(f[1]), int(f[2]), int(f[10]), int(f[3]),
                int(f[11]))
        return self.net_unwrap.run(current)

    def temperatures(self) -> list[Temperature]:
        """The hwmon inputs, grouped by sensor as psutil does, then the thermal zones."""
        if not self.sensors and not self.zones:  # e.g. a VM
            return []
        by_sensor: dict[str, list[Temperature]] = {}
        for f, unit, label, keep in self.sensors:
            try:
                celsius = float(f.read()) / 1000.0
            except (OSError, ValueError):
                continue
            group = by_sensor.setdefault(unit, [])  # grouped first: psutil's order
            if keep and -100 <= celsius <= 300:
                group.append({"sensor": unit, "label": label, "celsius": celsius})
        temps = [entry for entries in by_sensor.values() for entry in entries]
        for f, kind, label, parse in self.zones:
            try:
                celsius = parse(f.read()) / 1000.0
            except (OSError, ValueError):
                continue
            if -100 <= celsius <= 300:
                temps.append({"sensor": kind, "label": label, "celsius": celsius})
        return temps


_T = TypeVar("_T")
# What a reading of ProcReader raises on a file it did not expect: psutil reads it instead.
_UNEXPECTED = (OSError, ValueError, IndexError)


def _either(read: Callable[[], _T], fallback: Callable[[], _T]) -> _T:
    try:
        return read()
    except _UNEXPECTED:
        return fallback()


def load_average() -> tuple[float, float, float] | None:
    # os.getloadavg (what psutil.getloadavg is on Linux) opens, reads and closes
    # /proc/loadavg; a kept-open file parsed in Python measured ~10 µs slower.
    try:
        return os.getloadavg()
    except OSError:
        return None


class ProcfsBackend:
    """Read the machine through a :class:`ProcReader`; a reading it cannot make comes from
    the portable backend (``fallback``), as psutil would have made it."""

    def __init__(self, reader: ProcReader, fallback: PortableBackend, proc_root: str) -> None:
        self._proc = reader
        self.fallback = fallback
        self._proc_root = proc_root

    def refresh(self, listing: Listing) -> None:
        self._proc.refresh(listing.disks, listing.zones)

    def process_scanner(self) -> Scanner:
        return ProcScanner(self._proc_root)

    def sample(self, now: float, listing: Listing,
               throttle: pi.ThrottleReader | None) -> Sample:
        """The same readings as the portable backend's, from /proc and /sys."""
        proc, fallback = self._proc, self.fallback
        try:
            core_times, ctx, intr, soft = proc.cpu()
        except _UNEXPECTED:
            core_times = [core_times_from(t) for t in fallback.ps.cpu_times(percpu=True)]
            stats = fallback.cpu_stats()
            ctx, intr, soft = stats["ctx_switches"], stats["interrupts"], \
                stats["soft_interrupts"]
        return Sample(
            monotonic_s=now,
            core_times=core_times,
            freq_mhz=_either(proc.freq, fallback.freq),
            ctx_switches=ctx, interrupts=intr, soft_interrupts=soft, syscalls=None,
            load=load_average(),
            memory=self._memory(),
            partitions=statvfs_partitions(listing.mounts),
            disk_io=_either(proc.disk_io, lambda: fallback.disk_io(listing.disks)),
            net_io=_either(proc.net_io, fallback.net_io),
            temperatures=proc.temperatures(),
            battery=fallback.battery() if proc.has_battery else (None, None, None),
            throttled_raw=throttle.read() if throttle else None,
        )

    def _memory(self) -> dict[str, int | float | None]:
        try:
            memory = self._proc.memory()
        except (OSError, ValueError):
            memory = None
        return memory if memory is not None else self.fallback.memory()


def statvfs_partitions(mounts: list[tuple[str, str, str]]) -> list[Partition]:
    """Each mount's size and use, as psutil.disk_usage on POSIX (one statvfs each)."""
    partitions: list[Partition] = []
    for mountpoint, device, fstype in mounts:
        try:
            st = os.statvfs(mountpoint)  # as psutil.disk_usage on POSIX
        except OSError:
            continue
        total = st.f_blocks * st.f_frsize
        used = total - st.f_bfree * st.f_frsize
        free = st.f_bavail * st.f_frsize
        partitions.append({"mountpoint": mountpoint, "device": device, "fstype": fstype,
                           "total_bytes": total, "used_bytes": used, "free_bytes": free,
                           "percent": usage_percent(used, used + free)})
    return partitions
