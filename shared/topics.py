"""Topic names. Every topic string in fleetpulse is made or parsed here.

Tree (as MQTT Explorer shows it)::

    <prefix>/<device_id>/metrics   one reading per interval, QoS 1, not retained
    <prefix>/<device_id>/status    "online" / "offline", retained (Last Will: "offline")
    <prefix>/<device_id>/meta      static facts as JSON, retained
    <prefix>/<device_id>/alert/<rule>   open alert as JSON, retained; empty when closed
    <prefix>/<device_id>/set       settings to change, one JSON document (hub, admins)
    <prefix>/<device_id>/set/<setting>  one setting to change, its JSON value (hub, admins)
    <prefix>/<device_id>/config    settings in effect, their source, the last refusal;
                                   retained, written by the device
    <prefix>/_hub/schema           what the hub reads (HubCapabilities), retained; no device
                                   id can be ``_hub`` (ids start with a letter or digit)

Home Assistant's topics (optional discovery, agent/discovery.py; HA's default prefix)::

    homeassistant/device/<node_id>/config   the device's discovery, retained
    homeassistant/status                    HA's "online" / "offline"
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

DEFAULT_PREFIX = "fleetpulse"
# What the hub subscribes to: config is the device's report of its remote settings.
Kind = Literal["metrics", "status", "meta", "config"]
KINDS: tuple[Kind, ...] = ("metrics", "status", "meta", "config")

HA_DISCOVERY_PREFIX = "homeassistant"  # HA's default; mosquitto/acl names it too
HA_STATUS_TOPIC = f"{HA_DISCOVERY_PREFIX}/status"
_HA_NODE_NOT_ALLOWED = re.compile(r"[^a-zA-Z0-9_-]")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def is_valid_device_id(device_id: str) -> bool:
    """Tell whether a device id is safe as one topic level (no wildcards, no slash)."""
    return bool(_DEVICE_ID.match(device_id))


def is_valid_prefix(prefix: str) -> bool:
    """Tell whether a topic prefix is usable (levels without wildcards, no leading '$')."""
    return bool(prefix) and not prefix.startswith("$") and all(
        level and "+" not in level and "#" not in level for level in prefix.split("/"))


def metrics_topic(prefix: str, device_id: str) -> str:
    return f"{prefix}/{device_id}/metrics"


def status_topic(prefix: str, device_id: str) -> str:
    return f"{prefix}/{device_id}/status"


def meta_topic(prefix: str, device_id: str) -> str:
    return f"{prefix}/{device_id}/meta"


def alert_topic(prefix: str, device_id: str, rule: str) -> str:
    return f"{prefix}/{device_id}/alert/{rule}"


def set_topic(prefix: str, device_id: str, setting: str | None = None) -> str:
    """Where the hub or an admin changes a device's settings (one, or a JSON document)."""
    base = f"{prefix}/{device_id}/set"
    return base if setting is None else f"{base}/{setting}"


def set_filters(prefix: str, device_id: str) -> list[str]:
    """Return the filters a device subscribes to for its own settings."""
    return [set_topic(prefix, device_id), set_topic(prefix, device_id, "+")]


class SetTopic(NamedTuple):
    setting: str | None  # None: the JSON document of several settings


def parse_set_topic(prefix: str, device_id: str, topic: str) -> SetTopic | None:
    """Tell whether ``topic`` is one of the device's set topics, and which setting."""
    base = set_topic(prefix, device_id)
    if topic == base:
        return SetTopic(None)
    if topic.startswith(base + "/") and "/" not in topic[len(base) + 1:]:
        return SetTopic(topic[len(base) + 1:])
    return None


def config_topic(prefix: str, device_id: str) -> str:
    """The device's retained report of the settings in effect."""
    return f"{prefix}/{device_id}/config"


def ha_node_id(device_id: str) -> str:
    """Return the device's node id in HA's discovery topic, which allows [a-zA-Z0-9_-]
    only (HA's TOPIC_MATCHER): a device id's '.' becomes '_'."""
    return _HA_NODE_NOT_ALLOWED.sub("_", device_id)


def ha_discovery_topic(device_id: str) -> str:
    """Where the device's retained Home Assistant discovery message goes."""
    return f"{HA_DISCOVERY_PREFIX}/device/{ha_node_id(device_id)}/config"


def hub_schema_topic(prefix: str) -> str:
    """The hub's retained capability message: which message versions and fields it reads."""
    return f"{prefix}/_hub/schema"


def hub_subscriptions(prefix: str, share_group: str | None = None) -> list[str]:
    """Return the filters the hub subscribes to; with a group, as MQTT v5 shared subscriptions."""
    filters = [f"{prefix}/+/{kind}" for kind in KINDS]
    if share_group:
        return [f"$share/{share_group}/{f}" for f in filters]
    return filters


class ParsedTopic(NamedTuple):
    device_id: str
    kind: str


def parse_topic(prefix: str, topic: str) -> ParsedTopic | None:
    """Split ``<prefix>/<device_id>/<kind>``; return None for any other shape."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    rest = topic[len(head):].split("/")
    if len(rest) != 2:
        return None
    return ParsedTopic(rest[0], rest[1])
