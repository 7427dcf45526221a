"""Home Assistant's rules for MQTT discovery messages, written out from HA's documentation
and source, to check what the agent announces (agent/discovery.py) without running HA.

Sources (Home Assistant core, 2025-2026):
- homeassistant/components/mqtt/discovery.py: ``TOPIC_MATCHER`` (node and object ids
  ``[a-zA-Z0-9_-]+``); device discovery needs ``device``, ``origin`` and ``components``
  (abbreviated ``dev``, ``o``, ``cmps``), each component a ``platform`` (``p``) and, for an
  entity, a ``unique_id``; ``object_id`` is deprecated since 2025.10 for
  ``default_entity_id``.
- homeassistant/components/mqtt/schemas.py: the device-level options shared by every
  component (``SHARED_OPTIONS``), device info and origin keys (origin needs ``name``).
- homeassistant/components/sensor/const.py: ``DEVICE_CLASS_UNITS`` and
  ``DEVICE_CLASS_STATE_CLASSES`` (a state class a device class does not allow makes HA
  refuse the entity), for the device classes used here.
- the MQTT sensor and binary sensor pages: each platform's options.
- homeassistant/core.py: ``VALID_ENTITY_ID``.
- HA renders a ``value_template`` with Jinja2 and ``value_json`` = the parsed payload;
  an MQTT sensor takes the text ``None`` as unknown.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jinja2

TOPIC_MATCHER = re.compile(r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)"
                           r"?(?P<object_id>[a-zA-Z0-9_-]+)/config")
VALID_ENTITY_ID = re.compile(r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$")

DEVICE_LEVEL_KEYS = {
    "dev", "device", "o", "origin", "cmps", "components",
    # SHARED_OPTIONS and the device schema's own
    "availability", "availability_mode", "availability_template", "availability_topic",
    "command_topic", "encoding", "message_expiry_interval", "payload_available",
    "payload_not_available", "state_topic", "qos",
}
DEVICE_INFO_KEYS = {"identifiers", "connections", "manufacturer", "model", "model_id", "name",
                    "hw_version", "serial_number", "sw_version", "via_device",
                    "suggested_area", "configuration_url"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
COMMON_ENTITY_KEYS = {
    "p", "platform", "availability", "availability_mode", "availability_template",
    "availability_topic", "default_entity_id", "device_class", "enabled_by_default",
    "encoding", "entity_category", "entity_picture", "expire_after", "force_update", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "payload_available",
    "payload_not_available", "qos", "state_topic", "unique_id", "value_template",
}
PLATFORM_KEYS = {
    "sensor": COMMON_ENTITY_KEYS | {"last_reset_value_template", "options", "state_class",
                                    "suggested_display_precision", "unit_of_measurement"},
    "binary_sensor": COMMON_ENTITY_KEYS | {"off_delay", "payload_off", "payload_on"},
}
# sensor/const.py, for the device classes the agent uses (None: no device class).
SENSOR_UNITS: dict[str | None, set[str | None]] = {
    "temperature": {"°C", "°F", "K"},
    "data_rate": {"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "B/s", "kB/s", "MB/s", "GB/s",
                  "KiB/s", "MiB/s", "GiB/s"},
    "battery": {"%"},
    "duration": {"d", "h", "min", "s", "ms"},
}
SENSOR_STATE_CLASSES: dict[str | None, set[str]] = {
    None: {"measurement", "total", "total_increasing"},
    "temperature": {"measurement"},
    "data_rate": {"measurement"},
    "battery": {"measurement"},
    "duration": {"measurement", "total", "total_increasing"},
}
BINARY_SENSOR_DEVICE_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving",
    "occupancy", "opening", "plug", "power", "presence", "problem", "running", "safety",
    "smoke", "sound", "tamper", "update", "vibration", "window"}
# A sensor cannot be a "config" entity (HA: entity_category config is for settable ones).
ENTITY_CATEGORIES = {"sensor": {"diagnostic"}, "binary_sensor": {"diagnostic"}}


def problems(topic: str, payload: bytes) -> list[str]:
    """Return every way a device discovery message breaks HA's rules (empty: none)."""
    found: list[str] = []
    match = TOPIC_MATCHER.fullmatch(topic.split("/", 1)[1])
    if match is None or match["component"] != "device":
        return [f"{topic} is not a device discovery topic HA accepts"]
    message = json.loads(payload)
    found += [f"unknown device-level key {k!r}" for k in set(message) - DEVICE_LEVEL_KEYS]
    device, origin = message.get("dev"), message.get("o")
    if not isinstance(device, dict) or not (device.get("identifiers")
                                            or device.get("connections")):
        found.append("dev needs identifiers or connections")
    else:
        found += [f"unknown device key {k!r}" for k in set(device) - DEVICE_INFO_KEYS]
        if not all(isinstance(i, str) for i in device.get("identifiers", [])):
            found.append("identifiers must be strings")
    if not isinstance(origin, dict) or not isinstance(origin.get("name"), str):
        found.append("o needs a name")
    else:
        found += [f"unknown origin key {k!r}" for k in set(origin) - ORIGIN_KEYS]
    components = message.get("cmps")
    if not isinstance(components, dict) or not components:
        return [*found, "cmps must be a non-empty object"]
    unique_ids = [c.get("unique_id") for c in components.values()]
    if len(set(unique_ids)) != len(unique_ids):
        found.append("unique_ids repeat")
    entity_ids = [c.get("default_entity_id") for c in components.values()]
    if len(set(entity_ids)) != len(entity_ids):
        found.append("default_entity_ids repeat")
    for key, component in components.items():
        found += [f"{key}: {p}" for p in component_problems(component)]
    return found


