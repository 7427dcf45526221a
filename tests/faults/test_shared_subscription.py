"""Two hubs share a fleet through an MQTT v5 shared subscription; one is killed mid-way."""

from __future__ import annotations

import re
from pathlib import Path

from tests.faults.fleet import Fleet
from tests.processes import wait_hub_subscribed
from tests.servers import wait_for


def test_two_hubs_share_the_load_and_one_dies_without_losing_a_reading(
        tmp_path: Path, db_url: str, prefix: str) -> None:
    fleet = Fleet(tmp_path, db_url, prefix, agents=4, interval_s=0.05,
                  hub_settings={"share_group": "hubs"})
    hub_a = fleet.hub  # client id <prefix>-hub
    hub_b_settings = {**fleet.hub_settings, "client_id": f"{prefix}-hub-b"}
    try:
        fleet.broker.start()
        hub_a.start()
        hub_b = fleet.new_hub("hub-b")
        hub_b.env["FLEETPULSE_CLIENT_ID"] = hub_b_settings["client_id"]
        hub_b.start()
        wait_hub_subscribed(hub_a)
        wait_hub_subscribed(hub_b)
        fleet.start_agents()
        wait_for(lambda: fleet.rows() >= 300, 60, "readings flowing")
        hub_b.kill()  # SIGKILL: its share keeps its unacknowledged messages
        rows_at_kill = fleet.rows()
        wait_for(lambda: fleet.rows() > rows_at_kill + 100, 60, "hub A storing alone")
        # Hub B comes back with the same client id; the broker hands over what it kept.
        hub_b = fleet.new_hub("hub-b-restarted")
        hub_b.env["FLEETPULSE_CLIENT_ID"] = hub_b_settings["client_id"]
        hub_b.start()
        fleet.wait_spools_empty()
        result = fleet.account(fleet.stop_agents())
        print(result.line("shared subscription, one hub SIGKILL"))
        assert result.gaps == [] and result.duplicated == 0 and result.lost == 0
        assert result.rows == result.sent
        # The load was shared: hub A alone did not receive every reading.
        hub_a.stop()
        received_by_a = int(re.findall(r"Stopped: (\d+) messages received", hub_a.log())[-1])
        assert 0 < received_by_a < result.rows
        hub_b.stop()
    finally:
        fleet.close()
