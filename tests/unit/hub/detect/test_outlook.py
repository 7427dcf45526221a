"""Forecasts of memory exhaustion, disk full and throttling temperature, from readings; and
the forecast alerts that fire before the fact and say when."""

from datetime import UTC, datetime, timedelta

import pytest

from hub.alerts import DEFAULT_RULES, DeviceState, Reading, evaluate, fold
from hub.detect.outlook import (
    MIN_STEPS,
    PI3B_PLUS_SOFT_LIMIT_CELSIUS,
    STEP_S,
    THROTTLE_CELSIUS,
    Outlook,
    throttle_limit,
)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
GIB = 1024 ** 3


def feed(outlook, seconds, reading_at):
    out = {}
    for i in range(seconds):
        out = outlook.add(T0 + timedelta(seconds=i), reading_at(i))
    return out


def test_a_steady_memory_leak_is_forecast_to_reach_the_floor_when_it_will():
    # 4 GiB total, 2 GiB available, losing 1 MiB a second: 5 % (204.8 MiB) is reached after
    # (2048 - 204.8) s.
    def at(i):
        return {"memory_total_bytes": 4 * GIB, "memory_available_bytes": 2 * GIB - i * 2 ** 20}

    eta = feed(Outlook(), 600, at)["memory_exhaustion_s"]
    truth = (2048 - 204.8) - 599
    assert eta == pytest.approx(truth, abs=2 * STEP_S)


def test_flat_or_recovering_signals_forecast_nothing_and_too_little_data_says_nothing():
    flat = feed(Outlook(), 600, lambda i: {"memory_total_bytes": 100, "memory_available_bytes": 50,
                                           "sensors_cpu_celsius": 50.0})
    assert flat == {"memory_exhaustion_s": None, "disk_full_s": None,
                    "thermal_throttle_s": None}
    early = feed(Outlook(), int(STEP_S * (MIN_STEPS - 1)),
                 lambda i: {"sensors_cpu_celsius": 50.0 + i})
    assert early["thermal_throttle_s"] is None


def test_the_first_partition_to_fill_sets_the_disk_forecast_and_past_the_limit_is_zero():
    def at(i):
        return {"disk_partitions": [{"mountpoint": "/", "percent": 50.0 + i * 0.01},
                                    {"mountpoint": "/data", "percent": 90.0 + i * 0.01}]}

    eta = feed(Outlook(), 300, at)["disk_full_s"]
    assert eta == pytest.approx((100 - 90 - 299 * 0.01) / 0.01, abs=2 * STEP_S)
    full = feed(Outlook(), 300, lambda i: {"disk_partitions": [{"mountpoint": "/",
                                                                "percent": 100.0}]})
    assert full["disk_full_s"] == 0.0


def test_throttling_limit_is_80_celsius_and_60_on_a_pi_3b_plus():
    assert throttle_limit("Raspberry Pi 4 Model B Rev 1.4") == THROTTLE_CELSIUS == 80.0
    assert throttle_limit("Raspberry Pi 3 Model B Plus Rev 1.3") == \
        PI3B_PLUS_SOFT_LIMIT_CELSIUS == 60.0
    assert throttle_limit(None) == 80.0
    warming = feed(Outlook(throttle_limit("Raspberry Pi 3 Model B Plus Rev 1.3")), 300,
                   lambda i: {"sensors_cpu_celsius": 50.0 + i * 0.02})
    assert warming["thermal_throttle_s"] == pytest.approx((60 - 50 - 299 * 0.02) / 0.02,
                                                          abs=2 * STEP_S)


def test_memory_forecast_alert_fires_before_the_fact_and_says_when():
    rule = next(r for r in DEFAULT_RULES if r.name == "memory_exhaustion_forecast")
    device = DeviceState("pi-1", "online", T0, 1.0, T0)
    etas = [2000.0] * 5 + [800.0 - i for i in range(40)]
    readings = [Reading(T0 + timedelta(seconds=i), {"memory_exhaustion_s": v})
                for i, v in enumerate(etas)]
    (change,) = evaluate([rule], device, fold([rule], readings), {}, T0)
    assert change.action == "open" and change.started_at == T0 + timedelta(seconds=5)
    when = (readings[-1].ts + timedelta(seconds=etas[-1])).isoformat(timespec="seconds")
    assert "available memory falls to 5 % of the total in about 13 min" in change.message
    assert when in change.message
    assert change.peak_value == etas[-1]  # the soonest


