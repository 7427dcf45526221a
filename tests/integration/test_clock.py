"""A Pi without a real-time clock: the agent runs with its clock shifted by libfaketime.

Debian's ``faketime`` package shifts the agent's wall clock (``FAKETIME``, the library
preloaded as the ``faketime`` command does; monotonic clocks stay real, which the agent's
loop needs). libfaketime does not touch ``adjtimex(2)``, so a small library compiled here
answers it as the kernel does before NTP has set the clock (TIME_ERROR, STA_UNSYNC): the
machine running the tests may well be synchronised.
"""

from __future__ import annotations

import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import processes
from tests.integration.test_end_to_end import Counter
from tests.processes import Process, query, wait_hub_subscribed, wait_rows
from tests.servers import MosquittoServer, free_port, wait_for

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
UNSYNCED_KERNEL = """\
#include <sys/timex.h>
/* What adjtimex(2) answers before a time daemon has synchronised the clock. */
int adjtimex(struct timex *buf) { buf->status = STA_UNSYNC; return TIME_ERROR; }
"""


@pytest.fixture(scope="module")
def unsynced_kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not LIBFAKETIME.exists():
        raise RuntimeError("libfaketime is not installed (apt-get install faketime)")
    directory = tmp_path_factory.mktemp("adjtimex")
    (directory / "adjtimex.c").write_text(UNSYNCED_KERNEL)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", "adjtimex.so", "adjtimex.c"],
                   cwd=directory, check=True)
    return directory / "adjtimex.so"


