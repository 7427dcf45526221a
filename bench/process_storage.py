"""Measure what a process sample costs the hub: bytes on disk, and CPU to take it in.

Builds its input before timing: ``--scans`` real process scans of this machine (the agent's
own ProcessSampler, ``--top-n`` per list), each put into a reading built by the agent's
encoder, repeated over ``--devices`` devices and ``--samples`` samples each. Then:

* hub CPU per message, back to back in this process: the hub's validation and batching
  (``validate`` + ``Batch.add``) of readings with a process section against the same
  readings without one — the difference is what a section costs the ingest loop;
* the write: ``Store.write`` of batches of those readings, with and without sections
  (wall time per message, PostgreSQL on the same machine);
* bytes per stored sample: ``pg_total_relation_size`` of ``processes`` (heap + TOAST +
  primary key) after VACUUM, divided by its rows; the baseline, same run: the same sections
  stored as one ``jsonb`` column per row with the same key. (A typed row, ~1.5–2 kB, stays
  under the ~2 kB at which PostgreSQL starts compressing a row, whatever
  ``toast_tuple_target`` says; a jsonb row of the ~3.7 kB section is compressed by TOAST.)

    python3 -m bench.process_storage                  # 20 devices x 500 samples, top 10
    python3 -m bench.process_storage --top-n 25 --samples 200

Writes bench/results/process_storage.json. CPU and time figures from a shared machine are
noisy (compare within the run); byte counts are exact.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import ROOT, describe_machine, machine, progress, table, write_result

sys.path.insert(0, str(ROOT))

import orjson
import psycopg

from agent.processes import ProcessSampler, ProcScanner
from hub.ingest.batch import Ack, Batch, Inbound
from hub.ingest.validate import validate
from hub.ingest.write import write_batch
from hub.store import Store
from shared.schema import ProcessesV1
from tests.servers import PostgresServer
from tests.unit.hub.messages import metrics

PREFIX = "fp"


def real_sections(scans: int, top_n: int) -> list[ProcessesV1]:
    """Scan this machine's processes ``scans`` times, 0.5 s apart (the first primes CPU %)."""
    sampler = ProcessSampler(ProcScanner(), top_n=top_n, memory_total_bytes=8 * 2**30)
    sampler.scan()
    out = []
    for _ in range(scans):
        time.sleep(0.5)
        out.append(sampler.sample())
    return out


def messages(devices: int, samples: int, sections: list[ProcessesV1] | None,
             start: datetime) -> list[Inbound]:
    out = []
    for d in range(devices):
        for i in range(samples):
            at = start + timedelta(seconds=10 * i)
            m = metrics(device_id=f"dev-{d:03d}", seq=i + 1, epoch_s=at.timestamp())
            if sections is not None:
                m["processes"] = sections[(d + i) % len(sections)]
            out.append(Inbound(f"{PREFIX}/dev-{d:03d}/metrics", orjson.dumps(m), at,
                               Ack(i, 1, 0)))
    return out


def ingest_us(inbound: list[Inbound], rounds: int = 3) -> float:
    """Best of ``rounds``: µs per message for validate + Batch.add."""
    best = float("inf")
    for _ in range(rounds):
        batch = Batch(opened_at=0.0)
        started = time.process_time()
        for m in inbound:
            batch.add(m, validate(m.topic, m.payload, m.received_at, PREFIX))
        best = min(best, (time.process_time() - started) / len(inbound) * 1e6)
    return best


def write_all(store: Store, inbound: list[Inbound], batch_size: int) -> float:
    """Store everything in batches the hub's way; return ms of wall time per 1,000 messages."""
    stop = threading.Event()
    started = time.perf_counter()
    for i in range(0, len(inbound), batch_size):
        batch = Batch(opened_at=0.0)
        for m in inbound[i:i + batch_size]:
            batch.add(m, validate(m.topic, m.payload, m.received_at, PREFIX))
        write_batch(store, batch, stop)
    return (time.perf_counter() - started) / len(inbound) * 1e6


