"""Compaction CPU of this tree against another revision's, on the same readings, same run.

CPU time on a shared machine moves with other people's load by ±30 % between runs, so a
figure from one run cannot be compared with one from another. This benchmark compacts the
same recorded readings (``bench/data/agent-recording.jsonl.xz``, real and Pi shape, as
``bench.storage --tiers``) with the code of ``--baseline-rev`` (taken out with ``git archive``
into a temporary directory) and with this tree's, alternating, ``--rounds`` times, each time
on a fresh copy of one database, and reports the medians and their ratio. CPU is the
compacting process's own (hub) plus its PostgreSQL backend's (``/proc/<pid>/schedstat``).

    python3 -m bench.compaction_ab --baseline-rev 6d14e29 --rounds 8
    python3 -m bench.compaction_ab --baseline-rev HEAD --rounds 2 --stages   # where it goes

The rounds of this tree compact without reading the blocks back (``check=False``); one more
round reads every block back, and the hub's figure adds that cost for one block in
``cold_check_every``.

Writes bench/results/compaction_ab.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, describe_machine, machine, progress, write_result

sys.path.insert(0, str(ROOT))

import psycopg

from bench import tiers
from hub.store import Store
from shared.config import HubSettings
from tests.servers import PostgresServer

DAY_S = 86400
# Run in a subprocess whose working directory is the tree to measure, so ``hub`` is that
# tree's. Prints the CPU seconds (hub, PostgreSQL) and the readings compacted. argv[2] is
# [stages, check]: given a list of stages (see STAGES), also PostgreSQL's CPU split by
# statement (each execute and each commit timed on the backend's schedstat, named by what the
# statement starts with); check: every block read back (where the tree can choose).
ONE_ROUND = """
import inspect, json, os, sys, time
sys.path.insert(0, os.getcwd())
from collections import defaultdict
from datetime import datetime, UTC
import psycopg
from hub import cold
from hub.store import Store
store = Store(sys.argv[1])
store.migrate()
lay = cold.layout()
pid = store.query("select pg_backend_pid() as p")[0]["p"]
def backend():
    return int(open(f"/proc/{pid}/schedstat").read().split()[0]) / 1e9
spent = defaultdict(float)
STAGES, CHECK = json.loads(sys.argv[2])
if STAGES:
    def stage(sql):
        text = (sql.decode() if isinstance(sql, bytes) else str(sql)).lstrip().lower()
        return next((name for name, prefix in STAGES if text.startswith(prefix)), "other")
    execute, commit = psycopg.Cursor.execute, psycopg.Connection.commit
    def timed_execute(self, query, *args, **kwargs):
        before = backend()
        try:
            return execute(self, query, *args, **kwargs)
        finally:
            spent[stage(query)] += backend() - before
    def timed_commit(self):
        before = backend()
        try:
            return commit(self)
        finally:
            spent["commit (WAL flush)"] += backend() - before
    psycopg.Cursor.execute, psycopg.Connection.commit = timed_execute, timed_commit
hours = store.cold_candidates(datetime(2100, 1, 1, tzinfo=UTC), 1000)
own, pg = time.process_time(), backend()
spent.clear()
for device, hour, _ in hours:
    if "check" in inspect.signature(store.compact_hour).parameters:
        store.compact_hour(lay, device, hour, check=CHECK)
    else:  # a revision before the read-back was sampled: every block is read back
        store.compact_hour(lay, device, hour)
print(json.dumps({"hub": time.process_time() - own, "pg": backend() - pg,
                  "readings": sum(n for _, _, n in hours), "stages": spent}))
