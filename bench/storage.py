"""Measure the hub's write path in isolation, and what one stored reading costs on disk.

Builds ``--rows`` readings (the message of bench/hub_ingest.py, one per device and second
over ``--devices`` devices, validated once by the hub's own validator, flattened with
``metrics_row``) before timing, then writes them into a private PostgreSQL, in batches of
``--batch`` rows with a commit per batch, three ways in the same run:

* ``Store.write`` — the hub's path: binary COPY into a temporary table, then one INSERT …
  ON CONFLICT DO NOTHING that also feeds the minute/hour rollups (metrics_1m,
  metrics_1h), plus the devices table;
* plain ``executemany`` INSERT of the same rows into ``metrics`` (psycopg pipelines it);
* plain binary COPY straight into ``metrics`` (the floor: no idempotence, no rollups).

After the Store.write load: bytes per stored row = pg_total_relation_size (heap + TOAST +
indexes) summed over the partitions of ``metrics``, divided by the rows; the rollup tables
are reported apart (bytes per rollup row after VACUUM, update churn included). From these,
the bytes one device needs per day of history (86,400 per-second rows, 1,440 minute rows,
24 hour rows) and at the hub's default retention (``retention_days``, ``rollup_minute_days``,
``rollup_hour_days``), and how many device-days fit in 500 MB and 8 GB (Supabase's free and
Pro database sizes).

    python3 -m bench.storage                    # 200,000 rows, batches of 5,000
    python3 -m bench.storage --rows 1000000 --batch 500
    python3 -m bench.storage --payload pi      # a Raspberry Pi's full message (4 cores, ...)

Writes bench/results/storage.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import ROOT, describe_machine, machine, progress, table, write_result

sys.path.insert(0, str(ROOT))

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb, set_json_dumps

from bench.hub_ingest import PREFIX, patch, template
from hub.ingest.batch import DeviceEvents
from hub.ingest.validate import Accepted, validate
from hub.store import Store
from shared.config import HubSettings
from shared.schema import metrics_columns, metrics_row
from tests.servers import PostgresServer


def build_rows(count: int, devices: int, small: bool) -> list[tuple[Any, ...]]:
    """``count`` rows: ``devices`` devices, one reading a second each, ending now."""
    now = datetime.now(UTC).replace(microsecond=0)
    payload = patch(template(uuid.uuid4().hex, small=small), "bench-00000", 1,
                    now + timedelta(milliseconds=1))
    result = validate(f"{PREFIX}/bench-00000/metrics", payload, now, PREFIX)
    assert isinstance(result, Accepted), result
    base = result.value
    seconds = -(-count // devices)
    start = now - timedelta(seconds=seconds)
    rows = []
    for i in range(count):
        message = dict(base)
        message["device_id"] = f"bench-{i % devices:05d}"
        message["seq"] = i // devices + 1
        message["ts"] = start + timedelta(seconds=i // devices)
        rows.append(metrics_row(message, message["ts"] + timedelta(milliseconds=20)))  # type: ignore[arg-type]
    return rows


def timed_batches(rows: list[tuple[Any, ...]], batch: int, write: Any, what: str) -> float:
    t0 = time.perf_counter()
    for n, start in enumerate(range(0, len(rows), batch)):
        write(rows[start:start + batch])
        if n % 40 == 39:
            progress(f"{what}: {start + batch:,}/{len(rows):,} rows")
    return len(rows) / (time.perf_counter() - t0)


def rollup_sizes(cur: psycopg.Cursor[Any]) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes (heap, TOAST, indexes) and rows of each rollup table."""
    sizes: dict[str, int] = {}
    rows: dict[str, int] = {}
    for rollup in ("metrics_1m", "metrics_1h"):
        if cur.execute("select to_regclass(%s)", (rollup,)).fetchone()[0]:  # type: ignore[index]
            sizes[rollup] = int(cur.execute(
                "select coalesce(sum(pg_total_relation_size(c.oid)), 0) from pg_class c "
                "where c.oid = %s::regclass or c.oid in (select inhrelid from pg_inherits "
                "where inhparent = %s::regclass)", (rollup, rollup)).fetchone()[0])  # type: ignore[index]
            rows[rollup] = int(cur.execute(sql.SQL("select count(*) from {}").format(
                sql.Identifier(rollup))).fetchone()[0])  # type: ignore[index]
    return sizes, rows


def device_day_bytes(metrics_row_bytes: float, rollups: dict[str, int],
                     rollup_rows: dict[str, int]) -> dict[str, Any]:
    """Bytes one device stores per day of history, and at the hub's default retention."""
    defaults = {f.name: f.default for f in dataclasses.fields(HubSettings)}
    per_row = {name: int(rollups[name]) / max(1, rollup_rows[name]) for name in rollups}
    day = {"metrics": 86_400 * metrics_row_bytes,
           "metrics_1m": 1_440 * per_row.get("metrics_1m", 0.0),
           "metrics_1h": 24 * per_row.get("metrics_1h", 0.0)}
    keep = {"metrics": defaults["retention_days"], "metrics_1m": defaults["rollup_minute_days"],
            "metrics_1h": defaults["rollup_hour_days"]}
    retained = sum(day[name] * keep[name] for name in day)
    return {"rollup_bytes_per_row": per_row, "bytes_per_day": day, "retention_days": keep,
            "bytes_per_device_at_default_retention": retained,
            "fits": {label: {"per_second_device_days": size / day["metrics"],
                             "devices_at_default_retention": size / retained}
                     for label, size in (("500 MB", 500e6), ("8 GB", 8e9))}}