def sizes(store: Store, table_name: str) -> dict[str, int]:
    row = store.query(
        f"select count(*) as rows, pg_total_relation_size('{table_name}') as total, "
        f"pg_relation_size('{table_name}') as heap, pg_indexes_size('{table_name}') as indexes "
        f"from {table_name}")[0]
    return {k: int(v) for k, v in row.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--top-n", type=int, default=10)
    parser.add_argument("--scans", type=int, default=10)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    info = machine()
    progress(f"scanning this machine's processes {args.scans} times")
    sections = real_sections(args.scans, args.top_n)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    with_s = messages(args.devices, args.samples, sections, start)
    without = messages(args.devices, args.samples, None, start)
    section_bytes = [len(orjson.dumps(s)) for s in sections]
    payload = sum(len(m.payload) for m in with_s) / len(with_s)
    payload_plain = sum(len(m.payload) for m in without) / len(without)

    progress("timing validation and batching")
    us_with, us_without = ingest_us(with_s), ingest_us(without)

    workdir = Path(tempfile.mkdtemp(prefix="fleetpulse-bench-procs-"))
    pg = PostgresServer(workdir / "pg").init().start()
    try:
        url = pg.create_database("procs")
        store = Store(url)
        store.migrate()
        progress("writing readings without sections, then with")
        # Different devices, so the second load inserts as many rows as the first.
        write_plain = write_all(store, [Inbound(m.topic.replace("dev-", "plain-"),
                                                m.payload.replace(b'"dev-', b'"plain-'),
                                                m.received_at, m.ack) for m in without],
                                args.batch)
        write_with = write_all(store, with_s, args.batch)
        store.execute([("create table processes_jsonb (device_id text not null, ts "
                        "timestamptz not null, session_id text not null, seq bigint not null, "
                        "section jsonb not null, primary key (device_id, ts, session_id, seq))",
                        ())])
        rows = store.query("select device_id, ts, session_id, seq from processes order by 1, 2")
        store.execute([("insert into processes_jsonb values (%s, %s, %s, %s, %s::jsonb)",
                        (r["device_id"], r["ts"], r["session_id"], r["seq"],
                         orjson.dumps(sections[i % len(sections)]).decode()))
                       for i, r in enumerate(rows)])
        with psycopg.connect(url, autocommit=True) as conn:  # VACUUM: no transaction
            for name in ("processes", "processes_jsonb"):
                conn.execute(f"vacuum (analyze) {name}".encode())
        typed, jsonb = sizes(store, "processes"), sizes(store, "processes_jsonb")
        store.close()
    finally:
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    per_typed = typed["total"] / typed["rows"]
    per_jsonb = jsonb["total"] / jsonb["rows"]
    n_listed = sum(len({p["pid"] for p in s["top_cpu"] + s["top_memory"]}) for s in sections)
    print(f"\nProcess samples: {args.devices} devices x {args.samples} samples, top {args.top_n} "
          f"per list ({n_listed / len(sections):.1f} distinct processes a sample); "
          f"{describe_machine(info)}")
    print(table(["", "value"], [
        ["section on the wire, bytes (mean)", round(sum(section_bytes) / len(section_bytes))],
        ["reading with / without a section, bytes", f"{payload:.0f} / {payload_plain:.0f}"],
        ["stored, bytes per sample (typed arrays)", round(per_typed)],
        ["  of which heap / primary key", f"{typed['heap'] / typed['rows']:.0f} / "
                                          f"{typed['indexes'] / typed['rows']:.0f}"],
        ["stored as jsonb, bytes per sample (same run)", round(per_jsonb)],
        ["per device-day at 10 s (8,640 samples), MB", f"{8640 * per_typed / 1e6:.1f}"],
        ["hub validate + batch, µs per reading with / without", f"{us_with:.1f} / "
                                                                f"{us_without:.1f}"],
        ["Store.write, µs per reading with / without (wall)", f"{write_with:.0f} / "
                                                              f"{write_plain:.0f}"],
    ]))
    print(f"typed arrays vs jsonb: {per_typed / per_jsonb:.2f}x the bytes; a section costs the "
          f"ingest loop {us_with - us_without:.1f} µs of CPU ({us_with / us_without:.2f}x a "
          f"plain reading) and the write {write_with - write_plain:.0f} µs of wall time")
    path = write_result("process_storage", {
        "benchmark": "process_storage", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": info, "devices": args.devices, "samples": args.samples, "top_n": args.top_n,
        "section_bytes_mean": sum(section_bytes) / len(section_bytes),
        "reading_bytes_with": payload, "reading_bytes_without": payload_plain,
        "typed": typed, "jsonb": jsonb, "bytes_per_sample": per_typed,
        "bytes_per_sample_jsonb": per_jsonb, "ingest_us_with": us_with,
        "ingest_us_without": us_without, "write_us_with": write_with,
        "write_us_without": write_plain})
    print(f"\nwrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