store.close()
"""
# What each statement of Store.compact_hour starts with, in the order they are tried.
STAGES = [("build and insert the block (TOAST compression included)", "with r0 as"),
          ("check: block read back and hot rows, hashed", "select (w.n, w.h)"),
          ("delete the hot rows", "delete from metrics"),
          ("longest lists (slots)", "select coalesce(max"),
          ("savepoints, locks, settings", "savepoint"),
          ("savepoints, locks, settings", "rollback to"),
          ("savepoints, locks, settings", "set "),
          ("savepoints, locks, settings", "select pg_advisory")]


def one_round(tree: Path, url: str, stages: bool = False, check: bool = False) -> dict[str, Any]:
    """Compact every device-hour with ``tree``'s code; ``check``: read every block back
    (the hub does for the first block of a run and one in ``cold_check_every`` others)."""
    argument = json.dumps([STAGES if stages else None, check])
    done = subprocess.run([sys.executable, "-c", ONE_ROUND, url, argument], cwd=tree,
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise SystemExit(f"compaction in {tree} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compaction CPU, this tree against a revision")
    parser.add_argument("--baseline-rev", required=True, help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--recording", type=Path, default=tiers.RECORDING)
    parser.add_argument("--stages", action="store_true",
                        help="also one round of this tree with PostgreSQL's CPU per statement")
    args = parser.parse_args(argv)
    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="fleetpulse-compaction-ab-"))
    baseline = workdir / "baseline"
    baseline.mkdir()
    archive = subprocess.run(["git", "archive", args.baseline_rev], cwd=ROOT,
                             capture_output=True, check=False)
    if archive.returncode:
        raise SystemExit(f"git archive {args.baseline_rev}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive.stdout, check=True)
    pairs = tiers.load_recording(args.recording)
    real = tiers.validated(pairs, "host-rec")
    pi = tiers.validated([(r, m) for (r, _), m in zip(pairs, tiers.pi_shape(
        [m for _, m in pairs]), strict=True)], "pi-rec")
    pg = PostgresServer(workdir / "pg").init().start()
    trees = {"baseline": baseline, "this tree": ROOT}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    staged: dict[bool, Any] = {}
    try:
        template = pg.create_database("readings")
        store = Store(template)
        store.migrate()
        progress(f"writing {len(real) + len(pi):,} readings hot")
        tiers.write_hot(store, real, 500)
        tiers.write_hot(store, pi, 500)
        store.close()
        name = template.rsplit("/", 1)[1]
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("vacuum analyze")
            for i in range(args.rounds):
                for label, tree in trees.items():
                    conn.execute("drop database if exists round")
                    conn.execute(f'create database round template "{name}"')
                    runs[label].append(one_round(tree, pg.url_for("round")))
                progress(f"round {i + 1}/{args.rounds}: " + ", ".join(
                    f"{label} {cpu_per_day(r[-1]):.1f} s" for label, r in runs.items()))
            # The read-back's cost: one round of this tree reading every block back.
            for check in (True, False) if args.stages else (True,):
                conn.execute("drop database if exists round")
                conn.execute(f'create database round template "{name}"')
                staged[check] = one_round(ROOT, pg.url_for("round"), args.stages, check)
    finally:
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    medians = {label: statistics.median(cpu_per_day(r) for r in rs) for label, rs in runs.items()}
    result: dict[str, Any] = {
        "benchmark": "compaction_ab", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": info, "baseline_rev": args.baseline_rev, "rounds": args.rounds,
        "cpu_s_per_device_day": {label: [cpu_per_day(r) for r in rs]
                                 for label, rs in runs.items()},
        "median_cpu_s_per_device_day": medians,
        "median_core_percent_per_100_devices": {
            label: 100 * m * 100 / DAY_S for label, m in medians.items()},
        "ratio": medians["this tree"] / medians["baseline"],
    }
    # The hub reads back the first block of a run and one in cold_check_every of the
    # others: per device-day, what this tree costs unchecked plus that share of the check.
    every = HubSettings().cold_check_every
    check_s = cpu_per_day(staged[True]) - statistics.median(
        cpu_per_day(r) for r in runs["this tree"])
    result["every_block_read_back_cpu_s_per_device_day"] = cpu_per_day(staged[True])
    result["cold_check_every"] = every
    result["hub_default_cpu_s_per_device_day"] = medians["this tree"] + check_s / every
    print(f"\nCompaction CPU per device-day (hub + PostgreSQL), median of {args.rounds} "
          f"alternating rounds; {describe_machine(info)}")
    for label, m in medians.items():
        print(f"  {label:10s} {m:6.1f} s = {100 * m * 100 / DAY_S:.2f} % of a core per 100 "
              "devices")
    print(f"  ratio      {result['ratio']:.2f}× (baseline {args.baseline_rev})")
    print(f"  this tree reading every block back: {cpu_per_day(staged[True]):.1f} s; as the "
          f"hub runs it (one block in {every} read back): "
          f"{result['hub_default_cpu_s_per_device_day']:.1f} s = "
          f"{100 * result['hub_default_cpu_s_per_device_day'] * 100 / DAY_S:.2f} % of a core "
          "per 100 devices")
    for check, label in ((True, "every block read back"), (False, "unchecked")):
        if not args.stages:
            break
        run = staged[check]
        per_day = {name: cpu / run["readings"] * DAY_S for name, cpu in run["stages"].items()}
        result.setdefault("stages_cpu_s_per_device_day", {})[label] = {
            "hub": run["hub"] / run["readings"] * DAY_S, **per_day}
        print(f"\nWhere one round's CPU goes (this tree, {label}), s per device-day:")
        print(f"  {'the hub process (Python, psycopg)':58s} "
              f"{run['hub'] / run['readings'] * DAY_S:6.2f}")
        for name, cpu in sorted(per_day.items(), key=lambda kv: -kv[1]):
            print(f"  {'PostgreSQL: ' + name:58s} {cpu:6.2f}")
    path = write_result("compaction_ab", result)
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


def cpu_per_day(run: dict[str, Any]) -> float:
    return (run["hub"] + run["pg"]) / run["readings"] * DAY_S


if __name__ == "__main__":
    sys.exit(main())
