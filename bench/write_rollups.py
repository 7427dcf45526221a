"""Cost of keeping the minute and hour rollups in the insert statement.

Measures: rows/s of ``Store.write`` (COPY into a temp table, then one statement that
inserts into ``metrics`` and upserts both rollups), batches of ``--batch`` rows, commit
per batch, ``--rows`` rows of 100 devices at 1 Hz. Baseline in the same run, on a fresh
database: the same COPY and ``INSERT … ON CONFLICT DO NOTHING`` without the rollups (the
statement before rollups existed). A private PostgreSQL on a free port.

    python3 bench/write_rollups.py [--rows 200000] [--batch 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hub.store
from hub.ingest.batch import DeviceEvents
from hub.store import Store
from shared.schema import metrics_columns, metrics_row
from tests.readings import reading
from tests.servers import PostgresServer

_NAMES = ", ".join(c.name for c in metrics_columns())
PLAIN = (f"with ins as (insert into metrics ({_NAMES}) select {_NAMES} from metrics_in "
         "on conflict do nothing returning 1) select count(*) from ins").encode()


def run(url: str, rows: list[tuple[object, ...]], batch: int, plain: bool) -> float:
    store = Store(url)
    store.migrate()
    saved = hub.store._INSERT_WITH_ROLLUPS
    if plain:
        hub.store._INSERT_WITH_ROLLUPS = PLAIN
    try:
        store.write(rows[:batch], [], DeviceEvents())  # partitions, caches; not timed
        t = time.perf_counter()
        for i in range(batch, len(rows), batch):
            store.write(rows[i:i + batch], [], DeviceEvents())
        elapsed = time.perf_counter() - t
    finally:
        hub.store._INSERT_WITH_ROLLUPS = saved
        store.close()
    return (len(rows) - batch) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    start = datetime(2026, 11, 23, tzinfo=UTC)
    received = datetime.now(UTC)
    rows = [metrics_row(reading(f"dev-{i % 100}", start + timedelta(seconds=i // 100),
                                seq=i // 100 + 1, cpu_percent=float(i % 100),
                                memory_percent=40.0, sensors_cpu_celsius=50.0,
                                disk_read_bytes_per_s=1e5, network_bytes_recv_per_s=2e4,
                                cpu_per_core_percent=[1.0, 2.0, 3.0, 4.0]), received)
            for i in range(args.rows)]
    work = Path(tempfile.mkdtemp(prefix="fleetpulse-bench-"))
    work.chmod(0o755)
    pg = PostgresServer(work / "pg").init().start()
    try:
        results: dict[str, list[float]] = {"rollups": [], "plain": []}
        for round_ in range(args.rounds):  # alternated, so a busy moment hits both
            for name, plain in (("plain", True), ("rollups", False)):
                db = f"{name}{round_}"
                with psycopg.connect(pg.url, autocommit=True) as conn:
                    conn.execute(f"create database {db}")
                results[name].append(run(pg.url_for(db), rows, args.batch, plain))
        best = {k: max(v) for k, v in results.items()}
        print(f"Store.write, {args.rows:,} rows of 100 devices, batch {args.batch:,}: "
              f"with minute+hour rollups {best['rollups']:,.0f} rows/s; plain insert same run "
              f"{best['plain']:,.0f} rows/s ({best['rollups'] / best['plain']:.2f}×); best of "
              f"{args.rounds}, all runs: rollups "
              f"{', '.join(f'{v:,.0f}' for v in results['rollups'])}; plain "
              f"{', '.join(f'{v:,.0f}' for v in results['plain'])}")
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
