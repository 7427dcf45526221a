"""An agent and a hub, as processes, against a real Mosquitto and a real PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from shared.schema import metrics_columns
from tests import processes
from tests.processes import query, wait_hub_subscribed, wait_rows
from tests.servers import MosquittoServer, wait_for

# What a VM, a container or a desktop may lack: these may be null; nothing else may.
# clock_synced is null in readings taken before the agent heard what the hub reads, and
# agent_ts unless the hub moved the reading (hub/clock.py).
PLATFORM_MAY_LACK = ("cpu_freq_", "cpu_syscalls", "sensors_", "throttling_", "clock_synced",
                     "agent_ts",
                     "anomaly_score")  # the hub's, once the device has a model: none here


class Counter:
    """A plain MQTT subscriber that counts what the agent really published."""

    def __init__(self, broker: MosquittoServer, topic: str) -> None:
        self.payloads: list[bytes] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self._add(m.payload)
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _add(self, payload: bytes) -> None:
        with self.lock:
            self.payloads.append(payload)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_every_published_reading_is_exactly_one_complete_row_and_devices_follow_status(
        tmp_path: Path, broker: MosquittoServer, db_url: str, prefix: str) -> None:
    hub = processes.hub(tmp_path, broker_url=broker.url, db_url=db_url, prefix=prefix,
                        batch_max_age_s="0.2").start()
    agent = processes.agent(tmp_path, broker_url=broker.url, prefix=prefix, device_id="e2e-1",
                            interval_s="0.25")
    counter = Counter(broker, f"{prefix}/e2e-1/metrics")
    try:
        wait_hub_subscribed(hub)
        agent.start()
        wait_for(lambda: query(db_url, "select status from devices where device_id = 'e2e-1'")
                 == [("online",)], 30, "the device to be online")
        wait_rows(db_url, 12, timeout_s=60)
        assert agent.stop() == 0  # SIGTERM: a clean stop publishes "offline" itself
        wait_for(lambda: query(db_url, "select status from devices")[0][0] == "offline", 20,
                 "the device to go offline")
        sent = len(counter.payloads)
        wait_for(lambda: query(db_url, "select count(*) from metrics")[0][0] == sent, 20,
                 f"{sent} rows, one per published reading")

        rows = query(db_url, "select session_id, seq from metrics order by seq")
        assert len({r[0] for r in rows}) == 1
        assert [r[1] for r in rows] == list(range(1, sent + 1))  # no gap, no duplicate
        assert query(db_url, "select count(*) from quarantine") == [(0,)]

        # Every column this machine can fill is filled (the first reading has no rates yet).
        names = [c.name for c in metrics_columns()]
        latest = query(db_url, f"select {', '.join(names)} from metrics where seq > 1")
        for row in latest:
            empty = {n for n, v in zip(names, row, strict=True) if v is None}
            assert all(n.startswith(PLATFORM_MAY_LACK) for n in empty), empty
        meta = query(db_url, "select hostname, meta->>'agent_version' from devices")[0]
        assert meta[0] and meta[1]
    finally:
        counter.stop()
        agent.kill()
        hub.stop()
    assert "Traceback" not in hub.log() and "Traceback" not in agent.log()


def test_a_killed_agent_goes_offline_through_its_last_will(
        tmp_path: Path, broker: MosquittoServer, db_url: str, prefix: str) -> None:
    hub = processes.hub(tmp_path, broker_url=broker.url, db_url=db_url, prefix=prefix,
                        batch_max_age_s="0.2").start()
    agent = processes.agent(tmp_path, broker_url=broker.url, prefix=prefix, device_id="will-1")
    try:
        wait_hub_subscribed(hub)
        agent.start()
        wait_for(lambda: query(db_url, "select status from devices") == [("online",)], 30,
                 "online")
        agent.kill()  # SIGKILL: no goodbye, the broker publishes the Will
        wait_for(lambda: query(db_url, "select status from devices") == [("offline",)], 60,
                 "offline through the Last Will")
        # And back: the retained "online" replaces the Will's "offline" on reconnect.
        agent.start()
        wait_for(lambda: query(db_url, "select status from devices") == [("online",)], 30,
                 "online again after a restart")
    finally:
        agent.kill()
        hub.stop()


def test_hub_status_command_prints_the_fleet(tmp_path: Path, broker: MosquittoServer,
                                             db_url: str, prefix: str) -> None:
    hub = processes.hub(tmp_path, broker_url=broker.url, db_url=db_url, prefix=prefix,
                        batch_max_age_s="0.2").start()
    agent = processes.agent(tmp_path, broker_url=broker.url, prefix=prefix, device_id="st-1")
    try:
        wait_hub_subscribed(hub)
        agent.start()
        wait_rows(db_url, 2)
        import subprocess
        import sys
        out = subprocess.run([sys.executable, "-m", "hub.main", "status"], env=hub.env,
                             capture_output=True, text=True, timeout=60, check=True).stdout
        line = next(line for line in out.splitlines() if line.startswith("st-1"))
        assert " online " in line and "%" not in line
        assert out.splitlines()[-1] == "1 devices, 1 online"
    finally:
        agent.kill()
        hub.stop()
