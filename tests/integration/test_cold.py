"""The cold tier against a real PostgreSQL: lossless round trip, late and redelivered
readings, a compaction killed with SIGKILL, the storage budget, readers across tiers."""

from __future__ import annotations

import io
import logging
import os
import random
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hub import cold
from hub.export import export_to_file
from hub.read import FleetReader
from hub.retention import ColdStats, Compactor, Retention, enforce_budget, used_bytes
from hub.rollup import ROLLUP_TABLES, _rollup_insert, choose_resolution
from hub.store import Store
from shared.errors import PermanentStoreError
from shared.schema import MAX_COUNTER, MetricsV1
from tests.readings import partition, reading, write_readings
from tests.servers import wait_for

T0 = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]
KEY = "device_id, ts, session_id, seq"


def noisy(device: str, start: datetime, count: int, step_s: float, seed: int,
          session: str = "s1", first_seq: int = 1) -> list[MetricsV1]:
    """Readings with every kind of value the cold tier must keep exactly.

    Doubles with all 17 digits, nulls here and there, a counter that resets, huge
    counters, per-core lists and record lists whose length changes, temperatures with
    labels, flags that flip.
    """
    rnd = random.Random(seed)
    out = []
    counter = 10**12
    for i in range(count):
        counter = 0 if i == count // 2 else counter + rnd.randrange(0, 10**6)  # a reset
        cores = [rnd.random() * 100 for _ in range(rnd.choice([0, 2, 4]))]
        interfaces = [{"name": name, **{k: (None if rnd.random() < 0.05 else
                                            rnd.randrange(0, 2**40) if "_per_s" not in k
                                            else round(rnd.random() * 1e5, 3))
                                        for k in ("bytes_sent", "bytes_sent_per_s", "bytes_recv",
                                                  "bytes_recv_per_s", "packets_sent",
                                                  "packets_sent_per_s", "packets_recv",
                                                  "packets_recv_per_s", "errors_in",
                                                  "errors_in_per_s", "errors_out",
                                                  "errors_out_per_s", "drops_in",
                                                  "drops_in_per_s", "drops_out",
                                                  "drops_out_per_s")}}
                      for name in ("eth0", "wlan0", "lo")[:rnd.choice([0, 1, 3])]]
        temps = [{"sensor": "cpu_thermal", "label": "", "celsius": round(40 + rnd.random(), 3)},
                 {"sensor": "nvme", "label": "Composite", "celsius": 0.0}][:i % 3]
        out.append(reading(
            device, start + timedelta(seconds=i * step_s), seq=first_seq + i, session_id=session,
            interval_s=step_s,
            cpu_percent=None if i % 17 == 0 else rnd.random() * 100,
            cpu_per_core_percent=cores,
            cpu_ctx_switches=counter, cpu_ctx_switches_per_s=None if i == count // 2 else 0.1 + 0.2,
            cpu_syscalls=MAX_COUNTER if i % 5 == 0 else None,
            cpu_load_1=rnd.random() * 4, cpu_freq_current_mhz=1.5e3,
            memory_used_bytes=rnd.randrange(0, 2**33), memory_percent=round(rnd.random() * 100, 1),
            disk_partitions=[partition("/", round(rnd.random() * 100, 1)),
                             partition("/boot", 12.0)][:1 + i % 2],
            network_per_interface=interfaces, network_bytes_recv_per_s=rnd.random() * 1e9,
            sensors_cpu_celsius=None if i % 3 == 0 else temps[0]["celsius"] if temps else 5e-324,
            sensors_temperatures=temps, sensors_battery_charging=[None, True, False][i % 3],
            throttling_raw=0x50005 if i % 7 == 0 else 0,
            throttling_throttled_now=i % 7 == 0))
    return out


def put(store: Store, messages: list[MetricsV1]) -> Any:
    """Store readings as the hub does, all received at T0 (so rows compare whole)."""
    return write_readings(store, messages, received_at=T0)


