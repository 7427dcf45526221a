"""Neighbouring versions interoperate in either upgrade order (README "Versions and upgrades").

Real Mosquitto running the shipped configuration (accounts, ACL), real PostgreSQL, the
agent and the hub as processes. The "old" side is simulated honestly by what it does on
the wire: an old hub publishes no capability message (here: the broker refuses it, as an
ACL from before it does), an old agent sends no optional field (the same reading without
``clock_synced``, published on the device's own account).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from hub.credentials import HUB_USERNAME, add_device, hash_password, set_user
from shared.schema import METRICS_OPTIONAL_FIELDS, MetricsV1
from tests import processes
from tests.integration.test_security import HUB_PASSWORD, REPO, Client, ShippedBroker
from tests.processes import Process, query
from tests.servers import wait_for

V1_KEYS = set(MetricsV1.__annotations__) - set(METRICS_OPTIONAL_FIELDS)
SCHEMA_TOPIC = "fleetpulse/_hub/schema"


def old_acl() -> str:
    """The shipped ACL without the capability topic: the ACL of the first release."""
    return "".join(line for line in (REPO / "mosquitto/acl").read_text().splitlines(True)
                   if "_hub/schema" not in line)


def start_broker(workdir: Path, acl: str | None = None) -> ShippedBroker:
    broker = ShippedBroker(workdir)
    if acl is not None:
        broker.acl_file.write_text(acl)
    broker.password_file.write_text(set_user("", HUB_USERNAME, hash_password(
        HUB_PASSWORD, os.urandom(12))))
    return broker.start()


@pytest.fixture
def new_acl_broker(private_dir: Path) -> Iterator[ShippedBroker]:
    broker = start_broker(private_dir / "mqtt")
    yield broker
    broker.stop()


@pytest.fixture
def old_acl_broker(private_dir: Path) -> Iterator[ShippedBroker]:
    broker = start_broker(private_dir / "mqtt", old_acl())
    yield broker
    broker.stop()


def run_hub(workdir: Path, broker: ShippedBroker, db_url: str) -> Process:
    return processes.hub(workdir, broker_url=f"mqtt://127.0.0.1:{broker.port}", db_url=db_url,
                         prefix="fleetpulse", broker_username=HUB_USERNAME,
                         broker_password=HUB_PASSWORD, batch_max_age_s="0.2")


def run_agent(workdir: Path, broker: ShippedBroker, device_id: str,
              password: str | None = None) -> Process:
    if password is None:
        password = new_device(broker, device_id)
    return processes.agent(workdir, broker_url=f"mqtt://127.0.0.1:{broker.port}",
                           prefix="fleetpulse", device_id=device_id,
                           broker_username=device_id, broker_password=password,
                           interval_s="0.25")


def new_device(broker: ShippedBroker, device_id: str) -> str:
    password = add_device(broker.password_file, device_id)
    broker.reload()
    return password


def watcher(broker: ShippedBroker, device_id: str) -> Client:
    """A client on the hub's account that records the agent's readings as sent."""
    return Client(broker.port, "watcher", HUB_USERNAME, HUB_PASSWORD).connect().subscribe(
        f"fleetpulse/{device_id}/metrics")


def sent(client: Client) -> list[dict[str, object]]:
    with client.lock:
        return [orjson.loads(payload) for _, payload in client.messages]


def test_new_agent_started_before_a_new_hub_sends_clock_synced_once_the_hub_says_it_reads_it(
        tmp_path: Path, new_acl_broker: ShippedBroker, db_url: str) -> None:
    # No hub yet, so no capability message: a client on the hub's account, in the hub's
    # persistent session, records what the agent sends; the hub takes the session over.
    before = Client(new_acl_broker.port, HUB_USERNAME, HUB_USERNAME, HUB_PASSWORD,
                    session_expiry_s=3600).connect().subscribe("fleetpulse/+/metrics")
    agent = run_agent(tmp_path, new_acl_broker, "pi-new")
    hub = run_hub(tmp_path, new_acl_broker, db_url)
    try:
        agent.start()
        wait_for(lambda: len(sent(before)) >= 4, 30, "readings before any hub")
        before.stop()  # the broker queues the next readings in the session for the hub
        early = sent(before)
        assert all(set(r) == V1_KEYS for r in early)  # no hub: plain version 1
        hub.start()
        wait_for(lambda: "The hub reads the optional fields: clock_synced" in agent.log(), 30,
                 "the agent to hear the hub's capability message")
        wait_for(lambda: query(db_url, "select count(*) from metrics where clock_synced is "
                               "not null")[0][0] >= 4, 30, "readings that carry clock_synced")
        # Retained, and readable on any device's account (the shipped ACL's pattern line).
        reader = Client(new_acl_broker.port, "pi-reader", "pi-reader",
                        new_device(new_acl_broker, "pi-reader")).connect()
        reader.subscribe(SCHEMA_TOPIC)
        wait_for(lambda: SCHEMA_TOPIC in reader.topics(), 10, "the retained capabilities")
        reader.stop()
        capability = orjson.loads(dict(reader.messages)[SCHEMA_TOPIC])
        assert capability["metrics_optional_fields"] == ["clock_synced", "processes"]
        assert capability["metrics_versions"] == [1]
    finally:
        agent.stop()
        hub.stop()
    assert query(db_url, "select count(*) from quarantine") == [(0,)]
    rows = query(db_url, "select seq, clock_synced is not null from metrics order by seq")
    seqs = [seq for seq, _ in rows]
    # One session, no gap: the hub stored every reading the early client did not take.
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert seqs[0] <= max(int(str(r["seq"])) for r in early) + 1
    # Version 1 until the capability message arrived, then clock_synced in every reading.
    flags = [has for _, has in rows]
    assert True in flags and all(flags[flags.index(True):]), flags
    hub_log = hub.log()
    assert "capability" not in hub_log and "Traceback" not in hub_log
    assert "Traceback" not in agent.log() and "ERROR" not in agent.log()
    # Kept for the next start, so its first readings (before it connects) carry the field.
    assert (tmp_path / "agent-pi-new" / "hub-reads").read_text() == "clock_synced\nprocesses\n"


def test_with_an_acl_from_before_the_capability_message_everything_is_version_1(
        tmp_path: Path, old_acl_broker: ShippedBroker, db_url: str) -> None:
    hub = run_hub(tmp_path, old_acl_broker, db_url)
    agent = run_agent(tmp_path, old_acl_broker, "pi-old-acl")
    try:
        hub.start()
        processes.wait_hub_subscribed(hub)
        wait_for(lambda: "refused the hub's capability message" in hub.log(), 20,
                 "the hub's warning")
        agent.start()
        processes.wait_rows(db_url, 8)
    finally:
        agent.stop()
        hub.stop()
    hub_log, agent_log = hub.log(), agent.log()
    warnings = [line for line in hub_log.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "capability message" in warnings[0], hub_log
    assert "topic write fleetpulse/_hub/schema" in warnings[0]
    # The agent heard nothing: it sends version 1, which the strict hub stores.
    assert "The hub reads" not in agent_log
    assert "ERROR" not in agent_log and "Traceback" not in agent_log
    assert query(db_url, "select count(*) from quarantine") == [(0,)]
    assert query(db_url, "select count(*) from metrics where clock_synced is not null") == [(0,)]


def test_agent_behind_an_old_acl_sends_exactly_version_1_readings(
        tmp_path: Path, old_acl_broker: ShippedBroker) -> None:
    # The agent's view of an old hub: no capability message can reach it.
    readings = watcher(old_acl_broker, "pi-v1")
    agent = run_agent(tmp_path, old_acl_broker, "pi-v1")
    try:
        agent.start()
        wait_for(lambda: len(sent(readings)) >= 8, 30, "readings")
    finally:
        agent.stop()
        readings.stop()
    assert all(set(r) == V1_KEYS for r in sent(readings))
    assert "ERROR" not in agent.log() and "Traceback" not in agent.log()


def test_new_hub_stores_a_reading_from_an_agent_that_predates_clock_synced(
        tmp_path: Path, new_acl_broker: ShippedBroker, db_url: str) -> None:
    # An old agent's reading: the same message without the optional field, from its account.
    hub = run_hub(tmp_path, new_acl_broker, db_url)
    password = new_device(new_acl_broker, "pi-old")
    once = subprocess.run(
        [sys.executable, "-m", "agent.main", "once", "--device-id", "pi-old",
         "--interval-s", "0.1", "--state-dir", str(tmp_path / "once")], cwd=REPO,
        capture_output=True, check=True, timeout=30).stdout
    message = orjson.loads(once)
    assert set(message) == V1_KEYS  # `once` knows no hub: version 1
    old_agent = Client(new_acl_broker.port, "pi-old", "pi-old", password)
    try:
        hub.start()
        processes.wait_hub_subscribed(hub)
        old_agent.connect()
        assert old_agent.publish("fleetpulse/pi-old/metrics", orjson.dumps(message)) == 0
        processes.wait_rows(db_url, 1)
    finally:
        old_agent.stop()
        hub.stop()
    assert query(db_url, "select device_id, clock_synced, agent_ts from metrics") == [
        ("pi-old", None, None)]
    assert query(db_url, "select count(*) from quarantine") == [(0,)]
