"""The database edge against a real PostgreSQL: migrations, idempotent writes, bad rows."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import orjson
import psycopg
import pytest

from hub.ingest.batch import Ack, Batcher, Inbound
from hub.ingest.validate import validate
from hub.ingest.write import write_batch
from hub.store import Store
from shared.errors import TransientStoreError
from shared.schema import metrics_columns
from tests.servers import PostgresServer, wait_for
from tests.unit.hub.messages import NOW, metrics, metrics_bytes


def batch_of(payloads: list[tuple[str, bytes]]):
    batcher = Batcher(max_rows=10_000, max_age_s=60)
    for i, (topic, payload) in enumerate(payloads):
        message = Inbound(topic, payload, NOW, Ack(i, 1, 0))
        batcher.add(message, validate(topic, payload, NOW, "fp"), 0)
    batch = batcher.take()
    assert batch is not None
    return batch


@pytest.fixture
def store(db_url: str):
    migrated = Store(db_url)
    migrated.migrate()
    yield migrated
    migrated.close()


def count(db_url: str, sql: str) -> int:
    with psycopg.connect(db_url) as conn:
        return int(conn.execute(sql.encode()).fetchone()[0])


def test_an_empty_database_is_migrated_and_a_second_start_changes_nothing(db_url: str):
    store = Store(db_url)
    applied = store.migrate()
    assert applied[0] == "0001_initial.sql"
    assert store.migrate() == []
    store.close()
    assert count(db_url, "select count(*) from schema_migrations") == len(applied)


def test_a_redelivered_batch_is_a_no_op(db_url: str, store: Store):
    batch = batch_of([("fp/pi-1/metrics", metrics_bytes(seq=s)) for s in range(1, 6)])
    first = store.write(batch.rows, batch.quarantine, batch.devices)
    again = store.write(batch.rows, batch.quarantine, batch.devices)
    assert (first.inserted, again.inserted) == (5, 0)
    assert count(db_url, "select count(*) from metrics") == 5


def test_lists_kept_as_json_until_the_write_are_stored_as_the_message_sent_them(
        db_url: str, store: Store):
    # The batch holds partitions, disks and interfaces as JSON bytes (hub/ingest/batch.py);
    # both write paths must store them as jsonb equal to the message's lists.
    sent = {s: metrics(seq=s) for s in range(1, 6)}
    assert sent[1]["network"]["per_interface"] and sent[1]["disk"]["partitions"]
    first = batch_of([("fp/pi-1/metrics", orjson.dumps(sent[s])) for s in (1, 2, 3)])
    assert isinstance(first.rows[0][_column("network_per_interface")], bytes)
    store.write(first.rows, first.quarantine, first.devices)  # the COPY fast path
    overlap = batch_of([("fp/pi-1/metrics", orjson.dumps(sent[s])) for s in range(1, 6)])
    assert store.write(overlap.rows, overlap.quarantine,
                       overlap.devices).duplicate_safe  # a redelivery among new rows
    with psycopg.connect(db_url) as conn:
        stored = conn.execute("select seq, disk_partitions, disk_per_disk, "
                              "network_per_interface from metrics order by seq").fetchall()
    assert [row[0] for row in stored] == [1, 2, 3, 4, 5]
    for seq, partitions, disks, interfaces in stored:
        message = sent[seq]
        assert (partitions, disks, interfaces) == (message["disk"]["partitions"],
                                                   message["disk"]["per_disk"],
                                                   message["network"]["per_interface"])


def _column(name: str) -> int:
    return [c.name for c in metrics_columns()].index(name)


def test_a_redelivered_bad_message_is_quarantined_once(db_url: str, store: Store):
    batch = batch_of([("fp/pi-1/metrics", b"not json")])
    store.write(batch.rows, batch.quarantine, batch.devices)
    store.write(batch.rows, batch.quarantine, batch.devices)
    assert count(db_url, "select count(*) from quarantine") == 1


def test_a_row_the_database_refuses_is_quarantined_and_the_rest_stored(db_url: str, store: Store):
    with psycopg.connect(db_url, autocommit=True) as conn:
        # A rule this database has and the schema does not know: the rows' fault (23514).
        conn.execute("alter table metrics add constraint no_seq_3 check (seq <> 3)")
    batch = batch_of([("fp/pi-1/metrics", metrics_bytes(seq=s)) for s in range(1, 6)])
    outcome = write_batch(store, batch, threading.Event())
    assert outcome is not None and outcome.inserted == 4 and outcome.quarantined == 1
    with psycopg.connect(db_url) as conn:
        assert [r[0] for r in conn.execute("select seq from metrics order by seq")] == [1, 2, 4, 5]
        (reason, payload), = conn.execute("select reason, payload from quarantine").fetchall()
    assert "database refused the row" in reason and "no_seq_3" in reason
    assert orjson.loads(bytes(payload))["seq"] == 3


def test_daily_partitions_are_created_with_row_level_security(db_url: str, store: Store):
    old = metrics_bytes(seq=1, epoch_s=NOW.timestamp() - 3 * 86400)  # a replayed old reading
    batch = batch_of([("fp/pi-1/metrics", old), ("fp/pi-1/metrics", metrics_bytes(seq=2))])
    store.write(batch.rows, batch.quarantine, batch.devices)
    with psycopg.connect(db_url) as conn:
        parts = conn.execute("select c.relname, c.relrowsecurity from pg_inherits i join "
                             "pg_class c on c.oid = i.inhrelid where i.inhparent = "
                             "'metrics'::regclass").fetchall()
    assert len(parts) >= 2 and all(rls for _, rls in parts)


def test_seed_fields_are_derived_from_the_stored_row(db_url: str, store: Store):
    message = metrics(seq=9)
    batch = batch_of([("fp/pi-1/metrics", orjson.dumps(message))])
    store.write(batch.rows, batch.quarantine, batch.devices)
    with psycopg.connect(db_url) as conn:
        seed = conn.execute("select cpu_load, cpu_temp, ram_usage_percent, disk_read_mb, "
                            "disk_write_mb, net_sent_mb, net_recv_mb, is_throttling, on_battery "
                            "from metrics_seed").fetchone()
    mib = 1024 * 1024
    assert seed == (message["cpu"]["percent"], message["sensors"]["cpu_celsius"],
                    message["memory"]["percent"], message["disk"]["read_bytes"] / mib,
                    message["disk"]["write_bytes"] / mib, message["network"]["bytes_sent"] / mib,
                    message["network"]["bytes_recv"] / mib, True, None)


def test_device_status_keeps_its_since_when_repeated(db_url: str, store: Store):
    first = batch_of([("fp/pi-1/status", b"online")])
    store.write(first.rows, first.quarantine, first.devices)
    since = store.query("select status_since from devices")[0]["status_since"]
    later = batch_of([("fp/pi-1/status", b"online")])
    later.devices.status["pi-1"] = ("online", datetime.now(timezone.utc))
    store.write(later.rows, later.quarantine, later.devices)
    assert store.query("select status_since from devices")[0]["status_since"] == since


def test_an_unreachable_database_is_a_transient_error(tmp_path):
    store = Store("postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(TransientStoreError, match="database unreachable"):
        store.check()
    store.close()


def test_store_reconnects_after_the_server_restarts(private_dir):
    server = PostgresServer(private_dir / "pg")
    server.init().start()
    try:
        store = Store(server.url)
        store.migrate()
        server.kill()

        def refused() -> bool:
            try:
                store.check()
            except TransientStoreError:
                return True
            return False  # a backend of the killed postmaster may answer for a moment
        wait_for(refused, 10, "the store to find the server gone")
        server.start()
        store.check()  # a new connection, no error
        store.close()
    finally:
        server.stop()
