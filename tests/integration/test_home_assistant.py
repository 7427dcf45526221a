"""Home Assistant MQTT discovery (README "Home Assistant"), against a real Mosquitto running
the shipped mosquitto.conf and acl, with the agent as a process and a client standing in
for Home Assistant (connected, as HA would be, with an admin account).

Checked: the retained device discovery message parses and follows HA's rules
(tests/ha_schema.py); its state and availability topics are those the agent really
publishes, and every value_template renders a state from a real reading; it is sent again
after HA's birth message (not before the delay); expire_after follows an interval changed
remotely; turning discovery off removes the device; a device can write only its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.discovery import BIRTH_DELAY_S, expire_after_s
from tests import ha_schema
from tests.integration.test_security import NOT_AUTHORIZED, Client, ShippedBroker, new_device
from tests.integration.test_settings import add_admin, start_agent
from tests.integration.test_versions import start_broker
from tests.servers import wait_for

CONFIG = "homeassistant/device/dev-ha/config"


@pytest.fixture(scope="module")
def secure(work_root: Path) -> Iterator[ShippedBroker]:
    broker = start_broker(work_root / "ha-mqtt")
    yield broker
    broker.stop()


@pytest.fixture
def home_assistant(secure: ShippedBroker) -> Iterator[Client]:
    password = add_admin(secure, "homeassistant")
    client = Client(secure.port, "homeassistant", "homeassistant", password).connect()
    client.subscribe("homeassistant/#", "fleetpulse/+/metrics", "fleetpulse/+/status")
    yield client
    client.stop()


def payloads(client: Client, topic: str) -> list[bytes]:
    with client.lock:
        return [payload for t, payload in client.messages if t == topic]


def test_discovery_is_valid_points_at_real_readings_and_follows_ha_and_the_interval(
        secure: ShippedBroker, home_assistant: Client, tmp_path: Path) -> None:
    password = new_device(secure, "dev-ha")
    agent = start_agent(secure, tmp_path, "dev-ha", password, interval_s="1",
                        process_period_s="0", ha_discovery="true")
    try:
        wait_for(lambda: payloads(home_assistant, CONFIG), 30, "the discovery message")
        message = json.loads(payloads(home_assistant, CONFIG)[0])
        assert ha_schema.problems(CONFIG, payloads(home_assistant, CONFIG)[0]) == []
        # It points at what the agent really publishes.
        assert message["state_topic"] == "fleetpulse/dev-ha/metrics"
        assert message["availability_topic"] == "fleetpulse/dev-ha/status"
        wait_for(lambda: len(payloads(home_assistant, "fleetpulse/dev-ha/metrics")) >= 2, 20,
                 "readings")
        assert payloads(home_assistant, "fleetpulse/dev-ha/status")[-1] == b"online"
        reading = payloads(home_assistant, "fleetpulse/dev-ha/metrics")[-1]
        numbers = 0
        # Every entity reads the metrics topic but one: the hub's anomaly alert (retained
        # JSON while open, an empty retained message when it closes; no alert here: OFF).
        entities = dict(message["cmps"])
        anomaly = entities.pop("anomaly")
        assert anomaly["state_topic"] == "fleetpulse/dev-ha/alert/anomaly"
        assert ha_schema.render(anomaly["value_template"], b"") == "OFF"
        for key, component in entities.items():
            assert component.get("state_topic", message["state_topic"]) == \
                "fleetpulse/dev-ha/metrics"
            text = ha_schema.render(component["value_template"], reading)
            assert ha_schema.is_state(component["p"], text), (key, text)
            numbers += text != "None"
        assert numbers >= 8  # CPU, memory, disks, rates, interval: real values here
        assert {c["expire_after"] for c in entities.values()} == {expire_after_s(1)}
        # Retained: a client that subscribes later (HA after a restart) gets it too.
        # Another account: the broker makes the user name the client id, so a second
        # "homeassistant" connection would take over the first one.
        observer = add_admin(secure, "observer")
        late = Client(secure.port, "observer", "observer", observer)
        try:
            late.connect().subscribe(CONFIG)
            wait_for(lambda: late.messages, 10, "the retained discovery")
        finally:
            late.stop()

        # HA restarts: its birth message makes the agent announce again, after the delay.
        sent = len(payloads(home_assistant, CONFIG))
        born = time.monotonic()
        assert home_assistant.publish("homeassistant/status", b"online") == 0
        wait_for(lambda: len(payloads(home_assistant, CONFIG)) > sent, 30,
                 "the announcement after HA's birth")
        assert time.monotonic() - born >= BIRTH_DELAY_S - 0.5
        assert json.loads(payloads(home_assistant, CONFIG)[-1]) == message

        # The interval set remotely: expire_after follows.
        sent = len(payloads(home_assistant, CONFIG))
        assert home_assistant.publish("fleetpulse/dev-ha/set/interval_s", b"5") in (0, 16)
        wait_for(lambda: len(payloads(home_assistant, CONFIG)) > sent, 20,
                 "the announcement with the new interval")
        again = json.loads(payloads(home_assistant, CONFIG)[-1])
        expiries = {c["expire_after"] for k, c in again["cmps"].items() if k != "anomaly"}
        assert expiries == {expire_after_s(5)} == {15}

        # Discovery turned off: the agent removes the device from HA (empty, retained).
        agent.stop()
        agent = start_agent(secure, tmp_path, "dev-ha", password, interval_s="1",
                            process_period_s="0", ha_discovery="false")
        wait_for(lambda: payloads(home_assistant, CONFIG)[-1] == b"", 30, "the removal")
        late = Client(secure.port, "observer", "observer", observer)
        try:
            late.connect().subscribe(CONFIG, "fleetpulse/dev-ha/status")
            wait_for(lambda: late.messages, 10, "the retained status")
            assert CONFIG not in late.topics()  # nothing retained any more
        finally:
            late.stop()
    finally:
        agent.stop()
    log = agent.log()
    assert "Traceback" not in log and " ERROR " not in log
    assert "Announced this device to Home Assistant on homeassistant/device/dev-ha/config" \
        in log
    assert "Removed this device from Home Assistant" in log


def test_a_device_writes_only_its_own_discovery_and_not_has_status(
        secure: ShippedBroker, home_assistant: Client) -> None:
    password = new_device(secure, "dev-h2")
    device = Client(secure.port, "dev-h2", "dev-h2", password).connect()
    try:
        assert device.publish("homeassistant/device/dev-h2/config", b"") in (0, 16)
        for topic in ("homeassistant/device/dev-ha/config", "homeassistant/status",
                      "homeassistant/sensor/dev-h2/config"):
            assert device.publish(topic, b"{}") == NOT_AUTHORIZED, topic
    finally:
        device.stop()
