"""What the alert watcher costs per reading, and how that grows with the stored history.

    python3 -m bench.watch_cost [--devices 1000] [--history 60,600,1800] [--rounds 6]

For each history length: a PostgreSQL of its own (tests/servers.py), migrated; ``--devices``
devices send one reading a second (the hub_ingest bench's message, stored by the hub's own
``Store.write``) for ``history`` seconds; then each round stores 5 s more and runs one
``AlertWatcher.load()``, as the hub's alerts thread does every ``alert_check_s``.

Reported per history length (medians over the rounds after the first):

- the watcher's CPU per new reading (this process: the hub's side);
- PostgreSQL's time per row for the round's readings query: the shipped form (one
  primary-key range per device, hub/watch.py ``_READINGS``) against the baseline, the form
  before it (each device's whole window, what the watcher already holds filtered out after
  the join), same parameters, same rows (checked);
- a forecast step (hub/detect/outlook.py ``Series``): the shipped one-stream ``Line`` in
  plain floats against ``Linear(k=1)`` on numpy arrays.

Writes bench/results/watch_cost.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import describe_machine, machine, progress, table, write_result
from bench.hub_ingest import PREFIX, patch, template
from hub.alerts import DEFAULT_RULES
from hub.detect.forecast import Line, Linear
from hub.detect.outlook import WINDOW, Series
from hub.ingest.batch import Ack, Batch, Inbound
from hub.ingest.validate import validate
from hub.store import Store
from hub.watch import _READINGS, AlertWatcher
from tests.servers import PostgresServer

ROUND_S = 5
SHIPPED_RANGE = (
    "join lateral (select * from metrics m where m.device_id = d.device_id "
    "and m.ts > greatest(d.last_seen - make_interval(secs => %(window)s), k.ts) "
    "and m.ts <= d.last_seen offset 0) m on true order by m.device_id, m.ts")
# The baseline: the query before, whose lateral the planner flattened into a join.
assert SHIPPED_RANGE in _READINGS, "hub/watch.py's query changed: update the baseline here"
FLATTENED = _READINGS.replace(SHIPPED_RANGE, (
    "join lateral (select * from metrics m where m.device_id = d.device_id "
    "and m.ts > d.last_seen - make_interval(secs => %(window)s) and m.ts <= d.last_seen "
    "and (k.ts is null or m.ts > k.ts)) m on true order by m.device_id, m.ts"))


class Fleet:
    """The bench's devices, one reading a second each, stored by the hub's own code."""

    def __init__(self, devices: int, start: datetime) -> None:
        self.devices, self.start = devices, start
        self.payload = template(str(uuid.uuid4()), small=True)

    def second(self, s: int) -> Batch:
        batch = Batch(opened_at=0)
        ts = self.start + timedelta(seconds=s)
        for d in range(self.devices):
            device = f"bench-{d:05d}"
            payload = patch(self.payload, device, s + 1, ts)
            message = Inbound(f"{PREFIX}/{device}/metrics", payload, ts, Ack(0, 1, 0))
            batch.add(message, validate(message.topic, payload, ts + timedelta(seconds=0.1),
                                        PREFIX))
        return batch


def query_us_per_row(store: Store, text: str, params: dict[str, Any]) -> tuple[float, int]:
    started = time.perf_counter()
    rows = store.query(text, params)
    return 1e6 * (time.perf_counter() - started) / max(1, len(rows)), len(rows)


def watcher_run(devices: int, history_s: int, rounds: int, workdir: Path) -> dict[str, Any]:
    pg = PostgresServer(workdir / f"pg-{history_s}").init().start()
    try:
        store = Store(pg.create_database("watch"))
        store.migrate()
        fleet = Fleet(devices, datetime.now(UTC) - timedelta(seconds=history_s + 60))
        progress(f"{history_s} s of history: storing {devices * history_s:,} readings")
        for s in range(history_s):
            batch = fleet.second(s)
            store.write(batch.rows, batch.quarantine, batch.devices)
        watcher = AlertWatcher(Store(store.url, application_name="watch"), lambda t, p: None,
                               PREFIX, DEFAULT_RULES)
        watcher.load()
        cpu, shipped, flattened = [], [], []
        for r in range(rounds):
            known = dict(watcher._newest)  # what the round's query starts from
            for s in range(history_s + ROUND_S * r, history_s + ROUND_S * (r + 1)):
                batch = fleet.second(s)
                store.write(batch.rows, batch.quarantine, batch.devices)
            params = {"window": watcher._window_s, "known_ids": list(known),
                      "known_ts": list(known.values())}
            a, rows_a = query_us_per_row(store, _READINGS, params)
            b, rows_b = query_us_per_row(store, FLATTENED, params)
            assert rows_a == rows_b == devices * ROUND_S, (rows_a, rows_b)
            started = time.thread_time()
            watcher.load()
            per_reading = 1e6 * (time.thread_time() - started) / (devices * ROUND_S)
            if r:  # the first round warms caches
                cpu.append(per_reading)
                shipped.append(a)
                flattened.append(b)
            progress(f"  round {r}: watcher {per_reading:.1f} µs CPU a reading; query "
                     f"{a:.1f} µs a row, flattened form {b:.1f}")
        store.close()
        return {"history_s": history_s, "devices": devices,
                "watcher_cpu_us_per_reading": statistics.median(cpu),
                "query_us_per_row": statistics.median(shipped),
                "flattened_query_us_per_row": statistics.median(flattened),
                "rounds": {"cpu": cpu, "query": shipped, "flattened": flattened}}
    finally:
        pg.stop()


def forecast_step_us(make: Any, steps: int = 20_000) -> float:
    series = Series(80.0, make_model=make)
    started = time.thread_time()
    for i in range(steps):
        series._close_step(50.0 + 0.01 * i)
    return 1e6 * (time.thread_time() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--history", default="60,600,1800",
                        help="seconds of history, comma-separated")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    info = machine()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for history_s in (int(h) for h in args.history.split(",")):
            runs.append(watcher_run(args.devices, history_s, args.rounds, Path(tmp)))
    line = forecast_step_us(lambda: Line(window=WINDOW))
    linear = forecast_step_us(lambda: Linear(k=1, window=WINDOW))
    print(f"\nAlert watcher, {args.devices} devices at 1 reading/s, rounds of {ROUND_S} s; "
          f"{describe_machine(info)}")
    print(table(["history s", "watcher µs CPU/reading", "query µs/row", "flattened µs/row",
                 "flattened / shipped"],
                [[r["history_s"], round(r["watcher_cpu_us_per_reading"], 1),
                  round(r["query_us_per_row"], 1), round(r["flattened_query_us_per_row"], 1),
                  round(r["flattened_query_us_per_row"] / r["query_us_per_row"], 2)]
                 for r in runs]))
    print(f"forecast step: Line {line:.1f} µs, Linear(k=1) {linear:.1f} µs "
          f"({linear / line:.1f}x)")
    path = write_result("watch_cost", {"machine": info, "round_s": ROUND_S, "runs": runs,
                                       "forecast_step_us": {"line": line, "linear_k1": linear}})
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    main()