def format_device_days(d: dict[str, Any]) -> str:
    day, keep = d["bytes_per_day"], d["retention_days"]
    lines = [f"one device-day: per-second rows {day['metrics'] / 1e6:.1f} MB, minute rollups "
             f"{day['metrics_1m'] / 1e6:.2f} MB, hour rollups {day['metrics_1h'] / 1e6:.3f} MB",
             f"one device at the default retention ({keep['metrics']} d per-second, "
             f"{keep['metrics_1m']} d minute, {keep['metrics_1h']} d hour): "
             f"{d['bytes_per_device_at_default_retention'] / 1e9:.2f} GB"]
    for label, fit in d["fits"].items():
        lines.append(f"{label}: {fit['per_second_device_days']:.1f} device-days of per-second "
                     f"history; {fit['devices_at_default_retention']:.2f} devices at the "
                     "default retention")
    return "\n".join(lines)


def main() -> int:
    if "--tiers" in sys.argv:
        from bench.tiers import main as tiers_main

        return tiers_main([a for a in sys.argv[1:] if a != "--tiers"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiers", action="store_true", help="measure the storage tiers "
                        "instead (bench/tiers.py): bytes, compaction CPU, queries, export")
    parser.add_argument("--rollup-fillfactor", type=int, default=None,
                        help="set the rollup tables' fillfactor before loading (100: as "
                        "before migration 0004, the baseline of the rollup bloat)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--payload", choices=["small", "pi"], default="small")
    parser.add_argument("--label", default="storage")
    args = parser.parse_args()
    info = machine()
    progress(f"building {args.rows:,} rows")
    rows = build_rows(args.rows, args.devices, args.payload == "small")
    days = {r[3].astimezone(UTC).date() for r in rows}

    workdir = Path(tempfile.mkdtemp(prefix="fleetpulse-storage-"))
    pg = PostgresServer(workdir / "pg").init().start()
    results: dict[str, Any] = {}
    try:
        subprocess.run([sys.executable, "-m", "hub.main", "migrate", "--db", pg.url], cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL)
        store = Store(pg.url)
        store.ensure_partitions(days)
        if args.rollup_fillfactor:
            with psycopg.connect(pg.url, autocommit=True) as admin:
                for rollup in ("metrics_1m", "metrics_1h"):
                    admin.execute(sql.SQL("alter table {} set (fillfactor = {})").format(
                        sql.Identifier(rollup), sql.Literal(args.rollup_fillfactor)))
        set_json_dumps(orjson.dumps)
        columns = metrics_columns()
        names = sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
        types = [c.pg_type.replace("double precision", "float8") for c in columns]
        insert = sql.SQL("insert into metrics ({}) values ({})").format(
            names, sql.SQL(", ").join(sql.Placeholder() * len(columns)))
        copy_sql = sql.SQL("copy metrics ({}) from stdin (format binary)").format(names)
        conn = psycopg.connect(pg.url, autocommit=False)

        def reset() -> None:
            with conn.cursor() as cur:
                cur.execute("truncate metrics, devices")
                for rollup in ("metrics_1m", "metrics_1h"):
                    if cur.execute("select to_regclass(%s)", (rollup,)).fetchone()[0]:  # type: ignore[index]
                        cur.execute(sql.SQL("truncate {}").format(sql.Identifier(rollup)))
            conn.commit()
            conn.execute("checkpoint")

        def store_write(batch: list[tuple[Any, ...]]) -> None:
            events = DeviceEvents()
            for row in batch:
                events.seen[row[0]] = (row[3], row[5])
            store.write(batch, [], events)

        # Parameters (not COPY) need the jsonb values wrapped: done before timing.
        jsonb = [i for i, c in enumerate(columns) if c.pg_type == "jsonb"]
        wrapped = {id(batch_row): tuple(Jsonb(v) if i in jsonb else v
                                        for i, v in enumerate(batch_row)) for batch_row in rows}

        def executemany(batch: list[tuple[Any, ...]]) -> None:
            with conn.cursor() as cur:
                cur.executemany(insert, [wrapped[id(r)] for r in batch])
            conn.commit()

        def copy(batch: list[tuple[Any, ...]]) -> None:
            with conn.cursor() as cur, cur.copy(copy_sql) as cp:
                cp.set_types(types)
                for row in batch:
                    cp.write_row(row)
            conn.commit()

        for name, fn in (("executemany INSERT", executemany), ("plain COPY binary", copy),
                         ("Store.write", store_write)):
            reset()
            progress(f"{name}: {args.rows:,} rows in batches of {args.batch:,}")
            rate = timed_batches(rows, args.batch, fn, name)
            results[name] = {"rows_per_s": rate}
        # The last load was Store.write's: measure what it left on disk.
        conn.commit()
        conn.autocommit = True  # VACUUM cannot run in a transaction
        conn.execute("vacuum analyze metrics")
        conn.execute("vacuum analyze metrics_1m, metrics_1h")
        with conn.cursor() as cur:
            stored = cur.execute("select count(*) from metrics").fetchone()[0]  # type: ignore[index]
            size = cur.execute(
                "select sum(pg_total_relation_size(inhrelid)), sum(pg_relation_size(inhrelid)),"
                " sum(pg_indexes_size(inhrelid)) from pg_inherits "
                "where inhparent = 'metrics'::regclass").fetchone()
            rollups, rollup_rows = rollup_sizes(cur)
            # Rollups: as the load left them (each batch updates every device's minute and
            # hour row), after a plain VACUUM (what autovacuum does: space reusable, files
            # not shrunk) and after VACUUM FULL (the live rows alone).
            rollup_states: dict[str, Any] = {}
            for rollup in ("metrics_1m", "metrics_1h"):
                size_sql = "select pg_total_relation_size(%s::regclass)"
                loaded = cur.execute(size_sql, (rollup,)).fetchone()[0]  # type: ignore[index]
                cur.execute(sql.SQL("vacuum {}").format(sql.Identifier(rollup)))
                vacuumed = cur.execute(size_sql, (rollup,)).fetchone()[0]  # type: ignore[index]
                cur.execute(sql.SQL("vacuum full {}").format(sql.Identifier(rollup)))
                live = cur.execute(size_sql, (rollup,)).fetchone()[0]  # type: ignore[index]
                fillfactor = cur.execute(
                    "select coalesce((select option_value from pg_options_to_table("
                    "reloptions) where option_name = 'fillfactor'), '100') from pg_class "
                    "where oid = %s::regclass", (rollup,)).fetchone()[0]  # type: ignore[index]
                rollup_states[rollup] = {"after_load": loaded, "after_vacuum": vacuumed,
                                   "live": live, "fillfactor": int(fillfactor)}
            widths = cur.execute(
                "select avg(pg_column_size(m.*)), avg(pg_column_size(disk_partitions)) + "
                "avg(pg_column_size(disk_per_disk)) + avg(pg_column_size(network_per_interface))"
                " + avg(pg_column_size(sensors_temperatures)) from metrics m").fetchone()
        # Every Store.write batch updated each rollup row again: the sizes above carry that
        # churn (as a live table does between autovacuums); rewritten, they are compact.
        conn.execute("vacuum full metrics_1m, metrics_1h")
        with conn.cursor() as cur:
            compact, _ = rollup_sizes(cur)
        conn.close()
        store.close()
    finally:
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    assert size is not None and widths is not None
    total, heap, indexes = (int(x) for x in size)
    per_row = {"total": total / stored, "heap_and_toast": (total - indexes) / stored,
               "indexes": indexes / stored, "heap_only": heap / stored,
               "avg_tuple_bytes": float(widths[0]), "jsonb_columns_bytes": float(widths[1])}
    device_day = device_day_bytes(per_row["total"], compact, rollup_rows)
    device_day_churned = device_day_bytes(per_row["total"], rollups, rollup_rows)
    print(f"\nStorage: {args.rows:,} rows ({len(template('x' * 32, small=args.payload == 'small'))}"
          f"-byte messages, {args.devices} devices), batches of {args.batch:,}, commit per "
          f"batch; {describe_machine(info)}")
    base = results["executemany INSERT"]["rows_per_s"]
    print(table(["method", "rows/s", "× executemany"],
                [[k, v["rows_per_s"], v["rows_per_s"] / base] for k, v in results.items()]))
    print(f"bytes per stored row (metrics partitions, after VACUUM): {per_row['total']:.0f} "
          f"(heap+TOAST {per_row['heap_and_toast']:.0f}, indexes {per_row['indexes']:.0f}; "
          f"tuple {per_row['avg_tuple_bytes']:.0f}, of which jsonb "
          f"{per_row['jsonb_columns_bytes']:.0f}); rollup tables ({rollup_rows} rows): "
          f"{rollups} bytes after the load, {compact} after VACUUM FULL")
    print("With the rollups compact (VACUUM FULL):")
    print(format_device_days(device_day))
    print("With the rollups as the load left them (every batch rewrote their rows):")
    print(format_device_days(device_day_churned))
    path = write_result(args.label, {
        "benchmark": "storage", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": info, "rows": args.rows, "batch": args.batch, "devices": args.devices,
        "payload": args.payload, "methods": results, "stored_rows": stored,
        "bytes_per_row": per_row, "rollup_bytes": rollups, "rollup_rows": rollup_rows,
        "rollup_bytes_compact": compact, "rollup_states": rollup_states,
        "device_day": device_day,
        "device_day_rollups_churned": device_day_churned})
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
