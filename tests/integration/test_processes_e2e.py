"""Process metrics end to end: the real agent, the real hub and Mosquitto with the shipped
configuration (accounts, ACL), real PostgreSQL.

New hub and new agent: samples arrive, each stored once across a hub killed and restarted.
An older hub (its capability message does not list ``processes``): the agent sends none,
and its readings are the ones that hub knows; once a new hub replaces it, they come. A new
hub and an agent that sends none: its readings are stored as before. A bad section: the
reading stored, the section quarantined with the reason.
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from hub.credentials import HUB_USERNAME
from tests import processes
from tests.integration.test_security import HUB_PASSWORD, REPO, Client, ShippedBroker
from tests.integration.test_versions import (
    SCHEMA_TOPIC,
    V1_KEYS,
    new_device,
    run_hub,
    sent,
    start_broker,
)
from tests.processes import Process, query
from tests.servers import wait_for
from tests.unit.hub.test_processes import section

OLD_HUB_CAPABILITIES = {"v": 1, "hub_version": "0.1.0", "metrics_versions": [1],
                        "metrics_optional_fields": ["clock_synced"]}


@pytest.fixture
def shipped(private_dir: Path) -> Iterator[ShippedBroker]:
    """Mosquitto with the shipped configuration and ACL."""
    broker = start_broker(private_dir / "mqtt")
    yield broker
    broker.stop()


def run_agent(workdir: Path, broker: ShippedBroker, device_id: str, **settings: str) -> Process:
    return processes.agent(workdir, broker_url=f"mqtt://127.0.0.1:{broker.port}",
                           prefix="fleetpulse", device_id=device_id, broker_username=device_id,
                           broker_password=new_device(broker, device_id), interval_s="0.25",
                           **{"process_period_s": "1", **settings})


def with_section(readings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in readings if "processes" in r]


def stored_sections(db_url: str) -> list[tuple[Any, ...]]:
    return query(db_url, "select seq, count, pid, top_cpu_n from processes order by seq")


def test_samples_arrive_and_each_is_stored_once_across_a_hub_kill(
        tmp_path: Path, shipped: ShippedBroker, db_url: str) -> None:
    hub = run_hub(tmp_path, shipped, db_url)
    agent = run_agent(tmp_path, shipped, "pi-procs")
    try:
        hub.start()
        processes.wait_hub_subscribed(hub)
        agent.start()
        wait_for(lambda: len(stored_sections(db_url)) >= 3, 40, "process samples stored")
        hub.kill()  # unacknowledged readings stay in its session; the broker resends them
        before = len(stored_sections(db_url))
        # The agent goes on: its readings wait in the hub's session while the hub starts
        # again (a few seconds: several process samples).
        hub.start()
        wait_for(lambda: len(stored_sections(db_url)) >= before + 4, 40, "samples after restart")
    finally:
        agent.stop()
        hub_running = hub.running()
    assert hub_running
    stopped = re.search(r"Stopped after (\d+) readings .*: (\d+) acknowledged", agent.log())
    assert stopped is not None, agent.log()[-2000:]
    try:
        taken = int(stopped.group(1))
        wait_for(lambda: query(db_url, "select count(*) from metrics")[0][0] >= taken, 30,
                 "every reading taken stored")
    finally:
        hub.stop()
    # Nothing lost, nothing twice: one session, seq 1..n, each once.
    assert query(db_url, "select count(*), count(distinct seq), min(seq), max(seq) "
                 "from metrics") == [(taken, taken, 1, taken)]
    rows = query(db_url, "select p.seq, p.count, p.pid, p.top_cpu_n, p.ts "
                 "from processes p join metrics m using (device_id, ts, session_id, seq) "
                 "order by p.seq")
    assert len(rows) == query(db_url, "select count(*) from processes")[0][0] >= before + 4
    assert all(count > 0 and len(pids) > 0 and top_n > 0 for _, count, pids, top_n, _ in rows)
    # A sample every process_period_s (1 s), none missing across the kill: scheduling noise
    # aside, consecutive samples are one period apart, never two.
    gaps = [(b[4] - a[4]).total_seconds() for a, b in itertools.pairwise(rows)]
    assert all(0.5 < gap < 1.75 for gap in gaps), gaps
    assert query(db_url, "select count(*) from quarantine") == [(0,)]
    assert "Traceback" not in hub.log() and "ERROR" not in agent.log()


def test_an_older_hub_gets_no_processes_until_a_new_hub_says_it_reads_them(
        tmp_path: Path, shipped: ShippedBroker, db_url: str) -> None:
    # The older hub, on the wire: its retained capability message lists clock_synced only,
    # and it takes the readings (here a client on the hub's account records them).
    old_hub = Client(shipped.port, "old-hub", HUB_USERNAME, HUB_PASSWORD).connect()
    mid = old_hub.paho.publish(SCHEMA_TOPIC, orjson.dumps(OLD_HUB_CAPABILITIES), qos=1,
                               retain=True).mid
    wait_for(lambda: old_hub.pubacks.get(mid) in (0, 16), 10,  # 16: no subscriber yet
             "the older hub's capability message")
    old_hub.subscribe("fleetpulse/pi-up/metrics")
    agent = run_agent(tmp_path, shipped, "pi-up")
    hub = run_hub(tmp_path, shipped, db_url)
    try:
        agent.start()
        wait_for(lambda: "The hub reads the optional fields: clock_synced." in agent.log(), 30,
                 "the agent to hear the older hub")
        wait_for(lambda: len(sent(old_hub)) >= 16, 30, "4 s of readings, 4 process scans")
        old = sent(old_hub)
        # Exactly the readings the older hub knows: no processes section, nothing unknown.
        assert all(set(r) <= V1_KEYS | {"clock_synced"} for r in old)
        assert not with_section(old)
        old_hub.stop()
        hub.start()  # the fleet's hub is upgraded: its capability message lists processes
        wait_for(lambda: "The hub reads the optional fields: clock_synced, processes." in
                 agent.log(), 30, "the agent to hear the new hub")
        wait_for(lambda: len(stored_sections(db_url)) >= 2, 30, "process samples stored")
    finally:
        agent.stop()
        hub.stop()
    seqs = [r[0] for r in query(db_url, "select seq from metrics order by seq")]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # no reading lost at the switch
    assert query(db_url, "select count(*) from quarantine") == [(0,)]


def test_a_new_hub_stores_the_readings_of_an_agent_that_sends_no_processes(
        tmp_path: Path, shipped: ShippedBroker, db_url: str) -> None:
    hub = run_hub(tmp_path, shipped, db_url)
    # On the wire an agent from before process metrics and one with them off are the same.
    agent = run_agent(tmp_path, shipped, "pi-old", process_period_s="0")
    try:
        hub.start()
        processes.wait_hub_subscribed(hub)
        agent.start()
        processes.wait_rows(db_url, 12)
    finally:
        agent.stop()
        hub.stop()
    assert query(db_url, "select count(*) from processes") == [(0,)]
    assert query(db_url, "select count(*) from quarantine") == [(0,)]


def test_a_bad_section_is_quarantined_with_its_reason_and_its_reading_stored(
        tmp_path: Path, shipped: ShippedBroker, db_url: str) -> None:
    hub = run_hub(tmp_path, shipped, db_url)
    password = new_device(shipped, "pi-bad")
    once = subprocess.run(
        [sys.executable, "-m", "agent.main", "once", "--device-id", "pi-bad",
         "--interval-s", "0.1", "--state-dir", str(tmp_path / "once")], cwd=REPO,
        capture_output=True, check=True, timeout=30).stdout
    good = orjson.loads(once)
    wrong_type = section()
    wrong_type["top_cpu"][0]["pid"] = "1"  # type: ignore[typeddict-item]
    messages = [{**good, "seq": 1, "processes": wrong_type},
                {**good, "seq": 2, "processes": section(zombie=3)},
                {**good, "seq": 3, "processes": section()}]
    device = Client(shipped.port, "pi-bad", "pi-bad", password)
    try:
        hub.start()
        processes.wait_hub_subscribed(hub)
        device.connect()
        for m in messages:
            assert device.publish("fleetpulse/pi-bad/metrics", orjson.dumps(m)) == 0
        processes.wait_rows(db_url, 3)
        wait_for(lambda: query(db_url, "select count(*) from quarantine")[0][0] >= 2, 10,
                 "two quarantine records")
    finally:
        device.stop()
        hub.stop(signal.SIGTERM)
    reasons = [r[0] for r in query(db_url, "select reason from quarantine order by reason")]
    assert len(reasons) == 2 and all(r.startswith("processes section left out") for r in reasons)
    assert "processes.count is 5 but running + sleeping + zombie + other is 7" in reasons[0]
    assert "processes.top_cpu.0.pid" in reasons[1]
    assert query(db_url, "select seq from metrics order by seq") == [(1,), (2,), (3,)]
    assert query(db_url, "select seq, pid from processes") == [(3, [10, 11, 1, 20])]