def everything(store: Store, source: str = "metrics") -> list[tuple[Any, ...]]:
    with psycopg.connect(store.url) as conn:
        return conn.execute(f"select * from {source} order by {KEY}").fetchall()


def history(store: Store) -> list[tuple[Any, ...]]:
    return everything(store, "metrics_history(null, '-infinity', 'infinity')")


def compact_all(store: Store, now: datetime) -> ColdStats:
    stats = ColdStats()
    compactor = Compactor(store, Retention(30, 90, 730, hot_window_h=48), stats,
                          clock=lambda: now)
    while compactor.round():
        pass
    return stats


def count(store: Store, table: str) -> int:
    return int(store.query(f"select count(*) as n from {table}")[0]["n"])


def test_compaction_keeps_every_value_of_every_reading(store: Store) -> None:
    readings = (noisy("pi-1", T0, 500, 7.3, seed=1)
                + noisy("pi-1", T0 + timedelta(hours=1, seconds=1), 300, 3.0, seed=2,
                        session="s2")  # the agent restarted: new session, seq from 1
                + noisy("pi-2", T0 + timedelta(minutes=30), 200, 11.0, seed=3))
    put(store, readings)
    before = everything(store)
    assert len(before) == 1000

    stats = compact_all(store, T0 + timedelta(days=3))

    assert count(store, "metrics") == 0
    blocks = store.query("select device_id, hour, readings from metrics_cold order by 2, 1")
    assert sum(b["readings"] for b in blocks) == 1000 and stats.compacted_readings == 1000
    assert [(b["device_id"], b["hour"]) for b in blocks] == [
        ("pi-1", T0), ("pi-2", T0), ("pi-1", T0 + timedelta(hours=1)),
        ("pi-2", T0 + timedelta(hours=1))]
    assert history(store) == before  # every column, nulls, floats bit for bit, jsonb
    assert everything(store, "metrics_all") == before
    assert count(store, "metrics_seed") == 1000  # the seed format's view reads both tiers


def test_only_what_is_older_than_the_hot_window_moves(store: Store) -> None:
    put(store, noisy("pi-1", T0, 100, 60.0, seed=4))  # 100 minutes
    now = T0 + timedelta(hours=48, minutes=70)
    compact_all(store, now)
    # The hour holding now - 48 h is still partly hot: only the whole hours before it go.
    assert store.query("select hour from metrics_cold") == [{"hour": T0}]
    assert count(store, "metrics") == 40


def test_late_and_redelivered_readings_after_compaction(store: Store) -> None:
    readings = noisy("pi-1", T0, 300, 10.0, seed=5)
    put(store, readings)
    compact_all(store, T0 + timedelta(days=3))
    minute = store.query("select sum(readings) as n from metrics_1m")[0]["n"]

    # A reading the hub already stored and compacted comes again (lost PUBACK, agent
    # spool replay): nothing is inserted and the rollups do not count it twice.
    assert put(store, readings[10:20]).inserted == 0
    # A reading never seen before, for the compacted hour, arrives late.
    late = noisy("pi-1", T0 + timedelta(seconds=5), 1, 1.0, seed=6, session="late")
    assert put(store, late).inserted == 1
    assert store.query("select sum(readings) as n from metrics_1m")[0]["n"] == minute + 1
    assert len(history(store)) == 301  # readers see it at once, from the hot tier

    stats = compact_all(store, T0 + timedelta(days=3))  # merged into the block
    assert stats.compacted_hours == 1 and count(store, "metrics") == 0
    rows = history(store)
    assert len(rows) == 301
    expected = write_and_read(store.url, readings + late)
    assert rows == expected


def rollups(store: Store) -> list[dict[str, Any]]:
    return [row for table in ("metrics_1m", "metrics_1h") for row in store.query(
        f"select * from {table} order by device_id, bucket")]


