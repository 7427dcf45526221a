# ruff: noqa: E501 - the /proc fixtures below are verbatim kernel lines
"""The Linux fast path of the collector reads the same values psutil would, from the same files."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest
from psutil._common import _WrapNumbers

from agent.collect import (
    Collector,
    ProcFile,
    ProcReader,
    Unwrap,
    core_times_from,
    hwmon_sensors,
    read_thermal_zones,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

STAT = """\
cpu  1519063 3311 385417 50131786 54321 0 10931 2201 17 3
cpu0 760119 1650 192960 25062203 27001 0 8012 1100 9 1
cpu1 758944 1661 192457 25069583 27320 0 2919 1101 8 2
intr 114931713 0 9 0 0 0 0 0 0 0 0 0 0 156 0 0 0 0 0
ctxt 211453402
btime 1700000000
processes 41232
procs_running 1
procs_blocked 0
softirq 54012937 1 17112530 2 1200871 0 0 102 18701394 0 16998037
"""
MEMINFO = """\
MemTotal:       24683656 kB
MemFree:        23541204 kB
MemAvailable:   24105372 kB
Buffers:           19324 kB
Cached:           731568 kB
SwapCached:            0 kB
Active:           402524 kB
Inactive:         470988 kB
Shmem:              1052 kB
Slab:              80000 kB
SReclaimable:      52000 kB
SwapTotal:       2097148 kB
SwapFree:        1048576 kB
"""
VMSTAT = """\
nr_free_pages 5885301
nr_zone_inactive_anon 2
pgpgin 1861665
pgpgout 2442184
pswpin 1234
pswpout 5678
pgalloc_dma 0
"""
DISKSTATS = """\
   7       0 loop0 12 0 24 1 0 0 0 0 0 4 1 0 0 0 0 0 0
 254       0 vda 69412 13773 3723330 17750 51228 25287 4883768 50588 0 19292 75122 13376 81 1087144 2573 9647 4209
 254       1 vda1 69000 13000 3700000 17000 51000 25000 4800000 50000 0 19000 75000 13000 80 1000000 2500 0 0
 179       0 mmcblk0 4100 120 250000 900 7000 3000 90000 8000 0 5000 9000
   8       1 sdb1 10 20 30 40
"""
NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  356595    3254    0    0    0     0          0         0   356595    3254    0    0    0     0       0          0
  eth0: 398355267    8571    1    2    0     0          0         0   424758    5396    3    4    0     0       0          0
wlan0: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0
"""
CPUINFO = """\
processor\t: 0
model name\t: AMD EPYC
cpu MHz\t\t: 2445.404
flags\t\t: fpu vme

processor\t: 1
model name\t: AMD EPYC
cpu MHz\t\t: 2000.000
flags\t\t: fpu vme

"""


def _proc(root: Path, **overrides: str) -> Path:
    files = {"stat": STAT, "meminfo": MEMINFO, "vmstat": VMSTAT, "diskstats": DISKSTATS,
             "net/dev": NET_DEV, "cpuinfo": CPUINFO, **overrides}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = _proc(tmp_path / "proc")
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(root))  # psutil reads the same files
    return root


def test_proc_reader_reads_what_psutil_reads_from_the_same_files(proc, tmp_path):
    reader = ProcReader(psutil, str(proc), str(tmp_path / "sys"))
    cores, ctx, intr, soft = reader.cpu()
    assert cores == [core_times_from(t) for t in psutil.cpu_times(percpu=True)]
    stats = psutil.cpu_stats()
    assert (ctx, intr, soft) == (stats.ctx_switches, stats.interrupts, stats.soft_interrupts)

    memory = reader.memory()
    vm, sw = psutil.virtual_memory(), psutil.swap_memory()
    assert memory == {
        "total_bytes": vm.total, "available_bytes": vm.available, "used_bytes": vm.used,
        "free_bytes": vm.free, "percent": vm.percent, "swap_total_bytes": sw.total,
        "swap_used_bytes": sw.used, "swap_free_bytes": sw.free, "swap_percent": sw.percent,
        "swap_in_bytes": sw.sin, "swap_out_bytes": sw.sout}

    reader.refresh(None)
    assert reader.disk_io() == {
        name: (c.read_count, c.write_count, c.read_bytes, c.write_bytes)
        for name, c in psutil.disk_io_counters(perdisk=True, nowrap=False).items()}
    assert reader.net_io() == {
        name: (c.bytes_sent, c.bytes_recv, c.packets_sent, c.packets_recv, c.errin, c.errout,
               c.dropin, c.dropout)
        for name, c in psutil.net_io_counters(pernic=True, nowrap=False).items()}


