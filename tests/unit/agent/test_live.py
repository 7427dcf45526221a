"""What `fleetpulse-agent top` shows, as values: history, warnings, thresholds, sorting."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from typing import Any

import pytest

from agent import live
from agent.collect import Sample
from agent.encode import build_metrics
from agent.live import (
    History,
    ServiceStatus,
    alerting,
    bar,
    format_bytes,
    parse_systemctl_show,
    read_service_status,
    series_values,
    sort_processes,
    sparkline,
    warnings,
)
from agent.rates import CoreTimes
from shared.schema import MetricsV1, ProcessInfo

MEMORY: dict[str, int | float | None] = {
    "total_bytes": 1000, "available_bytes": 600, "used_bytes": 400, "free_bytes": 500,
    "percent": 40.0, "swap_total_bytes": 10, "swap_used_bytes": 0, "swap_free_bytes": 10,
    "swap_percent": 0.0, "swap_in_bytes": 0, "swap_out_bytes": 0}
BASE = Sample(
    monotonic_s=1.0, core_times=[CoreTimes(0, 100), CoreTimes(0, 100)],
    freq_mhz=(1500.0, 600.0, 1800.0), ctx_switches=1000, interrupts=500, soft_interrupts=200,
    syscalls=None, load=(1.0, 0.5, 0.25), memory=MEMORY,
    partitions=[{"mountpoint": "/", "device": "/dev/mmcblk0p2", "fstype": "ext4",
                 "total_bytes": 100, "used_bytes": 50, "free_bytes": 50, "percent": 50.0}],
    disk_io={"mmcblk0": (1, 2, 1000, 2000)}, net_io={"eth0": (100, 200, 1, 2, 0, 0, 0, 0)},
    temperatures=[{"sensor": "cpu_thermal", "label": "", "celsius": 51.0}],
    battery=(None, None, None), throttled_raw=0)


def reading(**changes: Any) -> MetricsV1:
    cur = replace(BASE, monotonic_s=2.0, core_times=[CoreTimes(30, 200), CoreTimes(10, 200)],
                  disk_io={"mmcblk0": (1, 2, 1500, 2500)},
                  net_io={"eth0": (300, 1200, 1, 2, 0, 0, 0, 0)}, **changes)
    return build_metrics(BASE, cur, device_id="pi", session_id="s", seq=1, epoch_s=1e9,
                         interval_s=1.0)


def proc(pid: int, name: str, cpu: float | None, rss: int) -> ProcessInfo:
    return {"pid": pid, "name": name, "user": "root", "cpu_percent": cpu, "rss_bytes": rss,
            "memory_percent": None, "threads": 1, "status": "sleeping",
            "io_read_bytes": None, "io_write_bytes": None}


def test_thresholds_are_the_hubs_default_alert_rules():
    from hub.alerts import DEFAULT_RULES

    rules = {r.name: r.threshold for r in DEFAULT_RULES}
    assert live.CPU_CELSIUS_ALERT == rules["cpu_temperature_high"]
    assert live.DISK_PERCENT_ALERT == rules["disk_nearly_full"]
    assert live.MEMORY_PERCENT_ALERT == rules["memory_pressure"]
    assert live.SWAP_BYTES_PER_S_ALERT == rules["swap_thrashing"]


def test_series_values_follow_the_published_reading():
    values = series_values(reading())
    assert values == {"cpu": 20.0, "memory": 40.0, "temperature": 51.0, "disk": 1000.0,
                      "net_in": 1000.0, "net_out": 200.0}


def test_history_keeps_sixty_seconds_and_leaves_unknown_values_out():
    h = History()
    for i in range(70):
        h.add({"cpu": float(i), "temperature": None})
    assert h.known("cpu") == [float(i) for i in range(10, 70)]
    assert h.known("temperature") == [] and h.last("temperature") is None
    assert h.last("cpu") == 69.0


def test_a_quiet_machine_has_no_warnings():
    assert warnings(reading()) == [] and alerting(reading()) == set()


def test_throttling_now_and_since_boot_are_warned_apart():
    lines = warnings(reading(throttled_raw=0x50005))
    assert lines == ["Pi firmware NOW: under-voltage, throttled",
                     "Since boot: under-voltage, throttling"]


def test_values_over_the_alert_thresholds_are_warned_and_highlighted():
    hot = reading(temperatures=[{"sensor": "cpu_thermal", "label": "", "celsius": 85.0}],
                  memory={**MEMORY, "percent": 95.0},
                  partitions=[{"mountpoint": "/", "device": "d", "fstype": "ext4",
                               "total_bytes": 100, "used_bytes": 95, "free_bytes": 5,
                               "percent": 95.0}])
    assert alerting(hot) == {"temperature", "memory", "disk_full"}
    assert warnings(hot) == ["CPU temperature 85.0 °C > 80 °C", "Memory 95.0 % > 90 %",
                             "Disk / 95.0 % full > 90 %"]
    at = reading(temperatures=[{"sensor": "cpu_thermal", "label": "", "celsius": 80.0}])
    assert alerting(at) == set()  # the hub's rules fire above the threshold, not at it


def test_heavy_swapping_is_warned():
    swapping = replace(BASE, memory={**MEMORY, "swap_in_bytes": 10_000_000})
    cur = replace(swapping, monotonic_s=2.0, memory={**MEMORY, "swap_in_bytes": 12_000_000})
    m = build_metrics(swapping, cur, device_id="pi", session_id="s", seq=1, epoch_s=1e9,
                      interval_s=1.0)
    assert "swap" in alerting(m) and warnings(m) == ["Swapping 1.9M/s > 1.0M/s"]


def test_a_machine_without_sensors_has_no_temperature_and_no_warning():
    m = reading(temperatures=[])
    assert series_values(m)["temperature"] is None and warnings(m) == []


def test_processes_sort_by_cpu_memory_pid_and_name():
    procs = [proc(30, "b", 5.0, 100), proc(10, "C", None, 300), proc(20, "a", 50.0, 200)]
    assert [p["pid"] for p in sort_processes(procs, "cpu", 10)] == [20, 30, 10]
    assert [p["pid"] for p in sort_processes(procs, "mem", 10)] == [10, 20, 30]
    assert [p["pid"] for p in sort_processes(procs, "pid", 2)] == [10, 20]
    assert [p["pid"] for p in sort_processes(procs, "name", 10)] == [20, 30, 10]
    with pytest.raises(ValueError, match="unknown sort key"):
        sort_processes(procs, "size", 10)


def test_sparkline_draws_the_last_values_on_a_scale():
    assert sparkline([0.0, 50.0, 100.0], 3, (0.0, 100.0)) == "▁▅█"
    assert sparkline([0.0, 50.0, 100.0, 100.0], 2, (0.0, 100.0)) == "██"  # the newest
    assert sparkline([10.0, None, 20.0], 3) == "▅ █"  # from 0 to the peak; unknown: blank
    assert sparkline([None, None], 2) == "  " and sparkline([], 5) == ""
    assert sparkline([5.0, 5.0], 2, (5.0, 5.0)) == "▁▁"  # a flat scale: no division by 0
    assert sparkline([150.0, -3.0], 2, (0.0, 100.0)) == "█▁"  # clamped


def test_format_bytes_and_bars():
    assert [format_bytes(v) for v in (None, 900, 1536, 5 * 1024**3)] == [
        "–", "900B", "1.5K", "5.0G"]
    assert bar(50.0, 4) == "██  " and bar(None, 3) == "   "
    assert bar(100.0, 2) == "██" and bar(25.0, 2) == "▌ "  # four eighths of a cell


def test_systemctl_show_says_whether_the_service_runs_and_what_it_reports():
    out = "LoadState=loaded\nActiveState=active\nStatusText=connected to broker; 0 spooled\n"
    status = parse_systemctl_show(out)
    assert status == ServiceStatus("active", "connected to broker; 0 spooled")
    assert status.describe() == "agent service: active, connected to broker; 0 spooled"
    missing = parse_systemctl_show("LoadState=not-found\nActiveState=inactive\nStatusText=\n")
    assert missing == ServiceStatus(None, None)
    assert "not installed" in missing.describe()
    assert parse_systemctl_show("LoadState=loaded\nActiveState=failed\nStatusText=\n"
                                ).describe() == "agent service: failed"


def test_read_service_status_without_a_running_systemd():
    def no_systemd(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "System has not been booted with "
                                           "systemd as init system (PID 1).")

    def failing(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(cmd, 2)

    assert read_service_status(run=no_systemd) == ServiceStatus(None, None)
    assert read_service_status(run=failing) == ServiceStatus(None, None)
