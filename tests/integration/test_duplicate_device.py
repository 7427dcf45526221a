"""Two machines claiming one device id, against the shipped broker configuration.

Two real agent processes with the same device id and the same account (a copied
agent.toml), each in a UTS namespace of its own (``unshare --uts``) with its own hostname,
as two Pis would be; a real hub and PostgreSQL. The broker (``use_username_as_clientid``)
hands the one client id back and forth between them.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import urllib.request
from pathlib import Path

import orjson

from hub.credentials import HUB_USERNAME, hash_password, set_user
from tests import processes
from tests.integration.test_security import HUB_PASSWORD, REPO, Client, ShippedBroker
from tests.integration.test_versions import new_device
from tests.processes import Process, query
from tests.servers import free_port, wait_for

DEVICE = "pi-clone"


class MachineAgent(Process):
    """An agent process on a "machine" of its own: a UTS namespace with its own hostname."""

    def __init__(self, hostname: str, env: dict[str, str], log_file: Path) -> None:
        super().__init__(["-m", "agent.main", "run"], env, log_file)
        self.hostname = hostname

    def start(self) -> MachineAgent:
        import sys

        with open(self.log_file, "ab") as log:
            # unshare execs sh, which execs Python: the PID we hold is the agent's own.
            self.popen = subprocess.Popen(
                ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname,
                 sys.executable, *self.args], env=self.env, stdout=log,
                stderr=subprocess.STDOUT, cwd=REPO)
        return self


def machine(workdir: Path, hostname: str, port: int, password: str) -> MachineAgent:
    env = processes.base_env(broker_url=f"mqtt://127.0.0.1:{port}", topic_prefix="fleetpulse",
                             device_id=DEVICE, broker_username=DEVICE,
                             broker_password=password, interval_s="0.25",
                             state_dir=str(workdir / hostname))
    return MachineAgent(hostname, env, workdir / f"{hostname}.log")


def spooled(state_dir: Path) -> set[tuple[str, int]]:
    path = state_dir / "spool.sqlite3"
    if not path.exists():
        return set()
    with sqlite3.connect(path) as db:
        return {(s, q) for s, q in db.execute("select session_id, seq from readings")}


def test_two_machines_with_one_device_id_are_reported_and_keep_all_their_readings(
        private_dir: Path, db_url: str) -> None:
    broker = ShippedBroker(private_dir / "mqtt")
    broker.password_file.write_text(set_user("", HUB_USERNAME, hash_password(
        HUB_PASSWORD, os.urandom(12))))
    broker.start()
    password = new_device(broker, DEVICE)
    http_port = free_port()
    hub = processes.hub(private_dir, broker_url=f"mqtt://127.0.0.1:{broker.port}",
                        db_url=db_url, prefix="fleetpulse", broker_username=HUB_USERNAME,
                        broker_password=HUB_PASSWORD, batch_max_age_s="0.2",
                        alert_check_s="0.5", http_port=str(http_port))
    kitchen = machine(private_dir, "pi-kitchen", broker.port, password)
    shed = machine(private_dir, "pi-shed", broker.port, password)
    try:
        hub.start()
        processes.wait_hub_subscribed(hub)
        kitchen.start()
        shed.start()
        wait_for(lambda: query(db_url, "select message from alerts where rule = "
                               "'duplicate_device' and ended_at is null"), 60,
                 "the duplicate_device alert")
        wait_for(lambda: "Another machine is using device id" in kitchen.log()
                 and "Another machine is using device id" in shed.log(), 60,
                 "both agents to say so")
        # What the dashboard lists under open alerts (it shows every rule's message).
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/alerts?open=true",
                                    timeout=10) as response:
            listed = json.load(response)
        (shown,) = [a for a in listed if a["rule"] == "duplicate_device"]
        assert "pi-kitchen" in shown["message"] and "pi-shed" in shown["message"]
    finally:
        kitchen.stop()
        shed.stop()
        hub_alive = hub.running()
    assert hub_alive

    # One clear ERROR per agent, naming the device id and what to do.
    for agent in (kitchen, shed):
        errors = [line for line in agent.log().splitlines() if " ERROR " in line]
        assert len(errors) == 1, agent.log()
        assert f"device id {DEVICE}" in errors[0] and "its own device_id" in errors[0]
        assert "Traceback" not in agent.log()

    # The alert names both hostnames.
    ((message,),) = query(db_url, "select message from alerts where rule = "
                          "'duplicate_device'")
    assert "'pi-kitchen'" in str(message) and "'pi-shed'" in str(message), message

    # No reading lost or merged: each machine's session is whole, and apart from the other.
    sessions = {}
    for agent in (kitchen, shed):
        match = re.search(r"Stopped after (\d+) readings \(session (\w+)\)", agent.log())
        assert match, agent.log()
        sessions[agent.hostname] = (match.group(2), int(match.group(1)))
    assert len({s for s, _ in sessions.values()}) == 2

    def whole() -> bool:
        for hostname, (session, count) in sessions.items():
            stored = {(session, int(str(q))) for (q,) in query(
                db_url, "select seq from metrics where session_id = %s", (session,))}
            kept = spooled(private_dir / hostname)  # left unacknowledged, sent at next start
            if stored | kept != {(session, q) for q in range(1, count + 1)}:
                return False
        return True

    wait_for(whole, 30, "every reading of both machines stored or kept in their spools")
    hosts = dict(query(db_url, "select session_id, hostname from device_sessions"))
    assert {hosts[session] for session, _ in sessions.values()} == {"pi-kitchen", "pi-shed"}
    assert hosts[sessions["pi-kitchen"][0]] == "pi-kitchen"
    assert query(db_url, "select count(*) from quarantine") == [(0,)]

    # Published retained like every alert (read after the hub stops: one hub account).
    hub.stop()
    reader = Client(broker.port, HUB_USERNAME, HUB_USERNAME, HUB_PASSWORD).connect()
    try:
        reader.subscribe(f"fleetpulse/{DEVICE}/alert/#")
        topic = f"fleetpulse/{DEVICE}/alert/duplicate_device"
        wait_for(lambda: topic in reader.topics(), 10, "the retained alert")
        alert = orjson.loads(dict(reader.messages)[topic])
        assert "pi-kitchen" in alert["message"] and "pi-shed" in alert["message"]
    finally:
        reader.stop()
        broker.stop()
    assert "Traceback" not in hub.log()