def shifted_agent(workdir: Path, kernel: Path, fake_time: str, *, broker_url: str,
                  prefix: str, device_id: str, **settings: str) -> Process:
    agent = processes.agent(workdir, broker_url=broker_url, prefix=prefix,
                            device_id=device_id, interval_s="0.25", **settings)
    agent.env.update({"LD_PRELOAD": f"{kernel}:{LIBFAKETIME}", "FAKETIME": fake_time,
                      "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    return agent


def test_faked_clock_is_really_faked_for_the_agent(unsynced_kernel: Path) -> None:
    env = processes.base_env()
    env.update({"LD_PRELOAD": f"{unsynced_kernel}:{LIBFAKETIME}",
                "FAKETIME": "@1970-01-02 00:00:00", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    out = subprocess.run(["python3", "-c", "import time; from agent.clock import "
                          "read_clock_synced; print(int(time.time()), read_clock_synced())"],
                         env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2]).stdout.split()
    assert int(out[0]) < 86400 * 2 and out[1] == "False"


@pytest.mark.parametrize("fake_time", ["@1970-01-02 00:00:00", "-400d"])
def test_readings_of_a_clock_that_is_not_synchronised_are_placed_by_the_hubs_clock(
        tmp_path: Path, broker: MosquittoServer, db_url: str, prefix: str,
        unsynced_kernel: Path, fake_time: str) -> None:
    hub = processes.hub(tmp_path, broker_url=broker.url, db_url=db_url, prefix=prefix,
                        batch_max_age_s="0.2").start()
    agent = shifted_agent(tmp_path, unsynced_kernel, fake_time, broker_url=broker.url,
                          prefix=prefix, device_id="pi-rtc")
    try:
        wait_hub_subscribed(hub)
        started = datetime.now(UTC)
        agent.start()
        wait_rows(db_url, 12, where="clock_synced is false")
    finally:
        agent.stop()
        hub.stop()
    ended = datetime.now(UTC)
    rows = query(db_url, "select seq, ts, agent_ts, clock_synced from metrics order by seq")
    # The first readings, before the agent heard what the hub reads, are plain version 1:
    # stamped by the wrong clock with nothing to say so, they are quarantined (a reading
    # older than the history kept), never filed under 1970 or 400 days ago.
    placed = [r for r in rows if r[3] is False]
    assert len(placed) >= 12
    for _, ts, agent_ts, _ in placed:
        assert started - timedelta(seconds=2) <= ts <= ended
        assert agent_ts < started - timedelta(days=300)
    offsets = {ts - agent_ts for _, ts, agent_ts, _ in placed}
    assert len(offsets) == 1  # one offset for the session: a redelivery gets the same key
    seqs = [r[0] for r in placed]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    unplaced = query(db_url, "select count(*) from quarantine where "
                     "strpos(reason, 'older than the') > 0")[0][0]
    assert unplaced + len(rows) >= seqs[-1]  # every reading is a row or a quarantine record
    assert query(db_url, "select count(*) from metrics where clock_synced is null")[0][0] == 0
    partitions = [r[0] for r in query(db_url, "select c.relname from pg_inherits i join "
                                      "pg_class c on c.oid = i.inhrelid")]
    assert all(p >= f"metrics_{started - timedelta(days=1):%Y%m%d}" for p in partitions), \
        partitions
    (reason,) = query(db_url, "select reason from clock_offsets")[0]
    assert "clock off by" in reason
    assert "Traceback" not in agent.log() and "Traceback" not in hub.log()


def test_readings_spooled_before_the_network_came_up_keep_their_real_times(
        tmp_path: Path, db_url: str, prefix: str, unsynced_kernel: Path) -> None:
    # A Pi boots at "1970" with no network: its readings go to the spool. It knows from
    # its last run that the hub reads clock_synced (kept in its state directory).
    state = tmp_path / "agent-pi-boot"
    state.mkdir()
    (state / "hub-reads").write_text("clock_synced\n")
    hub_port, device_port = free_port(), free_port()
    broker = MosquittoServer(tmp_path / "mqtt", port=hub_port).start()  # persistent
    hub = processes.hub(tmp_path, broker_url=broker.url, db_url=db_url, prefix=prefix,
                        batch_max_age_s="0.2")
    # The device reaches the broker on a listener that opens when "the network comes up".
    agent = shifted_agent(tmp_path, unsynced_kernel, "@1970-01-02 00:00:00",
                          broker_url=f"mqtt://127.0.0.1:{device_port}", prefix=prefix,
                          device_id="pi-boot", spool_flush_s="1")

    def spooled() -> int:
        with sqlite3.connect(state / "spool.sqlite3") as db:
            return int(db.execute("select count(*) from readings").fetchone()[0])

    try:
        hub.start()
        wait_hub_subscribed(hub)  # its persistent session will hold what arrives
        started = datetime.now(UTC)
        agent.start()
        wait_for(lambda: spooled() >= 8, 30, "readings in the spool")
        broker.stop()
        network_up = datetime.now(UTC)
        broker = MosquittoServer(tmp_path / "mqtt", port=hub_port,
                                 extra_conf=f"listener {device_port} 127.0.0.1").start()
        wait_for(lambda: query(db_url, "select count(*) from metrics where ts > %s",
                               (network_up + timedelta(seconds=1),))[0][0] >= 4, 90,
                 "the spool replayed and live readings")
    finally:
        agent.stop()
        hub.stop()
        broker.stop()
    rows = query(db_url, "select seq, ts, agent_ts from metrics order by seq")
    seqs = [r[0] for r in rows]
    assert seqs == list(range(1, len(seqs) + 1))  # nothing lost
    assert all(agent_ts is not None and agent_ts.year == 1970 for _, _, agent_ts in rows)
    # Placed where they were taken: the spooled ones before the network came up (their
    # age told the hub how long they waited), all with one offset.
    assert len({ts - agent_ts for _, ts, agent_ts in rows}) == 1
    assert started - timedelta(seconds=2) <= rows[0][1] < network_up
    assert query(db_url, "select count(*) from quarantine") == [(0,)]
    assert "Traceback" not in agent.log() and "Traceback" not in hub.log()


def test_readings_that_waited_at_the_broker_for_the_hub_keep_their_real_times(
        tmp_path: Path, broker: MosquittoServer, db_url: str, prefix: str,
        unsynced_kernel: Path) -> None:
    # The hub is away while the Pi (clock 400 days back) starts: its readings wait in the
    # hub's session at the broker. The broker's wait is counted (Message Expiry Interval).
    hub = processes.hub(tmp_path, broker_url=broker.url, db_url=db_url, prefix=prefix,
                        batch_max_age_s="0.2").start()
    wait_hub_subscribed(hub)
    hub.stop()  # its session stays at the broker, and its retained capability message
    agent = shifted_agent(tmp_path, unsynced_kernel, "-400d", broker_url=broker.url,
                          prefix=prefix, device_id="pi-wait")
    published = Counter(broker, f"{prefix}/pi-wait/metrics")
    try:
        started = datetime.now(UTC)
        agent.start()
        wait_for(lambda: len(published.payloads) >= 16, 30, "readings queued for the hub")
        hub_back = datetime.now(UTC)
        hub.start()
        wait_for(lambda: query(db_url, "select count(*) from metrics where ts > %s",
                               (hub_back + timedelta(seconds=1),))[0][0] >= 4, 60,
                 "the queued and the live readings")
    finally:
        published.stop()
        agent.stop()
        hub.stop()
    rows = query(db_url, "select seq, ts, agent_ts from metrics where clock_synced is false "
                 "order by seq")
    seqs = [seq for seq, _, _ in rows]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert len({ts - agent_ts for _, ts, agent_ts in rows}) == 1
    queued = [ts for _, ts, _ in rows if ts < hub_back]
    assert len(queued) >= 8  # placed when they were taken, not when the hub came back
    assert min(queued) >= started - timedelta(seconds=2)
    # Readings taken before the agent heard the capability message say nothing about their
    # clock: 400 days old, they are quarantined with the reason, never filed under that day.
    reasons = query(db_url, "select reason from quarantine")
    assert len(reasons) == seqs[0] - 1
    assert all("older than the" in str(r) for (r,) in reasons)