def test_a_redelivery_racing_compaction_is_dropped_and_uncounted_at_the_next_merge(
        store: Store) -> None:
    readings = noisy("pi-1", T0, 50, 10.0, seed=7)
    put(store, readings)
    before, counted = everything(store), rollups(store)
    compact_all(store, T0 + timedelta(days=3))
    # As if a redelivery had been inserted in the instant its hour was compacted (its
    # insert waited for the compaction's delete, then found no conflict): the same key in
    # both tiers, and counted again in the rollups, as ingest counts every row it inserts.
    with psycopg.connect(store.url) as conn:
        conn.execute("create temp table again as select * from metrics_cold_rows(null, "
                     "'-infinity', 'infinity') order by ts limit 3")
        conn.execute("insert into metrics select * from again")
        for table in ROLLUP_TABLES:
            conn.execute(_rollup_insert(table, "again").encode())
    assert rollups(store) != counted

    stats = compact_all(store, T0 + timedelta(days=3))

    assert stats.duplicates_dropped == 3
    assert history(store) == before  # the block's copy kept, once
    after = rollups(store)
    sums = ("_sum", "_wsum")  # the weighted sums too (Σ value × interval_s)
    assert [{k: v for k, v in row.items() if not k.endswith(sums)} for row in after] == [
        {k: v for k, v in row.items() if not k.endswith(sums)} for row in counted]
    for row, old in zip(after, counted, strict=True):  # sums to within a double's last bits
        for key in (k for k in row if k.endswith(sums)):
            assert row[key] == pytest.approx(old[key], rel=1e-12, abs=1e-9)


def write_and_read(url: str, messages: list[MetricsV1]) -> list[tuple[Any, ...]]:
    """The rows ``messages`` give when stored hot in a scratch database."""
    with psycopg.connect(url, autocommit=True) as conn:
        name = "scratch_" + os.urandom(4).hex()
        conn.execute(f"create database {name}")
    scratch = Store(url.rsplit("/", 1)[0] + "/" + name)
    try:
        scratch.migrate()
        put(scratch, messages)
        return everything(scratch)
    finally:
        scratch.close()


