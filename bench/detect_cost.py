"""What anomaly detection costs the hub: live scoring per reading, training per device-day.

    python3 -m bench.detect_cost [--devices 1,100,1000] [--batches 30]

Input: the real agent's recording (bench/data/agent-recording.jsonl.xz, 4,639 readings),
validated and flattened by the hub's own code into the rows the hub writes.

1. Scoring (``hub.detect.live.LiveScorer.score``, thread CPU): N devices, each batch holding
   one reading of every device (the hub at one reading a second per device), models trained
   on the recording's first half; baseline in the same run: each device's own detector
   stepped reading by reading (no stacking).
2. Training: a device-day (the recording's signals tiled to 86,400 rows), vectorised fit
   (``hub.detect.train.fit_novelty``) against ``Novelty.fit`` row by row (run on a tenth of
   the day and scaled: it takes ~10 s a day).
3. With ``--with-db``: a device-day of the recording's rows stored in a PostgreSQL of its own
   (tests/servers.py), half of it compacted into the cold tier, then ``train_device`` as
   ``fleetpulse-hub train`` runs it: the hub's CPU (reading and decoding both tiers, fitting,
   serialising) and the wall time, which includes PostgreSQL's work.

CPU figures on a shared machine are noisy: compare within a run.
"""

from __future__ import annotations

import argparse
import lzma
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, describe_machine, machine, table, write_result
from hub.detect.features import SIGNALS, SOURCE_COLUMNS, signal_rows
from hub.detect.live import LiveScorer
from hub.detect.model import Floats
from hub.detect.novelty import Novelty
from hub.detect.train import TooLittleHistory, fit_novelty, load_detector, train
from hub.ingest.validate import Accepted, Limits, validate
from shared.schema import metrics_columns, metrics_row

RECORDING = ROOT / "bench" / "data" / "agent-recording.jsonl.xz"
DAY = 86_400


def recorded_rows() -> list[tuple[object, ...]]:
    limits = Limits(64 * 1024, 10 ** 9, 3650)
    rows = []
    for record in lzma.open(RECORDING).read().splitlines():
        line = record.split(b" ", 1)[-1]  # "<received unix time> <payload>" or the payload
        device = line.split(b'"device_id":"', 1)[1].split(b'"', 1)[0].decode()
        result = validate(f"fleetpulse/{device}/metrics", line, datetime.now(UTC),
                          "fleetpulse", limits)
        if isinstance(result, Accepted) and result.kind == "metrics":
            rows.append(metrics_row(result.value, datetime.now(UTC)))
    return rows


def recorded_signals(rows: list[tuple[object, ...]]) -> Floats:
    """The detector's signals of ``rows`` (hub rows in :func:`metrics_columns` order)."""
    at = {c.name: i for i, c in enumerate(metrics_columns())}
    return signal_rows([tuple(r[at[c]] for c in SOURCE_COLUMNS) for r in rows])


def scoring(rows: list[tuple[object, ...]], devices: int, batches: int) -> dict[str, float]:
    columns = [c.name for c in metrics_columns()]
    at = {name: i for i, name in enumerate(columns)}
    signals = recorded_signals(rows)
    half = len(rows) // 2
    model = train(signals[:half], "novelty", 1000)
    assert not isinstance(model, TooLittleHistory)
    state = model.to_bytes()
    scorer = LiveScorer(columns)
    own = {}
    for d in range(devices):
        scorer.install(f"d{d}", load_detector("novelty", state))
        own[f"d{d}"] = load_detector("novelty", state)
    device_at = at["device_id"]
    work = []
    for b in range(batches):
        source = rows[half + b % (len(rows) - half)]
        work.append([(*source[:device_at], f"d{d}", *source[device_at + 1:])
                     for d in range(devices)])
    scorer.score(work[0])  # takes the installed models
    began = time.thread_time()
    for batch in work[1:]:
        scorer.score(batch)
    stacked = (time.thread_time() - began) / ((batches - 1) * devices)
    x = signals[half]
    steps = min(devices * (batches - 1), 300)
    began = time.thread_time()
    for i in range(steps):
        own[f"d{i % devices}"].step(x)
    single = (time.thread_time() - began) / steps
    return {"devices": devices, "stacked_us": stacked * 1e6, "per_device_us": single * 1e6}


