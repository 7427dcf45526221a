"""A fake psutil module: a platform whose values the tests choose (no sensors by default)."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace
from typing import Any

CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")
Freq = namedtuple("Freq", "current min max")
Stats = namedtuple("Stats", "ctx_switches interrupts soft_interrupts syscalls")
VMem = namedtuple("VMem", "total available percent used free")
Swap = namedtuple("Swap", "total used free percent sin sout")
Part = namedtuple("Part", "device mountpoint fstype opts")
Usage = namedtuple("Usage", "total used free percent")
DiskIo = namedtuple("DiskIo", "read_count write_count read_bytes write_bytes")
NetIo = namedtuple("NetIo", "bytes_sent bytes_recv packets_sent packets_recv "
                   "errin errout dropin dropout")
Temp = namedtuple("Temp", "label current high critical")
Battery = namedtuple("Battery", "percent secsleft power_plugged")


def make(**overrides: Any) -> SimpleNamespace:
    state = {"tick": 0}

    def cpu_times(percpu: bool = False) -> list[CpuTimes]:
        t = state["tick"]
        return [CpuTimes(10.0 + 5 * t, 0, 5.0, 100.0 + 5 * t, 0, 0, 0, 0, 0, 0)] * 2

    fake = SimpleNamespace(
        cpu_times=cpu_times,
        cpu_freq=lambda: None,
        cpu_stats=lambda: Stats(1000 + state["tick"] * 10, 500, 200, 0),
        getloadavg=lambda: (0.5, 0.25, 0.125),
        virtual_memory=lambda: VMem(8_000_000_000, 6_000_000_000, 25.0, 2_000_000_000,
                                    5_000_000_000),
        swap_memory=lambda: Swap(1_000_000, 0, 1_000_000, 0.0, 0, 0),
        disk_partitions=lambda all=False: [Part("/dev/sda1", "/", "ext4", "rw")],
        disk_usage=lambda mp: Usage(100, 40, 60, 40.0),
        disk_io_counters=lambda perdisk=False, nowrap=True: {
            "sda": DiskIo(10, 20, 4096, 8192)},
        net_io_counters=lambda pernic=False, nowrap=True: {
            "lo": NetIo(999, 999, 9, 9, 0, 0, 0, 0), "eth0": NetIo(100, 200, 1, 2, 0, 0, 0, 0)},
        sensors_temperatures=lambda: {},
        sensors_battery=lambda: None,
        cpu_count=lambda logical=True: 2,
        state=state,
    )
    for name, value in overrides.items():
        setattr(fake, name, value)
    return fake
