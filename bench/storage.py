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
are reported apart.

    python3 -m bench.storage                    # 200,000 rows, batches of 5,000
    python3 -m bench.storage --rows 1000000 --batch 500

Writes bench/results/storage.json.
"""

from __future__ import annotations

import argparse
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

from bench.hub_ingest import PREFIX, template
from hub.batch import DeviceEvents
from hub.store import Store
from hub.validate import Accepted, validate
from shared.schema import metrics_columns, metrics_row
from tests.servers import PostgresServer


def build_rows(count: int, devices: int, small: bool) -> list[tuple[Any, ...]]:
    """``count`` rows: ``devices`` devices, one reading a second each, ending now."""
    now = datetime.now(UTC).replace(microsecond=0)
    payload = template(uuid.uuid4().hex, small=small).replace(
        b"2000-01-01T00:00:00.001000Z", now.strftime("%Y-%m-%dT%H:%M:%S.001000Z").encode()
    ).replace(b"999999999999", b"1").replace(b"bench-XXXXX", b"bench-00000")
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
        with conn.cursor() as cur:
            stored = cur.execute("select count(*) from metrics").fetchone()[0]  # type: ignore[index]
            size = cur.execute(
                "select sum(pg_total_relation_size(inhrelid)), sum(pg_relation_size(inhrelid)),"
                " sum(pg_indexes_size(inhrelid)) from pg_inherits "
                "where inhparent = 'metrics'::regclass").fetchone()
            # Rollups: as the load left them (each batch updates every device's minute and
            # hour row), after a plain VACUUM (what autovacuum does: space reusable, files
            # not shrunk) and after VACUUM FULL (the live rows alone).
            rollups: dict[str, Any] = {}
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
                rollups[rollup] = {"after_load": loaded, "after_vacuum": vacuumed,
                                   "live": live, "fillfactor": int(fillfactor)}
            widths = cur.execute(
                "select avg(pg_column_size(m.*)), avg(pg_column_size(disk_partitions)) + "
                "avg(pg_column_size(disk_per_disk)) + avg(pg_column_size(network_per_interface))"
                " + avg(pg_column_size(sensors_temperatures)) from metrics m").fetchone()
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
    print(f"\nStorage: {args.rows:,} rows ({len(template('x' * 32, small=args.payload == 'small'))}"
          f"-byte messages, {args.devices} devices), batches of {args.batch:,}, commit per "
          f"batch; {describe_machine(info)}")
    base = results["executemany INSERT"]["rows_per_s"]
    print(table(["method", "rows/s", "× executemany"],
                [[k, v["rows_per_s"], v["rows_per_s"] / base] for k, v in results.items()]))
    print(f"bytes per stored row (metrics partitions, after VACUUM): {per_row['total']:.0f} "
          f"(heap+TOAST {per_row['heap_and_toast']:.0f}, indexes {per_row['indexes']:.0f}; "
          f"tuple {per_row['avg_tuple_bytes']:.0f}, of which jsonb "
          f"{per_row['jsonb_columns_bytes']:.0f}); rollup tables: {rollups}")
    path = write_result(args.label, {
        "benchmark": "storage", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": info, "rows": args.rows, "batch": args.batch, "devices": args.devices,
        "payload": args.payload, "methods": results, "stored_rows": stored,
        "bytes_per_row": per_row, "rollup_bytes": rollups})
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