def training(rows: list[tuple[object, ...]]) -> dict[str, float]:
    signals = recorded_signals(rows)
    day = np.resize(signals, (DAY, len(SIGNALS)))
    fast = Novelty(k=len(SIGNALS))
    began = time.process_time()
    fit_novelty(fast, day)
    fast_s = time.process_time() - began
    tenth = day[: DAY // 10]
    slow = Novelty(k=len(SIGNALS))
    began = time.process_time()
    slow.fit(tenth)
    slow_s = (time.process_time() - began) * 10
    return {"vectorised_s_per_day": fast_s, "row_by_row_s_per_day": slow_s,
            "state_bytes": len(fast.to_bytes())}


def with_db(rows: list[tuple[object, ...]]) -> dict[str, float]:
    import tempfile
    from datetime import timedelta

    from hub.ingest.batch import DeviceEvents
    from hub.models import train_device
    from hub.retention import ColdStats, Compactor, Retention
    from hub.store import Store
    from tests.servers import PostgresServer

    columns = [c.name for c in metrics_columns()]
    at = {name: i for i, name in enumerate(columns)}
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = now - timedelta(days=1)
    work = Path(tempfile.mkdtemp(prefix="fleetpulse-detect-bench-"))
    work.chmod(0o755)
    server = PostgresServer(work / "pg").init().start()
    try:
        store = Store(server.create_database("bench"))
        store.migrate()
        day = []
        for i in range(DAY):
            row = list(rows[i % len(rows)])
            row[at["device_id"]], row[at["session_id"]] = "bench-1", "s1"
            row[at["seq"]], row[at["ts"]] = i + 1, start + timedelta(seconds=i)
            day.append(tuple(row))
        for i in range(0, DAY, 5000):
            events = DeviceEvents()
            events.seen["bench-1"] = (day[min(i + 4999, DAY - 1)][at["ts"]], now)
            store.write(day[i:i + 5000], [], events)
            print(f"… stored {min(i + 5000, DAY):,} readings", file=sys.stderr)
        compactor = Compactor(store, Retention(30, 90, 730, hot_window_h=12), ColdStats(),
                              clock=lambda: now)
        while compactor.round():
            print("… compacting", file=sys.stderr)
        began = time.monotonic()
        result = train_device(store, "bench-1", kind="novelty", window_h=24,
                              min_readings=3600, now=now)
        wall = time.monotonic() - began
        store.close()
        return {"readings": result.rows, "hub_cpu_s": result.cpu_s, "wall_s": wall,
                "days": result.days}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,100,1000")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--with-db", action="store_true",
                        help="also train from a device-day stored in PostgreSQL (both tiers)")
    args = parser.parse_args()
    info = machine()
    print(describe_machine(info))
    rows = recorded_rows()
    print(f"{len(rows):,} recorded readings")
    results = [scoring(rows, int(n), args.batches) for n in args.devices.split(",")]
    print(table(["devices", "stacked µs/reading", "one detector per device µs/reading",
                 "ratio"], [[r["devices"], f"{r['stacked_us']:.1f}", f"{r['per_device_us']:.1f}",
                             f"{r['stacked_us'] / r['per_device_us']:.2f}×"] for r in results]))
    fit = training(rows)
    print(f"training a device-day ({DAY:,} readings × {len(SIGNALS)} signals): vectorised "
          f"{fit['vectorised_s_per_day']:.2f} s CPU, row by row {fit['row_by_row_s_per_day']:.1f}"
          f" s ({fit['vectorised_s_per_day'] / fit['row_by_row_s_per_day']:.3f}×); a model "
          f"stored is {fit['state_bytes']:,} bytes")
    db = None
    if args.with_db:
        db = with_db(rows)
        print(f"training from PostgreSQL, {db['readings']:,} readings over {db['days']:.2f} "
              f"days (half cold): {db['hub_cpu_s']:.2f} s of hub CPU "
              f"({db['hub_cpu_s'] / db['days']:.2f} s per device-day), {db['wall_s']:.2f} s "
              "wall (PostgreSQL's work included)")
    write_result("detect_cost", {"machine": info, "scoring": results, "training": fit,
                                 "training_from_db": db,
                                 "note": "shared 2-core machine: CPU figures are noisy"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
