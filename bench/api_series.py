"""Latency of the series endpoint (GET /api/devices/{id}/series) over a week of 1 Hz data.

Measures: wall time of one HTTP request through a real uvicorn, for ranges that hit each
resolution (60 s and 1 h per-second, 24 h and 7 d minute rollup, 90 d hour rollup), over
one device with ``--days`` of per-second readings (604,800 rows for 7 days). Baseline in
the same run: the same SQL through ``Store.query`` without HTTP or JSON, so the ratio is
the API's own overhead. Builds its input before timing; a private PostgreSQL on a free port.

    python3 bench/api_series.py [--days 7] [--requests 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hub.api import HttpServer, HubHealth, create_app
from hub.read import SERIES_COLUMNS, FleetReader
from hub.rollup import choose_resolution, series_sql
from hub.store import Store, StorePool
from tests.readings import series, write_readings
from tests.servers import PostgresServer, free_port


def median_ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleetpulse-bench-"))
    work.chmod(0o755)
    pg = PostgresServer(work / "pg").init().start()
    try:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("create database bench")
        url = pg.url_for("bench")
        store = Store(url)
        store.migrate()
        now = datetime.now(UTC).replace(microsecond=0)
        total = int(args.days * 86400)
        start = now - timedelta(seconds=total)
        built = time.perf_counter()
        for offset in range(0, total, 20_000):
            chunk = series("bench-1", start + timedelta(seconds=offset),
                           min(20_000, total - offset), cpu_percent=lambda i: float(i % 100),
                           cpu_per_core_percent=lambda i: [float(i % 100)] * 4,
                           memory_percent=40.0, sensors_cpu_celsius=50.0)
            write_readings(store, chunk, received_at=now)
        store.query("analyze")  # as autovacuum would have by now
        print(f"input: {total:,} rows of one device written in "
              f"{time.perf_counter() - built:.1f} s", file=sys.stderr)

        pool = StorePool(url, size=4)
        app = create_app(FleetReader(pool), streamer=pool,
                         health=lambda: HubHealth(True, None, 0), now=lambda: now)
        server = HttpServer(app, "127.0.0.1", free_port())
        server.start()
        client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60)
        ranges = [("60 s", 60), ("1 h", 3600), ("24 h", 86400), ("7 d", 7 * 86400),
                  ("90 d", 90 * 86400)]
        print(f"series endpoint, {total:,} rows, {args.requests} requests each, "
              f"PostgreSQL {store.query('show server_version')[0]['server_version']}")
        for label, seconds in ranges:
            begin = now - timedelta(seconds=seconds)
            params = {"start": begin.isoformat(), "end": now.isoformat()}
            resolution = choose_resolution(begin, now)
            sql = series_sql(resolution, SERIES_COLUMNS)
            http, db = [], []
            points = 0
            for _ in range(args.requests + 2):  # two warm-up rounds, not counted
                t = time.perf_counter()
                body = client.get("/api/devices/bench-1/series", params=params).json()
                http.append(time.perf_counter() - t)
                t = time.perf_counter()
                store.query(sql, {"device": "bench-1", "start": begin, "end": now})
                db.append(time.perf_counter() - t)
                points = len(body["t"])
            (h50, h95), (d50, _) = median_ms(http[2:]), median_ms(db[2:])
            print(f"  {label:>5}: {resolution.source:>3} step {resolution.step_s:>5} s, "
                  f"{points:4d} points: HTTP median {h50:7.1f} ms (p95 {h95:7.1f}); "
                  f"SQL alone {d50:7.1f} ms ({h50 / d50:.2f}×)")
        client.close()
        server.stop()
        pool.close()
        store.close()
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