def test_partitions_as_json_text_forecast_as_the_list_does_and_bytes_beat_rounded_percent():
    import orjson

    def at(i):
        return {"disk_partitions": [{"mountpoint": "/", "percent": 50.0 + i * 0.01}]}

    as_list = feed(Outlook(), 300, at)["disk_full_s"]
    as_text = feed(Outlook(), 300, lambda i: {"disk_partitions": orjson.dumps(at(i)[
        "disk_partitions"]).decode()})["disk_full_s"]
    assert as_list is not None and as_text == as_list
    # 1 GB a second onto a 1 TB disk: the rounded percent moves by 0.1 every 100 s, the bytes
    # every second; both forecast the disk full in about (1 TB - used) / 1 GB/s.
    tb, gb = 10 ** 12, 10 ** 9

    def filling(i):
        used = 500 * gb + i * gb
        return {"disk_partitions": [{"mountpoint": "/", "used_bytes": used,
                                     "free_bytes": tb - used,
                                     "percent": round(100 * used / tb, 1)}]}

    eta = feed(Outlook(), 300, filling)["disk_full_s"]
    assert eta == pytest.approx((tb - 500 * gb - 299 * gb) / gb, abs=2 * STEP_S)


def test_a_partition_that_disappears_loses_its_forecast():
    def at(i):
        parts = [{"mountpoint": "/", "percent": 50.0}]
        if i < 200:
            parts.append({"mountpoint": "/media/usb", "percent": 50.0 + i * 0.1})
        return {"disk_partitions": parts}

    outlook = Outlook()
    etas = [outlook.add(T0 + timedelta(seconds=i), at(i))["disk_full_s"] for i in range(300)]
    assert etas[150] is not None  # /media/usb filling
    assert etas[-1] is None  # gone, and / stays flat
    assert set(outlook.disks) == {"/"}


def test_space_freed_on_a_partition_restarts_its_line_from_the_new_level():
    # Filling at 0.01 points a second; at 300 s, 3 points are deleted; the fill goes on.
    def at(i):
        return {"disk_partitions": [{"mountpoint": "/", "percent": 60.0 + 0.01 * i
                                     - (3.0 if i >= 300 else 0.0)}]}

    outlook = Outlook()
    etas = [outlook.add(T0 + timedelta(seconds=i), at(i))["disk_full_s"] for i in range(500)]
    assert etas[299] is not None
    assert None in etas[300:340]  # a new line needs MIN_STEPS of its own
    # The line through the fill alone: (100 - 57 - 0.01 i) / 0.01 s to go; a line across
    # the deletion would be flattened by it (or point away from the limit).
    assert etas[-1] == pytest.approx((100 - 57 - 0.01 * 499) / 0.01, abs=2 * STEP_S)
    # A small step back (under DISK_RESTART_POINTS) keeps the line.
    kept = Outlook()
    feed(kept, 300, lambda i: {"disk_partitions": [{"mountpoint": "/", "percent": 60.0 + 0.01 * i
                                                     - (0.2 if i >= 200 else 0.0)}]})
    assert kept.disks["/"].steps >= 28


def test_a_series_forecasts_with_any_forecaster_and_persistence_never_warns_ahead():
    from hub.detect.forecast import DampedHolt, Persistence
    from hub.detect.outlook import Series

    etas = {}
    for name, model in (("holt", lambda: DampedHolt(k=1)),
                        ("persistence", lambda: Persistence(k=1))):
        series = Series(70.0, make_model=model)
        for i in range(300):
            series.add(float(i), 50.0 + 0.05 * i)  # reaches 70 at i = 400
        etas[name] = series.eta_s
    assert etas["holt"] is not None and etas["holt"] > 0
    assert etas["persistence"] is None
