"""The collector on fake platforms: what a platform lacks is null, never a crash."""

from pathlib import Path

from pydantic import TypeAdapter

from agent.collect import Collector, read_thermal_zones
from agent.encode import build_metrics, encode
from shared.schema import MetricsV1
from tests.unit.agent import fake_psutil
from tests.unit.agent.fake_psutil import Battery, Freq, Temp

METRICS = TypeAdapter(MetricsV1)


class StepClock:
    """A monotonic clock that advances one second per reading."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _two_readings(collector: Collector):
    collector.clock = StepClock()
    first = collector.sample()
    collector.ps.state["tick"] += 1
    second = collector.sample()
    message = build_metrics(first, second, device_id="d1", session_id="s", seq=2,
                            epoch_s=1_700_000_000.0, interval_s=1.0)
    return METRICS.validate_json(encode(message))


def test_machine_without_sensors_battery_or_cpufreq_publishes_nulls(tmp_path):
    # Like this VM: no cpufreq, no hwmon, no thermal zones, no battery, no Pi firmware.
    collector = Collector(sys_root=tmp_path, ps=fake_psutil.make())
    m = _two_readings(collector)
    assert m["cpu"]["freq_current_mhz"] is None
    assert m["cpu"]["freq_min_mhz"] is None and m["cpu"]["freq_max_mhz"] is None
    assert m["sensors"]["cpu_celsius"] is None and m["sensors"]["gpu_celsius"] is None
    assert m["sensors"]["temperatures"] == []
    assert m["sensors"]["battery_percent"] is None
    assert m["sensors"]["battery_charging"] is None
    assert m["sensors"]["battery_s_left"] is None
    assert all(v is None for v in m["throttling"].values())
    # …while what the platform has is filled.
    assert m["cpu"]["percent"] == 50.0
    assert m["cpu"]["ctx_switches_per_s"] == 10.0
    assert m["memory"]["total_bytes"] == 8_000_000_000


def test_linux_syscalls_are_null_not_zero(tmp_path):
    m = _two_readings(Collector(sys_root=tmp_path, ps=fake_psutil.make()))
    assert m["cpu"]["syscalls"] is None
    assert m["cpu"]["syscalls_per_s"] is None


def test_zero_min_and_max_frequency_is_reported_as_null(tmp_path):
    fake = fake_psutil.make(cpu_freq=lambda: Freq(1500.0, 0.0, 0.0))
    m = _two_readings(Collector(sys_root=tmp_path, ps=fake))
    assert m["cpu"]["freq_current_mhz"] == 1500.0
    assert m["cpu"]["freq_min_mhz"] is None


def test_failing_sensor_calls_do_not_crash_the_collector(tmp_path):
    def broken(*args, **kwargs):
        raise OSError("no such file")

    fake = fake_psutil.make(cpu_freq=broken, sensors_temperatures=broken,
                            sensors_battery=broken, swap_memory=broken,
                            disk_io_counters=broken, net_io_counters=broken,
                            getloadavg=broken, disk_partitions=broken)
    m = _two_readings(Collector(sys_root=tmp_path, ps=fake))
    assert m["memory"]["swap_total_bytes"] is None
    assert m["disk"]["read_bytes"] is None and m["disk"]["per_disk"] == []
    assert m["network"]["bytes_sent"] is None
    assert m["cpu"]["load_1"] is None


def test_laptop_battery_and_pi_temperatures_are_reported(tmp_path):
    fake = fake_psutil.make(
        sensors_battery=lambda: Battery(87.5, 5400, False),
        sensors_temperatures=lambda: {"cpu_thermal": [Temp("", 61.3, None, None)]})
    m = _two_readings(Collector(sys_root=tmp_path, ps=fake))
    assert m["sensors"]["battery_percent"] == 87.5
    assert m["sensors"]["battery_charging"] is False
    assert m["sensors"]["battery_s_left"] == 5400.0
    assert m["sensors"]["cpu_celsius"] == 61.3


def test_battery_with_unlimited_time_left_gives_null_seconds(tmp_path):
    fake = fake_psutil.make(sensors_battery=lambda: Battery(100.0, -2, True))
    m = _two_readings(Collector(sys_root=tmp_path, ps=fake))
    assert m["sensors"]["battery_s_left"] is None
    assert m["sensors"]["battery_charging"] is True


def _thermal_zone(root: Path, n: int, kind: str, millidegrees: str) -> None:
    zone = root / "class/thermal" / f"thermal_zone{n}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    (zone / "temp").write_text(millidegrees + "\n")


def test_thermal_zones_are_read_from_sysfs(tmp_path):
    _thermal_zone(tmp_path, 0, "cpu-thermal", "48312")
    _thermal_zone(tmp_path, 1, "gpu-thermal", "45000")
    assert [kind for kind, _ in read_thermal_zones(tmp_path)] == ["cpu-thermal", "gpu-thermal"]
    m = _two_readings(Collector(sys_root=tmp_path, ps=fake_psutil.make()))
    assert m["sensors"]["cpu_celsius"] == 48.312
    assert m["sensors"]["gpu_celsius"] == 45.0
    assert {t["label"] for t in m["sensors"]["temperatures"]} == {"thermal_zone0",
                                                                  "thermal_zone1"}


def test_psutil_fallback_copies_of_thermal_zones_are_not_counted_twice(tmp_path):
    _thermal_zone(tmp_path, 0, "cpu-thermal", "50000")
    fake = fake_psutil.make(
        sensors_temperatures=lambda: {"cpu-thermal": [Temp("", 50.0, None, None)]})
    m = _two_readings(Collector(sys_root=tmp_path, ps=fake))
    assert len(m["sensors"]["temperatures"]) == 1


def test_partitions_skip_pseudo_filesystems_and_bind_mounts(tmp_path):
    from tests.unit.agent.fake_psutil import Part
    fake = fake_psutil.make(disk_partitions=lambda all=False: [
        Part("/dev/sda1", "/", "ext4", "rw"), Part("/dev/sda1", "/bind", "ext4", "rw"),
        Part("/dev/loop0", "/snap/core/1", "squashfs", "ro"),
        Part("/dev/mmcblk0p1", "/boot/firmware", "vfat", "rw")])
    collector = Collector(sys_root=tmp_path, ps=fake)
    m = _two_readings(collector)
    assert [p["mountpoint"] for p in m["disk"]["partitions"]] == ["/", "/boot/firmware"]
    assert collector.watched()[0] == ["/", "/boot/firmware"]  # what readings cover


def test_disk_totals_count_whole_disks_only(tmp_path):
    from tests.unit.agent.fake_psutil import DiskIo
    for name in ("sda", "loop0", "dm-0"):
        (tmp_path / "block" / name).mkdir(parents=True)
    fake = fake_psutil.make(disk_io_counters=lambda perdisk=False, nowrap=True: {
        "sda": DiskIo(1, 1, 100, 100), "sda1": DiskIo(1, 1, 100, 100),
        "loop0": DiskIo(5, 5, 500, 500), "dm-0": DiskIo(1, 1, 100, 100)})
    m = _two_readings(Collector(sys_root=tmp_path, ps=fake))
    assert [d["name"] for d in m["disk"]["per_disk"]] == ["sda"]
    assert m["disk"]["read_bytes"] == 100
    assert Collector(sys_root=tmp_path, ps=fake).watched()[1] == ["sda"]
