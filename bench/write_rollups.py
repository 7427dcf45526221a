"""Cost of the hub's write path: the COPY fast path, the duplicate-safe path, plain COPY.

Measures: rows/s of ``Store.write`` on new readings (the fast path: COPY straight into the
day's partition, rollups upserted from the batch's arrays), and of the same writes forced
through the duplicate-safe path (COPY into a temp table, then one statement that inserts
with ``ON CONFLICT DO NOTHING`` and rolls up what it inserted: what every batch took before
the fast path, and what a batch holding a redelivery takes now); batches of ``--batch``
rows, commit per batch, ``--rows`` rows of 100 devices at 1 Hz. Baseline in the same run,
each on a fresh database: a plain binary COPY into ``metrics`` with no rollups and no
device updates (the minimal hub's write). A private PostgreSQL on a free port; server
CPU per row from the backend's /proc ticks.

    python3 -m bench.write_rollups [--rows 200000] [--batch 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
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
# Every reading looks older than the cold tier's end: the duplicate-safe path for each batch.
_ALWAYS_SAFE = b"select timestamptz '9999-01-01 00:00:00+00'"
_TYPES = [c.pg_type.replace("double precision", "float8") for c in metrics_columns()]
VARIANTS = ("fast", "safe", "plain")


def _backend_ticks(conn: psycopg.Connection[object]) -> int:
    pid = conn.info.backend_pid
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _plain_copy(conn: psycopg.Connection[object], rows: list[tuple[object, ...]]) -> None:
    with conn.cursor() as cur, cur.copy(
            f"copy metrics ({_NAMES}) from stdin (format binary)".encode()) as copy:
        copy.set_types(_TYPES)
        for row in rows:
            copy.write_row(row)
    conn.commit()


def run(url: str, rows: list[tuple[object, ...]], batch: int,
        variant: str) -> tuple[float, float]:
    """Return (rows/s, server CPU µs per row) of one variant on a fresh database."""
    store = Store(url)
    store.migrate()
    saved = hub.store._COLD_END
    if variant == "safe":
        hub.store._COLD_END = _ALWAYS_SAFE
    try:
        store.write(rows[:batch], [], DeviceEvents())  # partitions, caches; not timed
        conn = store._connection()
        ticks = _backend_ticks(conn)
        t = time.perf_counter()
        for i in range(batch, len(rows), batch):
            if variant == "plain":
                _plain_copy(conn, rows[i:i + batch])
            else:
                store.write(rows[i:i + batch], [], DeviceEvents())
        elapsed = time.perf_counter() - t
        server_s = (_backend_ticks(conn) - ticks) / os.sysconf("SC_CLK_TCK")
    finally:
        hub.store._COLD_END = saved
        store.close()
    n = len(rows) - batch
    return n / elapsed, server_s / n * 1e6


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
        results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
        for round_ in range(args.rounds):  # alternated, so a busy moment hits each
            for name in VARIANTS:
                db = f"{name}{round_}"
                with psycopg.connect(pg.url, autocommit=True) as conn:
                    conn.execute(f"create database {db}")
                results[name].append(run(pg.url_for(db), rows, args.batch, name))
                print(f"  round {round_ + 1}/{args.rounds} {name}: "
                      f"{results[name][-1][0]:,.0f} rows/s, server "
                      f"{results[name][-1][1]:.1f} µs/row", flush=True)
        best = {k: max(v) for k, v in results.items()}
        print(f"Store.write, {args.rows:,} rows of 100 devices, batch {args.batch:,}, best of "
              f"{args.rounds}: fast path {best['fast'][0]:,.0f} rows/s; duplicate-safe path "
              f"{best['safe'][0]:,.0f} ({best['fast'][0] / best['safe'][0]:.2f}×); plain COPY "
              f"without rollups {best['plain'][0]:,.0f}. PostgreSQL CPU per row (median): "
              + "; ".join(f"{k} {sorted(x[1] for x in v)[len(v) // 2]:.1f} µs"
                          for k, v in results.items()))
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