def test_collector_fast_and_psutil_paths_give_the_same_sample(proc, tmp_path):
    sys_root = tmp_path / "sys"
    (sys_root / "block" / "vda").mkdir(parents=True)
    (sys_root / "block" / "loop0").mkdir(parents=True)
    fast = Collector(sys_root=sys_root, proc_root=str(proc))
    slow = Collector(sys_root=sys_root, fast=False)
    assert fast._proc is not None and slow._proc is None
    a, b = fast.sample(), slow.sample()
    for name in ("core_times", "ctx_switches", "interrupts", "soft_interrupts", "syscalls",
                 "memory", "disk_io", "net_io"):
        assert getattr(a, name) == getattr(b, name), name
    assert list(a.disk_io) == ["vda"]


def test_frequency_from_cpuinfo_is_the_mean_with_null_min_and_max(proc, tmp_path):
    reader = ProcReader(psutil, str(proc), str(tmp_path / "sys"))
    reader.freq_sysfs = False
    assert reader.freq() == ((2445.404 + 2000.0) / 2, None, None)


def test_cpuinfo_without_cpufreq_is_read_every_30_s_not_every_reading(proc, tmp_path):
    reader = ProcReader(psutil, str(proc), str(tmp_path / "sys"))
    reader.freq_sysfs = False
    first = reader.freq()
    cpuinfo = proc / "cpuinfo"
    cpuinfo.write_bytes(cpuinfo.read_bytes().replace(b"2445.404", b"1000.000"))
    assert reader.freq() == first  # cached: /proc/cpuinfo is the costliest file
    reader._cpuinfo_at -= 30.0  # thirty seconds later
    assert reader.freq() == ((1000.0 + 2000.0) / 2, None, None)


def test_frequency_from_cpufreq_sysfs_takes_cpuinfo_current_when_counts_match(tmp_path):
    root = _proc(tmp_path / "proc")
    sys_root = tmp_path / "sys"
    for n, (low, high) in enumerate([(600000, 1500000), (700000, 1800000)]):
        policy = sys_root / f"devices/system/cpu/cpufreq/policy{n}"
        policy.mkdir(parents=True)
        (policy / "scaling_min_freq").write_text(f"{low}\n")
        (policy / "scaling_max_freq").write_text(f"{high}\n")
        (policy / "scaling_cur_freq").write_text("1000000\n")
    reader = ProcReader(psutil, str(root), str(sys_root))
    reader.refresh(None)
    assert reader.freq_sysfs
    assert reader.freq() == ((2445.404 + 2000.0) / 2, 650.0, 1650.0)
    (root / "cpuinfo").write_text("processor\t: 0\nBogoMIPS\t: 108.00\n\n")  # a Pi: no MHz
    reader = ProcReader(psutil, str(root), str(sys_root))
    reader.refresh(None)
    assert reader.freq() == (1000.0, 650.0, 1650.0)


def test_memory_without_memavailable_is_left_to_psutil(tmp_path):
    root = _proc(tmp_path / "proc", meminfo=MEMINFO.replace("MemAvailable:", "Other:"))
    assert ProcReader(psutil, str(root), str(tmp_path / "sys")).memory() is None


def test_diskstats_in_an_unknown_layout_raises_so_psutil_is_asked(tmp_path):
    root = _proc(tmp_path / "proc", diskstats="   3     0   8 hda 1 2 3 4 5 6 7 8 9 10 11\n")
    reader = ProcReader(psutil, str(root), str(tmp_path / "sys"))
    with pytest.raises(ValueError, match="diskstats"):
        reader.disk_io()


def test_unwrap_matches_psutils_wrap_numbers():
    theirs, ours = _WrapNumbers(), Unwrap()
    readings = [
        {"a": (10, 100), "b": (5, 5)},
        {"a": (20, 50), "b": (6, 6)},  # a's second counter wrapped
        {"a": (30, 60)},  # b went away
        {"a": (5, 70), "b": (1, 1)},  # a's first wrapped; b is back, from scratch
        {"a": (6, 80), "b": (0, 2)},
    ]
    for reading in readings:
        assert ours.run(dict(reading)) == theirs.run(dict(reading), "x")