def test_sigkill_mid_compaction_then_again_loses_and_duplicates_nothing(
        store: Store, db_url: str) -> None:
    for d in range(6):
        put(store, noisy(f"pi-{d}", T0, 720, 5.0, seed=10 + d))  # 1 h each
    before = everything(store)
    env = {**os.environ, "FLEETPULSE_DB": db_url, "FLEETPULSE_HOT_WINDOW_H": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hub.main", "compact"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            # Kill it while a block's transaction has written (it has an xid) and not
            # committed, after at least one block was committed.
            def mid_block() -> bool:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                done = conn.execute("select count(*) from metrics_cold").fetchone()
                busy = conn.execute(
                    "select count(*) from pg_stat_activity where application_name = "
                    "'fleetpulse-hub-compact' and backend_xid is not null").fetchone()
                return bool(done and busy and done[0] >= 1 and busy[0] >= 1)

            wait_for(mid_block, 60, "compaction to be mid-way", interval_s=0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    # The killed transaction is rolled back (its backend sees the client gone).
    with psycopg.connect(db_url, autocommit=True) as conn:
        wait_for(lambda: conn.execute(
            "select count(*) from pg_stat_activity where application_name = "
            "'fleetpulse-hub-compact'").fetchone() == (0,), 30, "the killed backend to end")
    midway = history(store)
    assert midway == before  # each reading in exactly one tier
    assert 0 < count(store, "metrics_cold") < 6

    rerun = subprocess.run([sys.executable, "-m", "hub.main", "compact"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    lines = rerun.stderr.strip().splitlines()  # progress per round, then the total
    assert lines[0].startswith("… ") and "device-hours" in lines[0], lines
    assert lines[-1].startswith("Compacted "), lines
    assert count(store, "metrics") == 0 and count(store, "metrics_cold") == 6
    assert history(store) == before


def test_over_budget_the_oldest_cold_hours_go_logged_and_counted(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    for h in range(4):
        put(store, noisy("pi-1", T0 + timedelta(hours=h), 200, 10.0, seed=20 + h,
                                    first_seq=1 + 200 * h))
    compact_all(store, T0 + timedelta(days=3))
    sizes = store.tier_sizes()
    per_block = sizes["cold_live"] / sizes["cold_blocks"]
    budget = int(used_bytes(sizes) - 1.5 * per_block)  # room for all but two hours
    stats = ColdStats()
    with caplog.at_level(logging.ERROR, logger="hub.retention"):
        dropped = enforce_budget(store, budget, stats, batch=1)
    assert dropped == 2 and stats.budget_dropped_hours == 2
    assert stats.budget_dropped_readings == 400
    assert [r["hour"] for r in store.query("select hour from metrics_cold order by 1")] == [
        T0 + timedelta(hours=2), T0 + timedelta(hours=3)]
    assert "Storage budget" in caplog.text and "dropped the 1 oldest" in caplog.text
    assert used_bytes(store.tier_sizes()) <= budget
    # Nothing cold left to drop: an ERROR saying what to do, once, and the excess counted.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="hub.retention"):
        enforce_budget(store, 1, stats)
        enforce_budget(store, 1, stats)
    assert stats.over_budget_bytes > 0
    assert caplog.text.count("raise storage_budget_bytes") == 1


def test_series_and_export_read_across_the_tier_boundary(store: Store) -> None:
    readings = noisy("pi-1", T0, 720, 10.0, seed=30)  # 2 hours
    put(store, readings)
    hot_only = FleetReader(store).series("pi-1", T0, T0 + timedelta(hours=2),
                                         choose_resolution(T0, T0 + timedelta(hours=2),
                                                           source="raw"), ("cpu_percent",))
    before = everything(store)
    compactor = Compactor(store, Retention(30, 90, 730, hot_window_h=48), ColdStats(),
                          clock=lambda: T0 + timedelta(hours=49))
    compactor.round()
    assert store.query("select hour from metrics_cold") == [{"hour": T0}]  # 1st hour cold
    assert count(store, "metrics") == 360

    start, end = T0 + timedelta(minutes=30), T0 + timedelta(minutes=90)
    for source in ("raw", "1m"):
        series = FleetReader(store).series("pi-1", start, end, choose_resolution(
            start, end, source=source), ("cpu_percent", "memory_percent"))
        assert series["t"][0] == start.timestamp() and series["t"][-1] >= (
            end - timedelta(minutes=1)).timestamp()
    whole = FleetReader(store).series("pi-1", T0, T0 + timedelta(hours=2), choose_resolution(
        T0, T0 + timedelta(hours=2), source="raw"), ("cpu_percent",))
    assert whole == hot_only  # the same points, per-core included, from both tiers

    out = io.BytesIO()
    assert export_to_file(store, out, "csv", T0, T0 + timedelta(hours=2), "pi-1") == 720
    lines = out.getvalue().decode().splitlines()
    assert len(lines) == 721
    ts = [line.split(",")[3] for line in lines[1:]]
    assert ts == sorted(ts) and ts == [r[3].isoformat() for r in before]


def test_a_block_written_before_a_column_existed_reads_back_null(store: Store) -> None:
    put(store, noisy("pi-1", T0, 30, 10.0, seed=40))
    compact_all(store, T0 + timedelta(days=3))
    # What an old block looks like: it lacks a column (and a record field) the schema has.
    with psycopg.connect(store.url) as conn:
        conn.execute("update metrics_cold set cpu_load_1 = null, "
                     "network_per_interface__drops_out = null, parts = array(select p from "
                     "unnest(parts) p where p not in ('cpu_load_1', "
                     "'network_per_interface__drops_out'))")
    rows = store.query("select cpu_load_1, network_per_interface from metrics_all")
    assert all(r["cpu_load_1"] is None for r in rows)
    interfaces = [i for r in rows for i in r["network_per_interface"]]
    assert interfaces and all("drops_out" not in i and "drops_in" in i for i in interfaces)


def test_the_cold_table_has_an_array_column_per_part_of_the_layout(store: Store) -> None:
    columns = {r["column_name"]: r["udt_name"] for r in store.query(
        "select column_name, udt_name from information_schema.columns where table_name = "
        "'metrics_cold'")}
    for part in cold.layout().parts:
        assert columns[part.name] == "_" + {"text[]": "text", "bigint[]": "int8",
                                            "boolean[]": "bool", "timestamptz[]": "timestamptz",
                                            "numeric[]": "numeric", "integer[]": "int4",
                                            "double precision[]": "float8"}[
                                                part.pg_type]


def test_counters_and_timestamps_are_stored_as_differences_and_read_back_exactly(
        store: Store) -> None:
    counters = [10**12 + 997 * i for i in range(40)]
    counters[15] = 0  # the counter reset (a reboot): a large negative difference
    counters[16] = 5
    counters[25] = MAX_COUNTER  # then back down to 3: the largest difference there is
    counters[26] = 3
    seconds = [i + (i // 10) * 7 + (0.000123 if i % 3 else 0) for i in range(40)]  # gaps
    interfaces = [[{"name": n, **{k: (i * 1000 + j if "_per_s" not in k else i * 0.5)
                                  for j, k in enumerate(
                                      ("bytes_sent", "bytes_sent_per_s", "bytes_recv",
                                       "bytes_recv_per_s", "packets_sent", "packets_sent_per_s",
                                       "packets_recv", "packets_recv_per_s", "errors_in",
                                       "errors_in_per_s", "errors_out", "errors_out_per_s",
                                       "drops_in", "drops_in_per_s", "drops_out",
                                       "drops_out_per_s"))}}
                   for n in ("eth0", "lo")] for i in range(40)]
    readings = [reading("pi-1", T0 + timedelta(seconds=s), seq=(i % 30) + 1,
                        session_id="s1" if i < 30 else "s2",  # a restart: seq from 1 again
                        cpu_ctx_switches=c, cpu_syscalls=None if i == 7 else i,
                        memory_used_bytes=2**33 - i * 4096, network_per_interface=nets,
                        disk_partitions=[partition("/", 41.25)][:1 + i % 2] if i < 20 else [],
                        sensors_temperatures=[{"sensor": "x", "label": "", "celsius": -5.5 - i}])
                for i, (s, c, nets) in enumerate(zip(seconds, counters, interfaces,
                                                       strict=True))]
    put(store, readings)
    before = everything(store)

    compact_all(store, T0 + timedelta(days=3))

    (block,) = store.query("select delta, ts, received_at from metrics_cold")
    assert {"seq", "ts__us", "received_at__us", "cpu_ctx_switches", "memory_used_bytes",
            "network_per_interface__bytes_sent"} <= set(block["delta"])
    # A part holding a null is kept as it is: the running sum cannot skip one.
    assert "cpu_syscalls" not in block["delta"]
    assert block["ts"] is None and block["received_at"] is None  # schema 4's columns
    assert history(store) == before
    assert everything(store, "metrics_all") == before
    # Records' decimal numbers (rates, percentages, negative temperatures) as integers.
    (numbers,) = store.query("select network_per_interface__bytes_sent_per_s as plain, "
                             "network_per_interface__bytes_sent_per_s__k as k, "
                             "sensors_temperatures__celsius__k as celsius from metrics_cold")
    assert numbers["plain"] is None and numbers["k"] and numbers["celsius"]


def test_record_numbers_that_do_not_fit_an_integer_stay_numeric(store: Store) -> None:
    fields = ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv", "errors_in",
              "errors_out", "drops_in", "drops_out")
    interfaces = [{"name": "eth0", **{f: 0 for f in fields}, **{f"{f}_per_s": 0.0 for f in fields},
                   "bytes_sent_per_s": value}
                  for value in (0.0, 12.5, 7966.253, 0.12345, 1e17)]  # 5 decimals; too big
    readings = [reading("pi-1", T0 + timedelta(seconds=i), seq=i + 1,
                        network_per_interface=[interface])
                for i, interface in enumerate(interfaces)]
    put(store, readings)
    before = everything(store)
    compact_all(store, T0 + timedelta(days=3))
    (block,) = store.query("select network_per_interface__bytes_sent_per_s as plain, "
                           "network_per_interface__bytes_sent_per_s__k as k from metrics_cold")
    assert block["k"] is None and [str(v) for v in block["plain"]] == [
        "0.0", "12.5", "7966.253", "0.12345", "100000000000000000"]
    assert history(store) == before


def test_unchecked_blocks_still_keep_numbers_of_many_decimals(store: Store) -> None:
    # Without the read-back, the block itself must notice that 5 decimals do not fit.
    fields = ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv", "errors_in",
              "errors_out", "drops_in", "drops_out")
    interface = {"name": "eth0", **{f: 0 for f in fields}, **{f"{f}_per_s": 0.0 for f in fields}}
    readings = noisy("pi-1", T0, 20, 1.0, seed=3)
    readings[7]["network"]["per_interface"] = [{**interface, "bytes_sent_per_s": 0.12345}]
    put(store, readings)
    before = everything(store)
    result = store.compact_hour(cold.layout(), "pi-1", cold.hour_of(T0), check=False)
    assert result.moved == 20 and result.readings == 20
    (block,) = store.query("select network_per_interface__bytes_sent_per_s__k as k "
                           "from metrics_cold")
    assert block["k"] is None
    assert history(store) == before


def corrupt_blocks(store: Store, change: str) -> None:
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute(f"create function corrupt() returns trigger language plpgsql as $$ "
                     f"begin {change}; return new; end $$")
        conn.execute("create trigger corrupt before insert on metrics_cold for each row "
                     "execute function corrupt()")


def test_a_block_whose_count_is_wrong_is_refused_even_unchecked(store: Store) -> None:
    put(store, noisy("pi-1", T0, 30, 1.0, seed=4))
    before = everything(store)
    corrupt_blocks(store, "new.readings := new.readings - 1")
    with pytest.raises(PermanentStoreError, match="holds 29 readings for 30 hot rows"):
        store.compact_hour(cold.layout(), "pi-1", cold.hour_of(T0), check=False)
    assert count(store, "metrics_cold") == 0 and everything(store) == before


def test_an_hour_with_an_agent_restart_is_always_read_back(store: Store) -> None:
    put(store, noisy("pi-1", T0, 30, 1.0, seed=5)
        + noisy("pi-1", T0 + timedelta(minutes=5), 30, 1.0, seed=6, session="s2"))
    corrupt_blocks(store, "new.cpu_load_1[7] := new.cpu_load_1[7] + 1e-12")
    with pytest.raises(PermanentStoreError, match="does not read back"):
        store.compact_hour(cold.layout(), "pi-1", cold.hour_of(T0), check=False)
    assert count(store, "metrics_cold") == 0 and count(store, "metrics") == 60


def test_the_compactor_reads_back_the_first_block_and_a_sample(store: Store,
                                                               monkeypatch: Any) -> None:
    for hour in range(6):
        put(store, noisy("pi-1", T0 + timedelta(hours=hour), 10, 1.0, seed=hour,
                         first_seq=1 + 10 * hour))
    before = everything(store)
    asked: list[bool] = []
    compact = store.compact_hour

    def spy(lay: cold.Layout, device: str, hour: datetime, check: bool = True) -> Any:
        asked.append(check)
        return compact(lay, device, hour, check)

    monkeypatch.setattr(store, "compact_hour", spy)
    compactor = Compactor(store, Retention(30, 90, 730, hot_window_h=48), ColdStats(),
                          check_every=1000, clock=lambda: T0 + timedelta(days=3))
    while compactor.round():
        pass
    assert asked[0] is True and len(asked) == 6
    assert asked.count(True) < 6  # 1 in 1000 of the 5 others: all 5 drawn ≈ 1e-15
    assert history(store) == before


def first_value(part: str, change: str) -> str:
    """PL/pgSQL changing the first non-null element of ``part`` (lists are null-padded)."""
    return (f"if new.{part} is not null then for i in 1..cardinality(new.{part}) loop "
            f"if new.{part}[i] is not null then new.{part}[i] := new.{part}[i] {change}; "
            "exit; end if; end loop; end if")


CORRUPTIONS = {
    # One value of one reading, the way each kind of part is stored.
    "a double": "new.cpu_load_1[7] := new.cpu_load_1[7] + 1e-12",
    "a delta-coded counter": ("new.memory_used_bytes[5] := new.memory_used_bytes[5] + 1; "
                              "new.memory_used_bytes[6] := new.memory_used_bytes[6] - 1"),
    "a delta-coded timestamp": "new.ts__us[9] := new.ts__us[9] + 1; "
                               "new.ts__us[10] := new.ts__us[10] - 1",
    "a text": "new.session_id[3] := 's9'",
    "a value made null": "new.cpu_freq_current_mhz[4] := null",
    # A record's decimal number, stored as an integer or (if it does not fit) as numeric:
    # each form changed, so neither is accepted.
    "a record field": (first_value("network_per_interface__bytes_recv_per_s__k", "+ 4") + "; "
                       + first_value("network_per_interface__bytes_recv_per_s", "+ 0.001")),
    "a per-core value": first_value("cpu_per_core_percent", "/ 2"),
    # 41.5 read back as 41.50: equal as numbers and as jsonb, not as stored.
    "a record number's scale": ("new.disk_partitions__percent__k[1] := "
                                "new.disk_partitions__percent__k[1] - 1; "
                                "new.disk_partitions__percent[1] := "
                                "new.disk_partitions__percent[1]::numeric(10, 2)"),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_block_that_does_not_read_back_exactly_is_refused(store: Store, kind: str) -> None:
    readings = noisy("pi-1", T0, 60, 10.0, seed=50)
    put(store, readings)
    before = everything(store)
    with psycopg.connect(store.url, autocommit=True) as conn:
        # The block as the compaction wrote it, changed in one value before it is stored.
        conn.execute(f"create function corrupt() returns trigger language plpgsql as $$ "
                     f"begin {CORRUPTIONS[kind]}; return new; end $$")
        conn.execute("create trigger corrupt before insert on metrics_cold for each row "
                     "execute function corrupt()")

    stats = compact_all(store, T0 + timedelta(days=3))

    assert stats.failures == 1 and stats.compacted_hours == 0
    assert count(store, "metrics_cold") == 0 and everything(store) == before

    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute("drop trigger corrupt on metrics_cold")
    stats = compact_all(store, T0 + timedelta(days=3))
    assert stats.compacted_hours == 1 and history(store) == before


SCHEMA_4_BLOCK = ROOT / "tests" / "integration" / "data" / "cold_block_schema4.tsv"


def test_a_block_written_by_schema_4_reads_back_and_merges_a_late_reading(
        store: Store) -> None:
    # The block the cold tier of schema 4 wrote for these readings (2-D list arrays,
    # timestamptz[] timestamps, every counter as it is), kept as COPY text.
    readings = noisy("old-1", T0, 60, 7.0, seed=11)
    expected = write_and_read(store.url, readings)
    header, body = SCHEMA_4_BLOCK.read_bytes().split(b"\n", 1)
    columns = ", ".join(cold._q(c) for c in header.decode().split("\t"))
    with psycopg.connect(store.url) as conn:
        with conn.cursor().copy(f"copy metrics_cold ({columns}) from stdin".encode()) as cp:
            cp.write(body)
        row = conn.execute("select delta, ts__us, array_ndims(network_per_interface__name) "
                           "from metrics_cold").fetchone()
    assert row == (None, None, 2)
    assert history(store) == expected
    assert everything(store, "metrics_all") == expected

    late = noisy("old-1", T0 + timedelta(seconds=3), 1, 1.0, seed=12, session="late")
    assert put(store, readings[5:9]).inserted == 0  # already cold: a redelivery
    assert put(store, late).inserted == 1
    stats = compact_all(store, T0 + timedelta(days=3))
    assert stats.compacted_hours == 1 and count(store, "metrics") == 0
    assert store.query("select delta is not null as new from metrics_cold") == [{"new": True}]
    assert history(store) == write_and_read(store.url, readings + late)
