"""Home Assistant discovery messages (agent/discovery.py), checked against HA's rules
(tests/ha_schema.py) and rendered against readings."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from agent.discovery import (
    MIN_EXPIRE_AFTER_S,
    device_model,
    discovery_message,
    expire_after_s,
    shape_of,
    slug,
)
from hub.alerts import Change, alert_payload
from shared.topics import alert_topic, ha_discovery_topic, ha_node_id
from tests import ha_schema
from tests.readings import partition, reading

ODD_MOUNT = "/media/Bob's disk"


def pi_reading(**values: Any) -> bytes:
    """A reading of a Pi with everything: temperatures, battery, throttling, two disks."""
    fields: dict[str, Any] = {
        "cpu_percent": 12.5, "cpu_per_core_percent": [10.0, 15.0, 12.0, 13.0],
        "cpu_load_1": 0.5, "memory_percent": 40.2, "memory_swap_total_bytes": 2**30,
        "memory_swap_percent": 3.0, "network_bytes_recv_per_s": 1200.5,
        "network_bytes_sent_per_s": 300.0, "disk_read_bytes_per_s": 0.0,
        "disk_write_bytes_per_s": 4096.0,
        "disk_partitions": [partition("/", 55.5), partition("/boot/firmware", 20.0),
                            partition(ODD_MOUNT, 90.0)],
        "sensors_cpu_celsius": 61.3, "sensors_gpu_celsius": 60.0,
        "sensors_battery_percent": 80.0, "sensors_battery_charging": True,
        "throttling_raw": 0x50005, "throttling_under_voltage_now": True,
        "throttling_freq_capped_now": False, "throttling_throttled_now": True,
        "throttling_soft_temp_limit_now": False, "throttling_under_voltage_occurred": True,
        "throttling_freq_capped_occurred": False, "throttling_throttled_occurred": True,
        "throttling_soft_temp_limit_occurred": False}
    fields.update(values)
    return orjson.dumps(reading("pi-1", datetime(2026, 11, 30, tzinfo=UTC), **fields))


def announce(device_id: str = "pi-1", payload: bytes | None = None, *, name: str = "kitchen",
             interval_s: float = 1.0) -> dict[str, Any]:
    payload = pi_reading() if payload is None else payload
    return discovery_message(device_id=device_id, name=name, model="Raspberry Pi 5",
                             manufacturer="Raspberry Pi Ltd", sw_version="Debian 12",
                             agent_version="0.1.0", metrics_topic=f"fp/{device_id}/metrics",
                             status_topic=f"fp/{device_id}/status", interval_s=interval_s,
                             shape=shape_of(json.loads(payload)))


def test_a_pi_with_everything_announces_every_sensor_and_ha_accepts_each_field() -> None:
    message = announce()
    assert ha_schema.problems(ha_discovery_topic("pi-1"), json.dumps(message).encode()) == []
    assert set(message["cmps"]) == {
        "cpu", "load_1", "memory", "swap", "network_in", "network_out", "disk_read",
        "disk_write", "interval", "cpu_core_0", "cpu_core_1", "cpu_core_2", "cpu_core_3",
        "disk_root", "disk_boot_firmware", "disk_media_bob_s_disk", "cpu_temperature",
        "gpu_temperature", "battery", "battery_charging", "under_voltage",
        "under_voltage_occurred", "freq_capped", "freq_capped_occurred", "throttled",
        "throttled_occurred", "soft_temp_limit", "soft_temp_limit_occurred"}
    assert message["state_topic"] == "fp/pi-1/metrics"
    assert message["availability_topic"] == "fp/pi-1/status"
    assert (message["payload_available"], message["payload_not_available"]) == \
        ("online", "offline")
    assert message["o"]["name"] == "fleetpulse"
    assert message["dev"] == {"identifiers": ["fleetpulse_pi-1"], "name": "kitchen",
                              "manufacturer": "Raspberry Pi Ltd", "model": "Raspberry Pi 5",
                              "sw_version": "Debian 12"}
    assert message["cmps"]["cpu_temperature"]["device_class"] == "temperature"
    assert message["cmps"]["network_in"]["unit_of_measurement"] == "B/s"
    assert message["cmps"]["cpu_core_0"]["enabled_by_default"] is False


def test_a_machine_without_sensors_announces_only_what_it_has() -> None:
    bare = orjson.dumps(reading("vm", datetime(2026, 11, 30, tzinfo=UTC), cpu_percent=1.0,
                                cpu_per_core_percent=[1.0],
                                disk_partitions=[partition("/", 10.0)]))
    message = announce("vm", bare)
    assert ha_schema.problems(ha_discovery_topic("vm"), json.dumps(message).encode()) == []
    assert set(message["cmps"]) == {"cpu", "load_1", "memory", "network_in", "network_out",
                                    "disk_read", "disk_write", "interval", "cpu_core_0",
                                    "disk_root"}


@pytest.mark.parametrize("payload", [pi_reading(), pi_reading(
    cpu_percent=None, sensors_cpu_celsius=None, throttling_throttled_now=None,
    network_bytes_recv_per_s=None, cpu_per_core_percent=[1.0], disk_partitions=[])])
def test_every_value_template_renders_a_state_ha_takes_from_a_reading(payload: bytes) -> None:
    # The second reading: nulls (the first reading has no rates), fewer cores, no disks.
    for key, component in announce(payload=pi_reading())["cmps"].items():
        text = ha_schema.render(component["value_template"], payload)
        assert ha_schema.is_state(component["p"], text), (key, text)


def test_the_templates_point_at_the_values_of_the_reading() -> None:
    cmps = announce()["cmps"]
    payload = pi_reading()

    def value(key: str) -> str:
        return ha_schema.render(cmps[key]["value_template"], payload)

    assert value("cpu") == "12.5" and value("memory") == "40.2" and value("swap") == "3.0"
    assert value("cpu_core_3") == "13.0" and value("load_1") == "0.5"
    assert value("disk_root") == "55.5" and value("disk_boot_firmware") == "20.0"
    assert value("disk_media_bob_s_disk") == "90.0"
    assert value("network_in") == "1200.5" and value("disk_write") == "4096.0"
    assert value("cpu_temperature") == "61.3" and value("battery") == "80.0"
    assert value("interval") == "1.0"
    assert (value("under_voltage"), value("freq_capped"), value("battery_charging")) == \
        ("ON", "OFF", "ON")
    assert cmps["cpu"]["name"] == "CPU" and cmps["disk_media_bob_s_disk"]["name"] == \
        f"Disk {ODD_MOUNT}"


@pytest.mark.parametrize("device_id", ["pi-1", "Pi.Kitchen_2", "a", "9--__..x", "X" * 64])
def test_odd_device_ids_and_names_give_valid_topics_and_entity_ids(device_id: str) -> None:
    message = announce(device_id, name="Living Room Pi ☕ \"quoted\"")
    topic = ha_discovery_topic(device_id)
    assert ha_schema.problems(topic, json.dumps(message).encode()) == []
    assert ha_node_id(device_id) == device_id.replace(".", "_")
    assert message["dev"]["name"] == "Living Room Pi ☕ \"quoted\""


def test_unique_ids_stay_the_same_when_the_machine_is_renamed() -> None:
    before, after = announce(name="kitchen"), announce(name="garage")
    assert [c["unique_id"] for c in before["cmps"].values()] == \
        [c["unique_id"] for c in after["cmps"].values()]
    assert before["cmps"]["cpu"]["unique_id"] == "fleetpulse_pi-1_cpu"
    assert before["cmps"]["cpu"]["default_entity_id"] == "sensor.fleetpulse_pi_1_cpu"
    assert before["dev"]["identifiers"] == after["dev"]["identifiers"]


@pytest.mark.parametrize(("interval_s", "expire"), [(0.1, MIN_EXPIRE_AFTER_S), (1.0, 10),
                                                     (5.0, 15), (60.0, 180),
                                                     (3600.0, 10800), (3.5, 11)])
def test_expire_after_is_three_readings_and_at_least_ten_seconds(interval_s: float,
                                                                  expire: int) -> None:
    assert expire_after_s(interval_s) == expire
    assert {c["expire_after"] for c in announce(interval_s=interval_s)["cmps"].values()} == \
        {expire}


def test_slug_and_device_model() -> None:
    assert slug("Pi.Kitchen--2") == "pi_kitchen_2" and slug("___") == "device"
    assert device_model("Raspberry Pi 4 Model B", "Debian", "aarch64") == \
        ("Raspberry Pi Ltd", "Raspberry Pi 4 Model B")
    assert device_model(None, "Debian 12", "x86_64") == (None, "Debian 12 (x86_64)")


def test_the_schema_checker_catches_what_ha_refuses() -> None:
    message = announce()
    cmps = message["cmps"]
    cmps["cpu_temperature"]["state_class"] = "total_increasing"
    cmps["network_in"]["unit_of_measurement"] = "bytes/s"
    cmps["memory"]["object_id"] = "x"
    cmps["load_1"]["default_entity_id"] = "sensor.Bad Id"
    cmps["swap"]["entity_category"] = "config"
    del cmps["cpu"]["unique_id"]
    found = ha_schema.problems(ha_discovery_topic("pi-1"), json.dumps(message).encode())
    assert len(found) == 7, found  # object_id: unknown and deprecated
    assert any("drops the entity" in p for p in found)
    assert ha_schema.problems("homeassistant/device/pi.1/config", b"{}") != []


def test_the_hubs_anomaly_alert_is_a_problem_sensor_on_its_retained_alert_topic() -> None:
    payload = pi_reading()
    message = discovery_message(
        device_id="pi-1", name="kitchen", model=None, sw_version=None, agent_version="0.1.0",
        metrics_topic="fp/pi-1/metrics", status_topic="fp/pi-1/status", interval_s=1.0,
        shape=shape_of(json.loads(payload)), anomaly_topic=alert_topic("fp", "pi-1", "anomaly"))
    assert ha_schema.problems(ha_discovery_topic("pi-1"), json.dumps(message).encode()) == []
    anomaly = message["cmps"]["anomaly"]
    assert anomaly["p"] == "binary_sensor" and anomaly["device_class"] == "problem"
    assert anomaly["state_topic"] == "fp/pi-1/alert/anomaly"
    assert "expire_after" not in anomaly  # alerts are rare: no silence means unavailable
    assert anomaly["unique_id"] == "fleetpulse_pi-1_anomaly"
    # What the hub publishes there: the open alert's JSON, then an empty retained message.
    opened = orjson.dumps(alert_payload(Change(
        "open", "pi-1", "anomaly", datetime(2026, 11, 30, tzinfo=UTC), None, 0.8, 0.9, 0.5,
        "unusual readings"), None))
    assert ha_schema.render(anomaly["value_template"], opened) == "ON"
    assert ha_schema.render(anomaly["value_template"], b"") == "OFF"