def test_hwmon_sensors_are_listed_in_psutils_order_with_names_and_labels(tmp_path):
    def sensor(hwmon: str, name: str, n: int, label: str | None) -> None:
        d = tmp_path / "class/hwmon" / hwmon
        d.mkdir(parents=True, exist_ok=True)
        (d / "name").write_text(name + "\n")
        (d / f"temp{n}_input").write_text("45000\n")
        if label is not None:
            (d / f"temp{n}_label").write_text(label + "\n")

    sensor("hwmon1", "coretemp", 2, "Core 0")
    sensor("hwmon1", "coretemp", 1, "Package id 0")
    sensor("hwmon0", "acpitz", 1, None)
    found = hwmon_sensors(str(tmp_path))
    assert [(Path(p).name, unit, label) for p, unit, label in found] == [
        ("temp1_input", "acpitz", ""), ("temp1_input", "coretemp", "Package id 0"),
        ("temp2_input", "coretemp", "Core 0")]


def test_fake_platforms_keep_the_psutil_path(tmp_path):
    from tests.unit.agent import fake_psutil

    assert Collector(sys_root=tmp_path, ps=fake_psutil.make())._proc is None


def test_swap_counters_are_reread_once_swap_space_appears(tmp_path):
    root = _proc(tmp_path / "proc", meminfo=MEMINFO.replace("2097148", "0").replace(
        "1048576", "0"))
    reader = ProcReader(psutil, str(root), str(tmp_path / "sys"))
    first = reader.memory()
    assert first is not None and first["swap_in_bytes"] == 1234 * 4096
    (root / "vmstat").write_text(VMSTAT.replace("pswpin 1234", "pswpin 2000"))
    unchanged = reader.memory()  # no swap space: the counters cannot have moved
    assert unchanged is not None and unchanged["swap_in_bytes"] == 1234 * 4096
    (root / "meminfo").write_text(MEMINFO)  # swapon
    after = reader.memory()
    assert after is not None and after["swap_in_bytes"] == 2000 * 4096


# --- kept-open files and the parsers behind them ---------------------------------------------

