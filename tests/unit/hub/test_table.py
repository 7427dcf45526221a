from datetime import datetime, timedelta, timezone

from hub.table import describe_throttling, format_fleet

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def test_fleet_table_shows_each_device_and_a_summary():
    text = format_fleet([
        {"device_id": "pi-1", "hostname": "kitchen", "status": "online",
         "status_since": NOW - timedelta(hours=3), "last_seen": NOW - timedelta(seconds=1),
         "cpu_percent": 12.34, "memory_percent": 40.0, "sensors_cpu_celsius": 51.2,
         "throttling_raw": 0x50005, "throttling_throttled_now": True,
         "throttling_under_voltage_now": True},
        {"device_id": "laptop", "hostname": None, "status": "offline", "status_since": None,
         "last_seen": None, "cpu_percent": None, "memory_percent": None,
         "sensors_cpu_celsius": None, "throttling_raw": None,
         "throttling_throttled_now": None, "throttling_under_voltage_now": None}], NOW)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["DEVICE", "HOST", "STATUS"]
    assert "pi-1" in lines[1] and "12.3" in lines[1] and "under-voltage, throttled" in lines[1]
    assert "3 h ago" in lines[1] and "1 s ago" in lines[1]
    assert "laptop" in lines[2] and "never" in lines[2]
    assert lines[-1] == "2 devices, 1 online"


def test_throttling_descriptions():
    assert describe_throttling(None, None, None) == "-"
    assert describe_throttling(0, False, False) == "ok"
    assert describe_throttling(0x50000, False, False) == "ok (0x50000)"