def component_problems(component: dict[str, Any]) -> list[str]:
    platform = component.get("p")
    if platform not in PLATFORM_KEYS:
        return [f"platform {platform!r} is not one the agent should use"]
    found = [f"unknown {platform} key {k!r}" for k in set(component) - PLATFORM_KEYS[platform]]
    if "object_id" in component:
        found.append("object_id is deprecated: use default_entity_id")
    if not isinstance(component.get("unique_id"), str):
        found.append("no unique_id")
    entity_id = component.get("default_entity_id", "")
    if not (VALID_ENTITY_ID.match(entity_id) and entity_id.startswith(platform + ".")):
        found.append(f"default_entity_id {entity_id!r} is not a valid {platform} entity id")
    expire = component.get("expire_after")
    if expire is not None and not (isinstance(expire, int) and expire > 0):
        found.append(f"expire_after {expire!r} is not a positive whole number of seconds")
    category = component.get("entity_category")
    if category is not None and category not in ENTITY_CATEGORIES[platform]:
        found.append(f"entity_category {category!r} is not allowed for a {platform}")
    if not isinstance(component.get("value_template"), str):
        found.append("no value_template")
    device_class = component.get("device_class")
    if platform == "binary_sensor":
        if device_class is not None and device_class not in BINARY_SENSOR_DEVICE_CLASSES:
            found.append(f"binary_sensor device_class {device_class!r} does not exist")
        return found
    unit, state_class = component.get("unit_of_measurement"), component.get("state_class")
    if device_class not in SENSOR_STATE_CLASSES:
        found.append(f"sensor device_class {device_class!r} is not checked here")
        return found
    if state_class not in SENSOR_STATE_CLASSES[device_class]:
        found.append(f"state_class {state_class!r} is not allowed with device_class "
                     f"{device_class!r}: HA drops the entity")
    if device_class in SENSOR_UNITS and unit not in SENSOR_UNITS[device_class]:
        found.append(f"unit {unit!r} is not allowed with device_class {device_class!r}")
    return found


_JINJA = jinja2.Environment(undefined=jinja2.Undefined, autoescape=False)


def render(template: str, payload: bytes) -> str:
    """Render a value_template as HA does for a message: value, value_json."""
    try:
        value_json = json.loads(payload)
    except ValueError:  # HA leaves value_json undefined when the payload is not JSON
        value_json = jinja2.Undefined(name="value_json")
    return _JINJA.from_string(template).render(value=payload.decode(),
                                               value_json=value_json).strip()


def is_state(platform: str, text: str) -> bool:
    """Tell whether a rendered template is a state HA takes for this platform."""
    if text == "None":
        return True  # unknown
    if platform == "binary_sensor":
        return text in ("ON", "OFF")
    try:
        float(text)
    except ValueError:
        return False
    return True
