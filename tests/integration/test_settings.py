"""Settings changed remotely (README "Settings changed remotely"), against a real Mosquitto
running the shipped mosquitto.conf and acl, with the agent as a process.

Who may set: the hub's account and admins (``fleetpulse-hub add-admin``) may publish on
``fleetpulse/<id>/set[/<setting>]``; a device may not, for another device nor for itself;
anonymous clients cannot connect. What the agent does: applies a good set at its next tick,
refuses a bad one whole with a reason on its retained ``config``, keeps what it applied
across restarts, and never re-applies a retained set at a reconnect.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import processes
from tests.integration.test_security import (
    HUB_PASSWORD,
    HUB_USERNAME,
    NOT_AUTHORIZED,
    REPO,
    Client,
    ShippedBroker,
    hub_cli,
    new_device,
)
from tests.integration.test_versions import start_broker
from tests.processes import Process
from tests.servers import wait_for

OK = (0, 16)  # 16: "no matching subscribers", a success (MQTT 5.0, 3.4.2.1)


@pytest.fixture(scope="module")
def secure(work_root: Path) -> Iterator[ShippedBroker]:
    broker = start_broker(work_root / "settings-mqtt")
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def admin_password(secure: ShippedBroker) -> str:
    return add_admin(secure, "setter")


@pytest.fixture
def hub_client(secure: ShippedBroker) -> Iterator[Client]:
    client = Client(secure.port, HUB_USERNAME, HUB_USERNAME, HUB_PASSWORD).connect()
    client.subscribe("fleetpulse/+/config", "fleetpulse/+/metrics")
    yield client
    client.stop()


def configs(client: Client, device_id: str) -> list[dict[str, Any]]:
    with client.lock:
        return [json.loads(payload) for topic, payload in client.messages
                if topic == f"fleetpulse/{device_id}/config" and payload]


def readings(client: Client, device_id: str) -> list[dict[str, Any]]:
    with client.lock:
        return [json.loads(payload) for topic, payload in client.messages
                if topic == f"fleetpulse/{device_id}/metrics"]


def latest_config(client: Client, device_id: str) -> dict[str, Any] | None:
    found = configs(client, device_id)
    return found[-1] if found else None


def wait_config(client: Client, device_id: str, what: str, condition: Any,
                timeout_s: float = 20) -> dict[str, Any]:
    def check() -> bool:
        config = latest_config(client, device_id)
        return config is not None and bool(condition(config))
    wait_for(check, timeout_s, what)
    config = latest_config(client, device_id)
    assert config is not None
    return config


def add_admin(broker: ShippedBroker, name: str) -> str:
    result = hub_cli("add-admin", name, "--password-file", str(broker.password_file),
                     "--reload-pid", str(broker.pid))
    assert result.returncode == 0, result.stderr
    assert "fleetpulse/<device_id>/set/interval_s" in result.stderr
    return str(tomllib.loads(result.stdout)["password"])


def start_agent(broker: ShippedBroker, workdir: Path, device_id: str, password: str,
                **settings: str) -> Process:
    return processes.agent(workdir, broker_url=f"mqtt://127.0.0.1:{broker.port}",
                           prefix="fleetpulse", device_id=device_id,
                           broker_username=device_id, broker_password=password,
                           **settings).start()


# --- who may set ------------------------------------------------------------------------------
def test_hub_and_admin_may_set_and_a_device_may_not_set_another_nor_itself(
        secure: ShippedBroker) -> None:
    password_a = new_device(secure, "dev-a")
    admin_password = add_admin(secure, "ops")
    device = Client(secure.port, "dev-a", "dev-a", password_a).connect()
    hub = Client(secure.port, HUB_USERNAME, HUB_USERNAME, HUB_PASSWORD).connect()
    admin = Client(secure.port, "ops", "ops", admin_password).connect()
    try:
        # A device reads its own set topics only. Mosquitto 2.0 grants any subscription and
        # checks read access per message: what matters is what is delivered (below).
        device.subscribe("fleetpulse/dev-a/set", "fleetpulse/dev-a/set/+",
                         "fleetpulse/dev-b/set", "fleetpulse/dev-b/set/+")
        # It writes its own config, not another's, and no set topic at all.
        assert device.publish("fleetpulse/dev-a/config", b"{}") in OK
        for topic in ("fleetpulse/dev-b/set", "fleetpulse/dev-b/set/interval_s",
                      "fleetpulse/dev-a/set", "fleetpulse/dev-a/set/interval_s",
                      "fleetpulse/dev-b/config"):
            assert device.publish(topic, b"5") == NOT_AUTHORIZED, topic
        # The hub and the admin may set any device; the device receives its own sets only.
        assert hub.publish("fleetpulse/dev-b/set/interval_s", b"9") in OK
        assert hub.publish("fleetpulse/dev-a/set/interval_s", b"2") in OK
        assert admin.publish("fleetpulse/dev-a/set", b'{"interval_s": 3}') in OK
        wait_for(lambda: len(device.messages) == 2, 10, "both sets at the device")
        assert device.messages == [("fleetpulse/dev-a/set/interval_s", b"2"),
                                   ("fleetpulse/dev-a/set", b'{"interval_s": 3}')]
        # The admin reads the devices' reports but writes nothing else.
        admin.subscribe("fleetpulse/#")
        assert admin.publish("fleetpulse/dev-a/metrics", b"forged") == NOT_AUTHORIZED
        assert admin.publish("fleetpulse/dev-a/config", b"forged") == NOT_AUTHORIZED
    finally:
        for client in (device, hub, admin):
            client.stop()
    anonymous = Client(secure.port, "anon-setter").connect(expect_success=False)
    anonymous.stop()
    assert anonymous.connack == NOT_AUTHORIZED


def test_add_admin_refuses_a_devices_name_and_add_device_an_admins(
        secure: ShippedBroker) -> None:
    new_device(secure, "dev-n")
    result = hub_cli("add-admin", "dev-n", "--password-file", str(secure.password_file))
    assert result.returncode == 1 and "already a device's account" in result.stderr
    add_admin(secure, "ops2")
    result = hub_cli("add-device", "ops2", "--password-file", str(secure.password_file))
    assert result.returncode == 1 and "is an admin account" in result.stderr
    assert "Traceback" not in result.stderr


# --- what the agent does ----------------------------------------------------------------------
def test_agent_applies_a_set_refuses_bad_ones_and_keeps_it_across_a_restart(
        secure: ShippedBroker, hub_client: Client, admin_password: str,
        tmp_path: Path) -> None:
    password = new_device(secure, "dev-s")
    # The broker makes the user name the client id: the hub's name is taken by hub_client.
    hub = Client(secure.port, "setter", "setter", admin_password).connect()
    agent = start_agent(secure, tmp_path, "dev-s", password, interval_s="1",
                        process_period_s="0")
    try:
        first = wait_config(hub_client, "dev-s", "the first config report",
                            lambda c: c["settings"]["interval_s"] == 1.0)
        assert first["source"] == {"interval_s": "local", "process_period_s": "local",
                                   "process_top_n": "local"}
        assert first["settings"]["process_period_s"] == 0 and first["last_refusal"] is None
        assert first["bounds"]["interval_s"] == {"min": 0.1, "max": 3600.0,
                                                 "zero_is_off": False, "type": "number"}

        assert hub.publish("fleetpulse/dev-s/set/interval_s", b"0.25") in OK
        config = wait_config(hub_client, "dev-s", "interval 0.25",
                             lambda c: c["settings"]["interval_s"] == 0.25)
        assert config["source"]["interval_s"] == "remote"
        # The readings follow at once, without a restart, and say so.
        wait_for(lambda: [r["interval_s"] for r in readings(hub_client, "dev-s")][-4:]
                 == [0.25] * 4, 20, "four readings at 0.25 s")

        # One bad field refuses the whole document.
        assert hub.publish("fleetpulse/dev-s/set",
                           b'{"interval_s": 0.5, "process_top_n": 99}') in OK
        config = wait_config(hub_client, "dev-s", "the refusal",
                             lambda c: c["last_refusal"] is not None)
        assert "process_top_n: 99 is out of bounds (from 1 to 50)" in \
            config["last_refusal"]["reason"]
        assert config["last_refusal"]["topic"] == "fleetpulse/dev-s/set"
        assert config["settings"]["interval_s"] == 0.25
        assert config["settings"]["process_top_n"] == 10
        for topic, payload, reason in [
                ("fleetpulse/dev-s/set/interval_s", b"fast", "not JSON"),
                ("fleetpulse/dev-s/set/interval_s", b"0.01", "out of bounds"),
                ("fleetpulse/dev-s/set/interval_s", b'"5"', "is not a number"),
                ("fleetpulse/dev-s/set/colour", b"5", "unknown setting 'colour'"),
                ("fleetpulse/dev-s/set", b"[1]", "not a JSON object")]:
            assert hub.publish(topic, payload) in OK
            wait_config(hub_client, "dev-s", f"refusal of {payload!r} on {topic}",
                        lambda c, p=payload.decode(), t=topic: c["last_refusal"]["payload"] == p
                        and c["last_refusal"]["topic"] == t)
            config = latest_config(hub_client, "dev-s")
            assert config is not None and reason in config["last_refusal"]["reason"]
            assert config["settings"]["interval_s"] == 0.25

        # Kept across a restart: it wins over FLEETPULSE_INTERVAL_S=1.
        agent.stop()
        before = len(configs(hub_client, "dev-s"))
        agent = start_agent(secure, tmp_path, "dev-s", password, interval_s="1",
                            process_period_s="0")
        config = wait_config(hub_client, "dev-s", "the report after the restart",
                             lambda c: len(configs(hub_client, "dev-s")) > before)
        assert config["settings"]["interval_s"] == 0.25
        assert config["source"]["interval_s"] == "remote"
        assert "colour" not in json.dumps(config["settings"])

        # null goes back to the local value.
        assert hub.publish("fleetpulse/dev-s/set/interval_s", b"null") in OK
        config = wait_config(hub_client, "dev-s", "back to the local value",
                             lambda c: c["source"]["interval_s"] == "local")
        assert config["settings"]["interval_s"] == 1.0
    finally:
        agent.stop()
        hub.stop()
    log = agent.log()
    assert "Traceback" not in log
    assert "Settings changed on fleetpulse/dev-s/set/interval_s: interval_s 1 -> 0.25 (remote)" \
        in log
    assert (tmp_path / "agent-dev-s" / "remote-settings.json").is_file()


def test_a_retained_set_applies_once_and_not_again_after_a_reconnect(
        secure: ShippedBroker, hub_client: Client, admin_password: str,
        tmp_path: Path) -> None:
    password = new_device(secure, "dev-r1")
    hub = Client(secure.port, "setter", "setter", admin_password).connect()
    agent = start_agent(secure, tmp_path, "dev-r1", password, interval_s="0.5",
                        process_period_s="0")
    try:
        wait_config(hub_client, "dev-r1", "the first report", lambda c: True)
        # Published retained while the agent is connected (MQTT Explorer's "retain"): applied.
        mid = hub.paho.publish("fleetpulse/dev-r1/set/interval_s", b"2", qos=1, retain=True).mid
        wait_for(lambda: mid in hub.pubacks, 10, "PUBACK")
        wait_config(hub_client, "dev-r1", "interval 2", lambda c: c["settings"]["interval_s"] == 2)
        # A later change, not retained.
        assert hub.publish("fleetpulse/dev-r1/set", b'{"interval_s": 0.3}') in OK
        wait_config(hub_client, "dev-r1", "interval 0.3",
                    lambda c: c["settings"]["interval_s"] == 0.3)
        # Restart: the broker still holds the retained 2, but the agent does not take it.
        agent.stop()
        seen = len(readings(hub_client, "dev-r1"))
        agent = start_agent(secure, tmp_path, "dev-r1", password, interval_s="0.5",
                            process_period_s="0")
        wait_for(lambda: len(readings(hub_client, "dev-r1")) >= seen + 8, 30,
                 "eight readings after the restart")
        assert [r["interval_s"] for r in readings(hub_client, "dev-r1")[seen:]] == \
            [0.3] * (len(readings(hub_client, "dev-r1")) - seen)
        config = latest_config(hub_client, "dev-r1")
        assert config is not None and config["settings"]["interval_s"] == 0.3
    finally:
        agent.stop()
        # Clear the retained set, as an operator would.
        hub.paho.publish("fleetpulse/dev-r1/set/interval_s", b"", qos=1, retain=True)
        hub.stop()
    assert "Traceback" not in agent.log()


def test_agent_with_an_acl_from_before_settings_carries_on(
        private_dir: Path, tmp_path: Path) -> None:
    acl = "".join(line for line in (REPO / "mosquitto/acl").read_text().splitlines(True)
                  if "/set" not in line and "/config" not in line)
    broker = start_broker(private_dir / "old-acl", acl)
    hub = Client(broker.port, HUB_USERNAME, HUB_USERNAME, HUB_PASSWORD)
    agent: Process | None = None
    try:
        hub.connect().subscribe("fleetpulse/+/metrics", "fleetpulse/+/config")
        password = new_device(broker, "dev-o")
        agent = start_agent(broker, tmp_path, "dev-o", password, interval_s="0.2",
                            process_period_s="0")
        wait_for(lambda: hub.topics().count("fleetpulse/dev-o/metrics") >= 3, 30, "readings")
        assert agent is not None
        wait_for(lambda: "refused this device's settings report" in agent.log(), 10,
                 "the one line about the refused report")
    finally:
        if agent is not None:
            agent.stop()
        hub.stop()
        broker.stop()
    log = agent.log()
    assert "fleetpulse/dev-o/config" not in hub.topics()
    assert log.count("refused this device's settings report") == 1
    assert "Traceback" not in log and " ERROR " not in log


def test_a_long_interval_set_shorter_applies_at_once_and_turns_process_scans_on(
        secure: ShippedBroker, hub_client: Client, admin_password: str,
        tmp_path: Path) -> None:
    password = new_device(secure, "dev-l")
    setter = Client(secure.port, "setter", "setter", admin_password).connect()
    agent = start_agent(secure, tmp_path, "dev-l", password, interval_s="600",
                        process_period_s="0", log_level="DEBUG")
    try:
        wait_config(hub_client, "dev-l", "the first report", lambda c: True)
        wait_for(lambda: readings(hub_client, "dev-l"), 10, "the first reading, 1 s in")
        before = len(readings(hub_client, "dev-l"))
        assert setter.publish("fleetpulse/dev-l/set",
                              b'{"interval_s": 0.5, "process_period_s": 1}') in OK
        # The loop wakes at least every 10 s while idle (shared/mqtt.py IDLE_SERVICE_S),
        # reads the set, and counts the next reading from the last one: at once here.
        wait_for(lambda: len(readings(hub_client, "dev-l")) >= before + 4, 20,
                 "readings at 0.5 s, long before the 600 s tick")
        assert {r["interval_s"] for r in readings(hub_client, "dev-l")[before:]} == {0.5}
        # The process thread, off at start, scans every second now.
        wait_for(lambda: agent.log().count("process scan") >= 2, 20, "process scans")
    finally:
        agent.stop()
        setter.stop()
    assert "Traceback" not in agent.log()
    # Every PUBACK was read in time, although the loop slept up to 10 s at a time.
    assert "not acknowledged" not in agent.log()
