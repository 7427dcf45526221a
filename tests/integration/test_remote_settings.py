"""Settings changed remotely through the hub, end to end: the real broker with the shipped
mosquitto.conf and acl, the hub and the agents as processes, PostgreSQL.

The API records a change, the hub's settings thread sends it on ``set/<setting>``, the agent
applies it at its next tick and reports it on ``config``, and the API shows it applied; a
refusal shows with the agent's reason; a device away when set gets it when it comes back;
one request sets two devices; a device that never reported its settings cannot be set.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.topics import ha_discovery_topic
from tests import processes
from tests.integration.test_security import (
    HUB_PASSWORD,
    HUB_USERNAME,
    Client,
    ShippedBroker,
    hub_cli,
)
from tests.integration.test_security import new_device as new_account
from tests.integration.test_settings import add_admin
from tests.integration.test_versions import start_broker
from tests.processes import Process
from tests.servers import PostgresServer, free_port, wait_for

TOKEN = "settings-test-token"


@dataclass
class Fleet:
    broker: ShippedBroker
    db_url: str
    hub: Process
    http_port: int
    workdir: Path
    admin_password: str

    def call(self, method: str, path: str, body: Any = None,
             token: str | None = TOKEN) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def settings(self, device_id: str) -> dict[str, Any]:
        status, body = self.call("GET", f"/api/devices/{device_id}/settings")
        assert status == 200, body
        return {**body, "by_name": {s["setting"]: s for s in body["settings"]}}

    def agent(self, device_id: str, password: str, interval_s: str = "0.5") -> Process:
        return processes.agent(self.workdir, broker_url=f"mqtt://127.0.0.1:{self.broker.port}",
                               prefix="fleetpulse", device_id=device_id,
                               broker_username=device_id, broker_password=password,
                               interval_s=interval_s).start()

    def wait_setting(self, device_id: str, setting: str, what: str, condition: Any,
                     timeout_s: float = 30) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def check() -> bool:
            found.update(self.settings(device_id)["by_name"][setting])
            return bool(condition(found))
        wait_for(check, timeout_s, f"{device_id} {setting}: {what}")
        return found

    def intervals(self, device_id: str) -> set[float]:
        rows = processes.query(self.db_url, "select distinct interval_s from metrics "
                               "where device_id = %s", (device_id,))
        return {float(r[0]) for r in rows}  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fleet(work_root: Path, postgres: PostgresServer) -> Iterator[Fleet]:
    workdir = work_root / "remote-settings"
    workdir.mkdir()
    broker = start_broker(workdir / "mqtt")
    db_url = postgres.create_database("remote_settings")
    port = free_port()
    hub = processes.hub(workdir, broker_url=f"mqtt://127.0.0.1:{broker.port}", db_url=db_url,
                        prefix="fleetpulse", broker_username=HUB_USERNAME,
                        broker_password=HUB_PASSWORD, batch_max_age_s="0.2",
                        http_port=str(port), api_token=TOKEN).start()
    try:
        processes.wait_hub_subscribed(hub)
        yield Fleet(broker, db_url, hub, port, workdir, add_admin(broker, "ops"))
    finally:
        code = hub.stop()
        broker.stop()
        assert code == 0, hub.log()[-3000:]


def test_api_change_is_applied_by_the_agent_and_shown_applied(fleet: Fleet) -> None:
    agent = fleet.agent("pi-one", new_account(fleet.broker, "pi-one"))
    try:
        wait_for(lambda: fleet.settings("pi-one")["supported"], 30, "pi-one's config report")
        assert fleet.settings("pi-one")["by_name"]["interval_s"]["reported"] == 0.5
        # Bad values are refused by the API with the agent's own rules; nothing recorded.
        for bad, words in (({"interval_s": 0.01}, "out of bounds"),
                           ({"process_top_n": 99}, "out of bounds"),
                           ({"interval_s": "5"}, "interval_s"),
                           ({"colour": 1}, "colour"), ({}, "nothing to change")):
            status, body = fleet.call("PUT", "/api/devices/pi-one/settings", bad)
            assert status == 422 and words in body["detail"], (bad, body)
        assert fleet.call("PUT", "/api/devices/pi-one/settings", {"interval_s": 1},
                          token=None)[0] == 401
        assert fleet.call("PUT", "/api/devices/nobody/settings", {"interval_s": 1})[0] == 404

        status, body = fleet.call("PUT", "/api/devices/pi-one/settings", {"interval_s": 0.25})
        assert status == 200, body
        applied = fleet.wait_setting("pi-one", "interval_s", "applied",
                                     lambda s: s["state"] == "applied")
        assert applied["reported"] == 0.25 and applied["source"] == "remote"
        assert applied["desired"] == 0.25 and applied["applied_at"] is not None
        wait_for(lambda: 0.25 in fleet.intervals("pi-one"), 20, "readings at 0.25 s")
        assert fleet.intervals("pi-one") <= {0.5, 0.25}

        # null: back to the device's own value.
        status, body = fleet.call("PUT", "/api/devices/pi-one/settings", {"interval_s": None})
        assert status == 200, body
        back = fleet.wait_setting("pi-one", "interval_s", "back to local",
                                  lambda s: s["state"] == "applied")
        assert back["source"] == "local" and back["reported"] == 0.5
    finally:
        agent.stop()


def test_a_refusal_shows_with_the_agents_reason(fleet: Fleet) -> None:
    agent = fleet.agent("pi-two", new_account(fleet.broker, "pi-two"))
    admin = Client(fleet.broker.port, "ops", "ops", fleet.admin_password).connect()
    try:
        wait_for(lambda: fleet.settings("pi-two")["supported"], 30, "pi-two's config report")
        # An admin with MQTT Explorer sends a value out of bounds: the agent refuses it.
        admin.publish("fleetpulse/pi-two/set/process_top_n", b"99")
        wait_for(lambda: fleet.settings("pi-two")["last_refusal"], 30, "the refusal")
        refusal = fleet.settings("pi-two")["last_refusal"]
        assert refusal["topic"] == "fleetpulse/pi-two/set/process_top_n"
        assert refusal["payload"] == "99" and "out of bounds" in refusal["reason"]
        assert fleet.settings("pi-two")["by_name"]["process_top_n"]["reported"] == 10
    finally:
        admin.stop()
        agent.stop()


def test_a_device_away_when_set_gets_it_when_it_comes_back(fleet: Fleet) -> None:
    password = new_account(fleet.broker, "pi-three")
    agent = fleet.agent("pi-three", password)
    wait_for(lambda: fleet.settings("pi-three")["supported"], 30, "pi-three's config report")
    agent.stop()
    wait_for(lambda: fleet.settings("pi-three")["status"] == "offline", 20, "offline")
    status, body = fleet.call("PUT", "/api/devices/pi-three/settings",
                              {"process_top_n": 7, "interval_s": 2})
    assert status == 200, body
    pending = fleet.settings("pi-three")["by_name"]["process_top_n"]
    assert pending["state"] == "pending" and "offline" in pending["reason"]
    agent = fleet.agent("pi-three", password)
    try:
        for setting, value in (("process_top_n", 7), ("interval_s", 2.0)):
            done = fleet.wait_setting("pi-three", setting, "applied after coming back",
                                      lambda s: s["state"] == "applied")
            assert done["reported"] == value and done["source"] == "remote"
        wait_for(lambda: 2.0 in fleet.intervals("pi-three"), 20, "readings at 2 s")
        # The agent's meta follows, so "silent" and the alerts' durations count 2 s intervals.
        wait_for(lambda: fleet.call("GET", "/api/devices/pi-three")[1]["interval_s"] == 2.0,
                 20, "the device's interval in the API")
    finally:
        agent.stop()


def test_one_request_sets_two_devices_and_skips_what_it_cannot(fleet: Fleet) -> None:
    agents = [fleet.agent(d, new_account(fleet.broker, d)) for d in ("pi-four", "pi-five")]
    # An agent from before remote settings: status and readings, never a config report.
    old = Client(fleet.broker.port, "pi-old", "pi-old",
                 new_account(fleet.broker, "pi-old")).connect()
    try:
        old.publish("fleetpulse/pi-old/status", b"online")
        for d in ("pi-four", "pi-five"):
            wait_for(lambda d=d: fleet.settings(d)["supported"], 30, f"{d}'s config report")
        wait_for(lambda: fleet.call("GET", "/api/devices/pi-old/settings")[0] == 200, 20,
                 "pi-old known")
        old_view = fleet.settings("pi-old")
        assert old_view["supported"] is False and "does not take settings" in old_view["note"]
        status, body = fleet.call("PUT", "/api/devices/pi-old/settings", {"interval_s": 2})
        assert status == 409 and "upgrade its agent" in body["detail"]
        # A config report not in the agent's format is quarantined with the reason.
        old.publish("fleetpulse/pi-old/config", b'{"v": 1, "device_id": "pi-old"}')
        wait_for(lambda: any("config message" in r["reason"] for r in fleet.call(
            "GET", "/api/quarantine?hours=1")[1]["by_reason"]), 20, "the quarantined config")
        assert fleet.settings("pi-old")["supported"] is False

        status, body = fleet.call("POST", "/api/settings", {
            "devices": ["pi-four", "pi-five", "pi-old", "pi-nobody"],
            "settings": {"interval_s": 0.25}})
        assert status == 200, body
        assert body["accepted"] == 2
        results = {r["device_id"]: r for r in body["results"]}
        assert results["pi-four"]["accepted"] and results["pi-five"]["accepted"]
        assert not results["pi-old"]["accepted"] and not results["pi-nobody"]["accepted"]
        for d in ("pi-four", "pi-five"):
            fleet.wait_setting(d, "interval_s", "applied", lambda s: s["state"] == "applied")
            wait_for(lambda d=d: 0.25 in fleet.intervals(d), 20, f"{d}'s readings at 0.25 s")
        assert fleet.call("POST", "/api/settings", {"devices": "all",
                                                    "settings": {"interval_s": 0}})[0] == 422
    finally:
        old.stop()
        for agent in agents:
            agent.stop()


# An agent of another version whose bound of process_top_n is 1 to 16: the real agent, run
# with that one bound narrowed before it starts.
NARROW_AGENT = ("import sys; from shared import remote; "
                "remote.BOUNDS['process_top_n'] = remote.Bound(int, 1, 16); "
                "from agent.main import main; sys.exit(main(['run']))")


def test_an_agent_with_narrower_bounds_is_refused_by_the_api_or_refuses_the_hub(
        fleet: Fleet) -> None:
    password = new_account(fleet.broker, "pi-six")
    agent = fleet.agent("pi-six", password)
    wait_for(lambda: fleet.settings("pi-six")["supported"], 30, "pi-six's config report")
    agent.stop()
    wait_for(lambda: fleet.settings("pi-six")["status"] == "offline", 20, "offline")
    # Accepted while the device's last report allows 1 to 50 ...
    status, body = fleet.call("PUT", "/api/devices/pi-six/settings", {"process_top_n": 20})
    assert status == 200, body
    # ... then it comes back with an agent that takes 1 to 16: it refuses the hub's set,
    # and the request shows refused with the agent's reason.
    older = Process(["-c", NARROW_AGENT], agent.env, fleet.workdir / "agent-pi-six-older.log")
    older.start()
    try:
        refused = fleet.wait_setting("pi-six", "process_top_n", "refused",
                                     lambda s: s["state"] == "refused")
        assert "out of bounds (from 1 to 16)" in refused["reason"], refused
        assert refused["reported"] == 10 and refused["bounds"]["max"] == 16
        assert "refused the setting process_top_n" in fleet.hub.log()
        # Now the API knows the device's bounds and refuses such a value itself.
        status, body = fleet.call("PUT", "/api/devices/pi-six/settings", {"process_top_n": 20})
        assert status == 422 and "from 1 to 16" in body["detail"], body
        status, body = fleet.call("PUT", "/api/devices/pi-six/settings", {"process_top_n": 12})
        assert status == 200, body
        done = fleet.wait_setting("pi-six", "process_top_n", "applied",
                                  lambda s: s["state"] == "applied")
        assert done["reported"] == 12
    finally:
        older.stop()


def test_revoking_a_device_removes_its_home_assistant_discovery(fleet: Fleet) -> None:
    device = "pi-ha-gone"
    config = ha_discovery_topic(device)
    agent = processes.agent(fleet.workdir, broker_url=f"mqtt://127.0.0.1:{fleet.broker.port}",
                            prefix="fleetpulse", device_id=device, broker_username=device,
                            broker_password=new_account(fleet.broker, device),
                            interval_s="0.5", ha_discovery="true").start()
    observer = Client(fleet.broker.port, "ops", "ops", fleet.admin_password).connect()
    try:
        observer.subscribe(config)
        wait_for(lambda: any(t == config and p for t, p in observer.messages), 30,
                 "the device's discovery message")
        wait_for(lambda: fleet.settings(device)["supported"], 30, "the device's config report")
        status, body = fleet.call("PUT", f"/api/devices/{device}/settings",
                                  {"process_top_n": 12})
        assert status == 200, body
        fleet.wait_setting(device, "process_top_n", "applied", lambda s: s["state"] == "applied")
        result = hub_cli("revoke-device", device, "--password-file",
                         str(fleet.broker.password_file), "--reload-pid", str(fleet.broker.pid),
                         "--db", fleet.db_url)
        assert result.returncode == 0, result.stderr
        assert "The hub removes what 'pi-ha-gone' announced" in result.stderr
        # The running hub sends the empty retained message HA takes as "delete the device".
        wait_for(lambda: any(t == config and p == b"" for t, p in observer.messages), 30,
                 "the hub to remove the discovery")
        assert processes.query(fleet.db_url, "select cleared_at is not null from "
                               "device_revocations where device_id = %s", (device,)) == [(True,)]
        # Its settings requests and its last report went with it.
        assert processes.query(fleet.db_url, "select (select count(*) from device_settings "
                               "where device_id = %s), (select count(*) from device_config "
                               "where device_id = %s)", (device, device)) == [(0, 0)]
        agent.kill()  # refused by the broker from now on: it can announce nothing again
        late = Client(fleet.broker.port, "ops-late", "ops", fleet.admin_password).connect()
        try:
            late.subscribe(config)
            wait_for(lambda: bool(late.granted), 10, "the late subscription")
            # A retained message would come right after the SUBACK: none comes within 1 s.
            assert not wait_until_any(late, config, 1.0)
        finally:
            late.stop()
    finally:
        observer.stop()
        agent.kill()


def wait_until_any(client: Client, topic: str, timeout_s: float) -> bool:
    """Whether a message on ``topic`` arrives within ``timeout_s`` (here: should not)."""
    try:
        wait_for(lambda: any(t == topic for t, _ in client.messages), timeout_s, topic)
    except AssertionError:
        return False
    return True
