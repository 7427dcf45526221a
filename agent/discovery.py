"""Home Assistant MQTT discovery: announce this device and its sensors to HA (optional).

Off by default (setting ``ha_discovery``). When on, the agent publishes one retained
device-based discovery message (HA 2024.11+) on ``homeassistant/device/<node_id>/config``:
``dev`` (the device), ``o`` (origin: fleetpulse), ``cmps`` (one component per sensor). Every
sensor reads the existing metrics topic through a ``value_template``: nothing is published
twice. Availability comes from the device's own retained status topic (``online`` /
``offline``, the Last Will), and ``expire_after`` turns a sensor unavailable after a few
missed readings, sized to the interval (:func:`expire_after_s`).

Which sensors exist follows the reading: a disk sensor per partition, temperatures,
battery and the Pi's throttling flags only where the machine has them (:func:`shape_of`).

Ids (HA's rules, homeassistant/components/mqtt/discovery.py and helpers/entity.py):
the discovery topic's node id allows ``[a-zA-Z0-9_-]`` only (``ha_discovery_topic`` in
shared/topics.py: a device id's ``.`` becomes ``_``); ``unique_id`` is
``fleetpulse_<device_id>_<component>``, from the device id, so a rename of the machine
(its host name is the device's name in HA) keeps every entity and its history;
``default_entity_id`` (``object_id`` is deprecated since HA 2025.10) is
``<platform>.fleetpulse_<slug>_<component>``, a valid entity id whatever the device id.

Pure: everything here. The agent (agent/main.py) publishes it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

ORIGIN_NAME = "fleetpulse"
MIN_EXPIRE_AFTER_S = 10
EXPIRE_AFTER_READINGS = 3  # missed readings before HA shows a sensor as unavailable
# HA drops discovery it receives while it is still starting; it publishes "online" on
# homeassistant/status once ready, and then the agent announces again after this delay.
BIRTH_DELAY_S = 5.0

_NOT_ID = re.compile(r"[^a-z0-9]+")


class Shape(NamedTuple):
    """What the machine has: which sensors to announce."""

    cores: int
    mountpoints: tuple[str, ...]
    swap: bool
    cpu_temperature: bool
    gpu_temperature: bool
    battery: bool
    throttling: bool


def shape_of(reading: Mapping[str, Any]) -> Shape:
    """Return what a reading (a metrics message) shows this machine has."""
    cpu, memory, sensors = reading["cpu"], reading["memory"], reading["sensors"]
    return Shape(
        cores=len(cpu["per_core_percent"]),
        mountpoints=tuple(sorted(p["mountpoint"] for p in reading["disk"]["partitions"])),
        swap=bool(memory.get("swap_total_bytes")),
        cpu_temperature=sensors["cpu_celsius"] is not None,
        gpu_temperature=sensors["gpu_celsius"] is not None,
        battery=sensors["battery_percent"] is not None,
        throttling=reading["throttling"]["raw"] is not None)


def slug(text: str) -> str:
    """Return ``text`` as one part of an entity id: lower case, digits, single '_'."""
    return _NOT_ID.sub("_", text.lower()).strip("_") or "device"


def expire_after_s(interval_s: float) -> int:
    """Seconds without a reading after which HA shows a sensor as unavailable."""
    return max(MIN_EXPIRE_AFTER_S, math.ceil(EXPIRE_AFTER_READINGS * interval_s))


def _value(path: str) -> str:
    # A null renders as "None", which HA's MQTT sensor takes as "unknown".
    return "{{ value_json." + path + " }}"


def _flag(path: str) -> str:
    # binary_sensor: HA's default payloads are ON / OFF; "None" means unknown.
    return ("{% set v = value_json." + path + " %}"
            "{% if v is none %}None{% elif v %}ON{% else %}OFF{% endif %}")


def _partition(mountpoint: str) -> str:
    quoted = mountpoint.replace("\\", "\\\\").replace("'", "\\'")
    return ("{{ value_json.disk.partitions | selectattr('mountpoint', 'eq', '" + quoted
            + "') | map(attribute='percent') | first | default(None) }}")


def _sensor(name: str, template: str, unit: str | None = None,
            device_class: str | None = None, precision: int | None = None,
            **extra: Any) -> dict[str, Any]:
    component: dict[str, Any] = {"p": "sensor", "name": name, "value_template": template,
                                 "state_class": "measurement"}
    if unit is not None:
        component["unit_of_measurement"] = unit
    if device_class is not None:
        component["device_class"] = device_class
    if precision is not None:
        component["suggested_display_precision"] = precision
    component.update(extra)
    return component


def _binary(name: str, path: str, device_class: str, **extra: Any) -> dict[str, Any]:
    return {"p": "binary_sensor", "name": name, "value_template": _flag(path),
            "device_class": device_class, **extra}


def components(shape: Shape) -> dict[str, dict[str, Any]]:
    """Return the components by id (before ids and expiry are added)."""
    found: dict[str, dict[str, Any]] = {
        "cpu": _sensor("CPU", _value("cpu.percent"), "%", precision=1, icon="mdi:cpu-64-bit"),
        "load_1": _sensor("Load (1 min)", _value("cpu.load_1"), precision=2),
        "memory": _sensor("Memory", _value("memory.percent"), "%", precision=1,
                          icon="mdi:memory"),
        "network_in": _sensor("Network in", _value("network.bytes_recv_per_s"), "B/s",
                              "data_rate", 0),
        "network_out": _sensor("Network out", _value("network.bytes_sent_per_s"), "B/s",
                               "data_rate", 0),
        "disk_read": _sensor("Disk read", _value("disk.read_bytes_per_s"), "B/s",
                             "data_rate", 0),
        "disk_write": _sensor("Disk write", _value("disk.write_bytes_per_s"), "B/s",
                              "data_rate", 0),
        "interval": _sensor("Reading interval", _value("interval_s"), "s", "duration", 1,
                            entity_category="diagnostic"),
    }
    # Per core: off until enabled in HA (a 64-core server would add 64 entities).
    for core in range(shape.cores):
        found[f"cpu_core_{core}"] = _sensor(
            f"CPU core {core}", "{{ value_json.cpu.per_core_percent[" + str(core)
            + "] | default(None) }}", "%", precision=1, enabled_by_default=False)
    if shape.swap:
        found["swap"] = _sensor("Swap", _value("memory.swap_percent"), "%", precision=1)
    for mountpoint in shape.mountpoints:
        key = "disk_" + (slug(mountpoint) if mountpoint != "/" else "root")
        while key in found:  # "/a-b" and "/a_b" slug alike
            key += "_"
        found[key] = _sensor(f"Disk {mountpoint}", _partition(mountpoint), "%", precision=1,
                             icon="mdi:harddisk")
    if shape.cpu_temperature:
        found["cpu_temperature"] = _sensor("CPU temperature", _value("sensors.cpu_celsius"),
                                           "°C", "temperature", 1)
    if shape.gpu_temperature:
        found["gpu_temperature"] = _sensor("GPU temperature", _value("sensors.gpu_celsius"),
                                           "°C", "temperature", 1)
    if shape.battery:
        found["battery"] = _sensor("Battery", _value("sensors.battery_percent"), "%",
                                   "battery", 0)
        found["battery_charging"] = _binary("Battery charging", "sensors.battery_charging",
                                            "battery_charging")
    if shape.throttling:
        # Raspberry Pi firmware flags (agent/pi.py): "problem" means on = something is wrong.
        for key, name in (("under_voltage", "Under-voltage"),
                          ("freq_capped", "Frequency capped"),
                          ("throttled", "Throttled"),
                          ("soft_temp_limit", "Soft temperature limit")):
            found[key] = _binary(name, f"throttling.{key}_now", "problem")
            found[f"{key}_occurred"] = _binary(f"{name} since boot",
                                               f"throttling.{key}_occurred", "problem",
                                               entity_category="diagnostic")
    return found


def anomaly_component(alert_topic: str) -> dict[str, Any]:
    """The hub's anomaly alert for this device, as a binary sensor.

    The hub publishes an open ``anomaly`` alert retained on ``alert_topic`` (JSON) and clears
    it with an empty retained message when it closes: any payload is ON, an empty one OFF.
    Alerts are rare, so the entity has no ``expire_after``; it reads "unknown" until the hub
    has opened (or closed) the device's first anomaly alert.
    """
    return {"p": "binary_sensor", "name": "Anomaly", "device_class": "problem",
            "state_topic": alert_topic, "value_template": "{{ 'ON' if value else 'OFF' }}",
            "icon": "mdi:chart-bell-curve"}


def discovery_message(*, device_id: str, name: str, model: str | None,
                      sw_version: str | None, agent_version: str, metrics_topic: str,
                      status_topic: str, interval_s: float, shape: Shape,
                      manufacturer: str | None = None,
                      anomaly_topic: str | None = None) -> dict[str, Any]:
    """Return the device-based discovery message (``homeassistant/device/<node>/config``).

    Args:
        name: the device's name in HA (the machine's host name; any text).
        model / sw_version / manufacturer: shown on HA's device page.
        anomaly_topic: the hub's retained ``anomaly`` alert topic of this device, read by
            an "Anomaly" binary sensor (:func:`anomaly_component`).
    """
    entity_prefix = f"fleetpulse_{slug(device_id)}"
    expire = expire_after_s(interval_s)
    cmps: dict[str, dict[str, Any]] = {}
    for key, component in components(shape).items():
        component["unique_id"] = f"fleetpulse_{device_id}_{key}"
        component["default_entity_id"] = f"{component['p']}.{entity_prefix}_{key}"
        component["expire_after"] = expire
        cmps[key] = component
    if anomaly_topic is not None:
        cmps["anomaly"] = {**anomaly_component(anomaly_topic),
                           "unique_id": f"fleetpulse_{device_id}_anomaly",
                           "default_entity_id": f"binary_sensor.{entity_prefix}_anomaly"}
    device: dict[str, Any] = {"identifiers": [f"fleetpulse_{device_id}"], "name": name}
    for field, value in (("manufacturer", manufacturer), ("model", model),
                         ("sw_version", sw_version)):
        if value:
            device[field] = value
    return {
        "dev": device,
        "o": {"name": ORIGIN_NAME, "sw_version": agent_version},
        "cmps": cmps,
        # Shared by every component (HA's SHARED_OPTIONS).
        "state_topic": metrics_topic,
        "availability_topic": status_topic,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
    }


def device_model(pi_model: str | None, os: str, architecture: str) -> tuple[str | None, str]:
    """Return (manufacturer, model) for HA's device page."""
    if pi_model:
        return "Raspberry Pi Ltd", pi_model
    return None, f"{os} ({architecture})" if os else architecture
