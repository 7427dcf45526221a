"""``fleetpulse-hub run --workers 2``: one supervisor, two hubs on one share group; one
worker is killed mid-way and started again, nothing lost or stored twice."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from tests import processes
from tests.faults.fleet import Fleet
from tests.servers import wait_for


def children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_two_workers_share_the_load_and_a_killed_one_is_restarted_without_loss(
        tmp_path: Path, db_url: str, prefix: str) -> None:
    fleet = Fleet(tmp_path, db_url, prefix, agents=4, interval_s=0.05,
                  hub_settings={"workers": "2"})
    hub = fleet.hub
    try:
        fleet.broker.start()
        hub.start()
        wait_for(lambda: hub.log().count("Subscribed at broker") >= 2, 60,
                 "both workers to subscribe")
        workers = children(hub.pid)
        assert len(workers) == 2, hub.log()[-3000:]
        fleet.start_agents()
        wait_for(lambda: fleet.rows() >= 300, 60, "readings flowing")
        # Worker 1: the one without HTTP and alerts (its log lines say [1]).
        victim = next(p for p in workers
                      if "--worker-index\x001" in Path(f"/proc/{p}/cmdline").read_text())
        os.kill(victim, signal.SIGKILL)  # its session keeps what it had not acknowledged
        wait_for(lambda: len(children(hub.pid) - workers) == 1, 30,
                 "the supervisor to start the killed worker again")
        assert "Hub worker 1 exited (SIGKILL)" in hub.log()
        rows_at_restart = fleet.rows()
        wait_for(lambda: fleet.rows() > rows_at_restart + 100, 60, "storing after the restart")
        fleet.wait_spools_empty()
        result = fleet.account(fleet.stop_agents())
        print(result.line("two workers, one SIGKILL and restarted"))
        assert result.gaps == [] and result.duplicated == 0 and result.lost == 0
        assert result.rows == result.sent
        fleet.wait_rollups_agree()  # worker 1's marks were flushed by its restart
        final = children(hub.pid)
        assert hub.stop() == 0  # SIGTERM to the supervisor: forwarded, all exit
        assert not any(alive(p) for p in final)
        # Both workers took a share of the load (the restarted worker 1 and worker 0).
        received = {int(i): int(n) for i, n in re.findall(
            r"fleetpulse\.hub\[(\d)\]: Stopped: (\d+) messages received", hub.log())}
        assert set(received) == {0, 1} and all(received.values()), received
        assert sum(received.values()) < result.rows  # worker 1 before its kill took some
    finally:
        fleet.close()


def test_a_worker_failing_its_start_check_stops_the_supervisor_with_its_code(
        tmp_path: Path, db_url: str, prefix: str) -> None:
    wrong = db_url.replace("://", "://nobody@", 1) if "@" not in db_url else \
        db_url.split("://", 1)[0] + "://nobody@" + db_url.split("@", 1)[1]
    hub = processes.hub(tmp_path, broker_url="mqtt://127.0.0.1:1", db_url=wrong, prefix=prefix,
                        workers="2").start()
    try:
        wait_for(lambda: not hub.running(), 60, "the supervisor to give up")
        assert hub.popen is not None and hub.popen.returncode == 1, hub.log()[-2000:]
        assert "refused the login" in hub.log()
        assert "Hub worker" in hub.log() and "exited with code 1 at start" in hub.log()
    finally:
        hub.kill()


def test_workers_stop_when_the_supervisor_is_killed(
        tmp_path: Path, db_url: str, prefix: str) -> None:
    fleet = Fleet(tmp_path, db_url, prefix, agents=0, hub_settings={"workers": "2"})
    hub = fleet.hub
    try:
        fleet.broker.start()
        hub.start()
        wait_for(lambda: hub.log().count("Subscribed at broker") >= 2, 60,
                 "both workers to subscribe")
        workers = children(hub.pid)
        assert len(workers) == 2
        hub.kill()  # SIGKILL: no chance to forward anything
        wait_for(lambda: not any(alive(p) for p in workers), 30,
                 "the orphaned workers to stop (parent-death signal)")
    finally:
        for pid in children(hub.pid) if hub.running() else set():
            os.kill(pid, signal.SIGKILL)
        fleet.close()
