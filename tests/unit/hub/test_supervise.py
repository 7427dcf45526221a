"""The supervisor of ``--workers``: its children's command lines and restart delays."""

from __future__ import annotations

from dataclasses import replace

from hub.supervise import restart_delay_s, worker_args
from shared.config import HubSettings


def test_each_worker_gets_its_own_stable_client_id_and_the_share_group() -> None:
    settings = replace(HubSettings(), client_id="hub-a", workers=3)
    args = worker_args(["run", "--workers", "3"], settings, 2)
    # argparse keeps the last of a repeated flag: these override the supervisor's own.
    assert args[:3] == ["run", "--workers", "3"]
    assert args[3:] == ["--workers", "1", "--worker-index", "2", "--client-id", "hub-a-2",
                        "--share-group", "fleetpulse"]
    grouped = worker_args(["run"], replace(settings, share_group="hubs"), 0)
    assert grouped[-2:] == ["--share-group", "hubs"] and "hub-a-0" in grouped


def test_a_worker_dying_again_and_again_waits_longer_up_to_30_s() -> None:
    assert [restart_delay_s(n) for n in (1, 2, 3, 4)] == [0.0, 0.5, 1.0, 2.0]
    assert restart_delay_s(50) == 30.0
