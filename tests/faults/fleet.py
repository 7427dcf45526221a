"""A small fleet for fault tests: private broker, hub, agents; and the final accounting.

Every fault test ends with :meth:`Fleet.account`: for every device and agent session,
stored ``seq`` values have no gaps and no duplicates, and every reading an agent says it
took is a row (or a quarantine record); and with :meth:`Fleet.wait_rollups_agree`: every
minute and hour rollup counts exactly the stored readings.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from tests import processes
from tests.processes import Process, query
from tests.servers import MosquittoServer, wait_for

_STOPPED = re.compile(r"Stopped after (\d+) readings \(session (\w+)\)")


@dataclass
class Accounting:
    sent: int = 0  # readings the agents took (from their stop lines; see below)
    rows: int = 0
    quarantined: int = 0
    lost: int = 0
    duplicated: int = 0
    gaps: list[str] = field(default_factory=list)

    def line(self, name: str) -> str:
        return (f"{name}: sent {self.sent}, rows {self.rows}, quarantined {self.quarantined}, "
                f"lost {self.lost}, duplicated {self.duplicated}")


class Fleet:
    def __init__(self, workdir: Path, db_url: str, prefix: str, *, agents: int = 3,
                 interval_s: float = 0.1, broker: MosquittoServer | None = None,
                 hub_settings: dict[str, str] | None = None,
                 agent_settings: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.db_url = db_url
        self.prefix = prefix
        self.broker = broker or MosquittoServer(workdir / "mqtt", persistence=True)
        # Rollups trail the rows by up to 2 s (default 10): the accounting waits for them.
        self.hub_settings = {"batch_max_age_s": "0.2", "rollup_flush_s": "2",
                             **(hub_settings or {})}
        self.agent_settings = {"interval_s": str(interval_s), "spool_flush_s": "1",
                               **(agent_settings or {})}
        self.device_ids = [f"dev-{i}" for i in range(agents)]
        self.hub = self.new_hub()
        self.agents = {d: processes.agent(workdir, broker_url=self.broker.url, prefix=prefix,
                                          device_id=d, **self.agent_settings)
                       for d in self.device_ids}

    def new_hub(self, name: str = "hub") -> Process:
        # The same client id every time: the broker keeps this hub's session across restarts.
        return processes.hub(self.workdir, broker_url=self.broker.url, db_url=self.db_url,
                             prefix=self.prefix, name=name,
                             **{"client_id": f"{self.prefix}-hub", **self.hub_settings})

    def start_agents(self) -> None:
        for agent in self.agents.values():
            agent.start()

    def spooled(self, device_id: str) -> int:
        path = self.workdir / f"agent-{device_id}" / "spool.sqlite3"
        if not path.exists():
            return 0
        with sqlite3.connect(path) as db:
            return int(db.execute("select count(*) from readings").fetchone()[0])

    def rows(self) -> int:
        return int(query(self.db_url, "select count(*) from metrics")[0][0])

    def wait_spools_empty(self, timeout_s: float = 120) -> None:
        """Wait until spools are drained and every session's stored seqs are 1..max."""
        def settled() -> bool:
            if any(self.spooled(d) for d in self.device_ids):
                return False
            sessions = query(self.db_url, "select count(*), max(seq) from metrics "
                             "group by device_id, session_id")
            return bool(sessions) and all(count == high for count, high in sessions)

        wait_for(settled, timeout_s, "every agent's spool to drain and no seq missing",
                 interval_s=0.25)

    def stop_agents(self) -> dict[str, int]:
        """Stop agents cleanly; return readings taken per session, from their stop lines."""
        for agent in self.agents.values():
            assert agent.stop() == 0, agent.log()[-3000:]
        return self.sessions_taken()

    def sessions_taken(self) -> dict[str, int]:
        taken: dict[str, int] = {}
        for agent in self.agents.values():
            for count, session in _STOPPED.findall(agent.log()):
                taken[session] = int(count)
        return taken

    def account(self, taken: dict[str, int], timeout_s: float = 60) -> Accounting:
        """Wait for every taken reading to be stored, then count gaps and duplicates.

        ``taken`` maps the sessions that stopped cleanly to their reading counts; a session
        ended by SIGKILL has no stop line, so for it the highest stored seq stands in.
        """
        expected_min = sum(taken.values())
        try:
            wait_for(lambda: query(self.db_url, "select count(*) from metrics where "
                                   "session_id = any(%s)", (list(taken),))[0][0]
                     >= expected_min, timeout_s, f"{expected_min} rows")
        except AssertionError:
            pass  # the accounting below says what is missing
        result = Accounting()
        sessions = query(self.db_url, "select device_id, session_id, count(*), "
                         "count(distinct seq), min(seq), max(seq) from metrics "
                         "group by device_id, session_id")
        for device, session, count, distinct, low, high in sessions:
            result.rows += count
            result.duplicated += count - distinct
            sent = taken.get(session, high)
            result.sent += sent
            result.lost += max(0, sent - distinct)
            if low != 1 or high - low + 1 != distinct:
                result.gaps.append(f"{device}/{session}: {distinct} seqs in {low}..{high}")
        for session, count in taken.items():
            if session not in {s for _, s, *_ in sessions}:
                result.sent += count
                result.lost += count
        result.quarantined = int(query(self.db_url, "select count(*) from quarantine")[0][0])
        return result

    def rollups_disagree(self) -> list[str]:
        """Minutes and hours whose rollup does not count exactly the stored readings (or
        whose sum of cpu_percent differs)."""
        found = []
        for step in ("1 minute", "1 hour"):
            table = "metrics_1m" if step == "1 minute" else "metrics_1h"
            found += [f"{table} {device} {bucket}: rollup {counted}, rows {stored}"
                      for device, bucket, counted, stored in query(self.db_url, (
                          f"with m as (select device_id, date_bin('{step}', ts, "
                          "timestamptz '2000-01-01 00:00:00+00') as bucket, count(*) as n, "
                          "sum(cpu_percent) as s from metrics group by 1, 2) "
                          f"select device_id, bucket, r.readings, m.n from m full join {table} "
                          "r using (device_id, bucket) where r.readings is distinct from m.n "
                          "or abs(r.cpu_percent_sum - m.s) > 1e-6 * greatest(1, abs(m.s))"))]
        return found

    def wait_rollups_agree(self, timeout_s: float = 30) -> None:
        """Wait (the hub flushes every rollup_flush_s) until no rollup disagrees."""
        try:
            wait_for(lambda: not self.rollups_disagree(), timeout_s, "rollups to agree")
        except AssertionError:
            assert self.rollups_disagree() == [], self.logs()

    def close(self) -> None:
        for agent in self.agents.values():
            agent.kill()
        self.hub.stop()
        self.broker.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_file.name}\n{p.log()[-4000:]}"
                         for p in [self.hub, *self.agents.values()])