def test_proc_file_reads_a_file_longer_than_a_page_each_time_anew(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(b"x" * 10_000)
    records, whole = ProcFile(str(path)), ProcFile(str(path), whole=True)
    assert records.read() == whole.read() == b"x" * 10_000
    path.write_bytes(b"y" * 3000)  # same inode: a kept-open file sees what is there now
    assert records.read() == whole.read() == b"y" * 3000
    records.close()
    whole.close()


def test_lazy_proc_file_is_opened_when_there_and_again_after_a_failed_read(tmp_path):
    path = tmp_path / "temp1_input"
    f = ProcFile(str(path), whole=True, lazy=True)
    with pytest.raises(FileNotFoundError):
        f.read()
    path.mkdir()  # opens, but reading fails (as a sysfs file of a removed device does)
    with pytest.raises(IsADirectoryError):
        f.read()
    assert f.fd == -1  # closed: the next read opens the path again
    path.rmdir()
    path.write_text("41000\n")
    assert f.read() == b"41000\n"
    f.close()


def test_stat_without_interrupt_and_context_switch_lines_gives_null_counters(tmp_path):
    root = _proc(tmp_path / "proc", stat="".join(STAT.splitlines(keepends=True)[:3]))
    cores, ctx, intr, soft = ProcReader(psutil, str(root), str(tmp_path / "sys")).cpu()
    assert len(cores) == 2 and (ctx, intr, soft) == (None, None, None)


def test_stat_counters_take_the_first_number_of_their_line(tmp_path):
    root = _proc(tmp_path / "proc", stat=STAT.replace("ctxt 211453402", "ctxt x1")
                 .rstrip("\n"))  # the last line (softirq) without its newline
    _, ctx, intr, soft = ProcReader(psutil, str(root), str(tmp_path / "sys")).cpu()
    assert (ctx, intr, soft) == (None, 114931713, 54012937)


def _disk_stat(sys_root: Path, name: str, line: str) -> Path:
    path = sys_root / "block" / name / "stat"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(line + "\n")
    return path


def test_disks_are_read_from_their_sysfs_stat_files_as_diskstats_would_give(proc, tmp_path):
    sys_root = tmp_path / "sys"
    vda = DISKSTATS.splitlines()[1].split(maxsplit=3)[3]  # vda's counters
    _disk_stat(sys_root, "vda", "   " + vda.replace(" ", "    "))  # sysfs pads the numbers
    mmc = DISKSTATS.splitlines()[3].split(maxsplit=3)[3]
    _disk_stat(sys_root, "mmcblk0", mmc)
    expected = {name: (c.read_count, c.write_count, c.read_bytes, c.write_bytes)
                for name, c in psutil.disk_io_counters(perdisk=True, nowrap=False).items()
                if name in ("vda", "mmcblk0")}
    (proc / "diskstats").write_text("")  # not read while the sysfs files are there
    reader = ProcReader(psutil, str(proc), str(sys_root))
    reader.refresh({"vda", "mmcblk0"})
    assert reader.disk_io() == expected


def test_a_disk_whose_stat_file_went_away_is_read_from_diskstats(proc, tmp_path):
    sys_root = tmp_path / "sys"
    stat = _disk_stat(sys_root, "vda", "1 2 3 4 5 6 7 8 9 10 11")
    reader = ProcReader(psutil, str(proc), str(sys_root))
    reader.refresh({"vda"})
    assert reader.disk_io() == {"vda": (1, 5, 3 * 512, 7 * 512)}
    stat.unlink()
    stat.parent.rmdir()
    stat.parent.mkdir()  # the device is replaced: the file name now leads nowhere
    reader.disk_files = {"vda": ProcFile(str(stat), whole=True, lazy=True)}
    assert reader.disk_io() == {"vda": (69412, 51228, 3723330 * 512, 4883768 * 512)}
    assert reader.disk_files is None  # diskstats until the next refresh


def test_net_dev_names_may_be_padded_and_counters_are_taken_by_position(tmp_path):
    root = _proc(tmp_path / "proc", **{"net/dev": NET_DEV.replace(
        "wlan0: 10 1", "  veth1a2b:10 1")})
    reader = ProcReader(psutil, str(root), str(tmp_path / "sys"))
    assert reader.net_io()["veth1a2b"] == (20, 10, 2, 1, 0, 0, 0, 0)


def _hwmon(sys_root: Path, hwmon: str, name: str, n: int, millidegrees: int,
           label: str | None = None) -> Path:
    d = sys_root / "class/hwmon" / hwmon
    d.mkdir(parents=True, exist_ok=True)
    (d / "name").write_text(name + "\n")
    if label is not None:
        (d / f"temp{n}_label").write_text(label + "\n")
    path = d / f"temp{n}_input"
    path.write_text(f"{millidegrees}\n")
    return path


def test_temperatures_keep_psutils_grouping_and_drop_copies_of_thermal_zones(proc, tmp_path):
    sys_root = tmp_path / "sys"
    _hwmon(sys_root, "hwmon0", "nvme", 1, -274000, "Composite")  # out of range: dropped
    _hwmon(sys_root, "hwmon1", "acpitz", 1, 30000)  # the thermal zone below, again
    core = _hwmon(sys_root, "hwmon2", "coretemp", 1, 45000, "Package id 0")
    _hwmon(sys_root, "hwmon3", "nvme", 1, 38000, "Composite")
    zone = sys_root / "class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("acpitz\n")
    (zone / "temp").write_text("30000\n")
    reader = ProcReader(psutil, str(proc), str(sys_root))
    reader.refresh(None, read_thermal_zones(sys_root))
    assert [(t["sensor"], t["label"], t["celsius"]) for t in reader.temperatures()] == [
        ("nvme", "Composite", 38.0),  # grouped where psutil's first nvme entry was
        ("coretemp", "Package id 0", 45.0),
        ("acpitz", "thermal_zone0", 30.0)]
    core.write_text("47000\n")  # read anew from the kept-open file
    assert reader.temperatures()[1]["celsius"] == 47.0
    (zone / "temp").unlink()
    (zone / "temp").mkdir()  # unreadable, as the file of a removed device: left out
    reader.refresh(None, read_thermal_zones(sys_root))
    assert [(t["sensor"], t["celsius"]) for t in reader.temperatures()] == [
        ("nvme", 38.0), ("coretemp", 47.0)]


def test_a_zone_with_a_blank_type_is_reported_when_there_is_no_hwmon(proc, tmp_path):
    sys_root = tmp_path / "sys"
    for n, kind in enumerate(["", "cpu-thermal"]):
        zone = sys_root / f"class/thermal/thermal_zone{n}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{40000 + n}\n")
    reader = ProcReader(psutil, str(proc), str(sys_root))
    reader.refresh(None, read_thermal_zones(sys_root))
    assert [(t["sensor"], t["label"], t["celsius"]) for t in reader.temperatures()] == [
        ("", "", 40.0), ("thermal_zone0", "thermal_zone0", 40.0),
        ("cpu-thermal", "thermal_zone1", 40.001)]


def test_unwrap_returns_the_reading_itself_when_nothing_went_down():
    unwrap = Unwrap()
    unwrap.run({"a": (1, 2)})
    reading = {"a": (1, 3), "b": (0, 0)}
    assert unwrap.run(reading) is reading
