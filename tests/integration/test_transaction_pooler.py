"""The hub works through a transaction pooler, as Supabase's on port 6543.

PgBouncer in transaction mode with one server connection for every client: each transaction
may land on a connection another client used last, so anything the hub kept in its session
(prepared statements, a temporary table, a session lock) would break. The first test shows
the pooler does break a client that prepares statements; the others run the hub through it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from hub.ingest.batch import Ack, Batcher, Inbound
from hub.ingest.validate import validate
from hub.store import Store
from tests import processes
from tests.processes import query, wait_hub_subscribed, wait_rows
from tests.servers import MosquittoServer, PgBouncer, PostgresServer, free_port, wait_for
from tests.unit.hub.messages import NOW, metrics_bytes

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "fp"


@pytest.fixture
def pooler(private_dir: Path, postgres: PostgresServer) -> Iterator[PgBouncer]:
    server = PgBouncer(private_dir / "pgbouncer", postgres, pool_size=1).start()
    yield server
    server.stop()


def write(store: Store, device: str, seqs: range, day_offset_s: float = 0.0) -> None:
    batcher = Batcher(max_rows=10_000, max_age_s=60)
    for i, seq in enumerate(seqs):
        topic = f"{PREFIX}/{device}/metrics"
        payload = metrics_bytes(device_id=device, seq=seq,
                                epoch_s=NOW.timestamp() - day_offset_s - 100 + seq)
        message = Inbound(topic, payload, NOW, Ack(i, 1, 0))
        batcher.add(message, validate(topic, payload, NOW, PREFIX), 0)
    batch = batcher.take()
    assert batch is not None
    store.write(batch.rows, batch.quarantine, batch.devices)


def test_the_pooler_breaks_prepared_statements_as_supabases_does(
        pooler: PgBouncer, db_url: str) -> None:
    pooled = pooler.url_for(db_url)
    a = psycopg.connect(pooled, autocommit=True, prepare_threshold=0)
    b = psycopg.connect(pooled, autocommit=True, prepare_threshold=0)
    try:
        assert a.execute("select %s::int", (1,)).fetchone() == (1,)
        # b's first statement is prepared under the same name, on the same server connection.
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            b.execute("select %s::int", (2,))
    finally:
        a.close()
        b.close()


def test_two_stores_migrate_write_and_stream_through_one_pooled_connection(
        pooler: PgBouncer, db_url: str) -> None:
    pooled = pooler.url_for(db_url)
    a, b = Store(pooled), Store(pooled)
    try:
        assert len(a.migrate()) >= 2
        assert b.migrate() == []
        write(a, "pi-1", range(1, 21))
        write(b, "pi-2", range(1, 11), day_offset_s=86_400)  # another day: a new partition
        write(a, "pi-1", range(21, 31))
        write(a, "pi-1", range(1, 31))  # redelivered: stored once
        chunks = list(b.stream("select device_id, seq from metrics order by 1, 2",
                               chunk_rows=7))
    finally:
        a.close()
        b.close()
    streamed = [row for _, rows in chunks for row in rows]
    assert streamed == [("pi-1", s) for s in range(1, 31)] + [("pi-2", s) for s in range(1, 11)]
    assert len(chunks) == 6
    assert query(db_url, "select sum(readings) from metrics_1m") == [(40,)]
    # One partition per UTC day of the readings (two days, three just after midnight).
    days = query(db_url, "select count(distinct (ts at time zone 'UTC')::date) from metrics")
    assert query(db_url, "select count(*) from pg_inherits where "
                         "inhparent = 'metrics'::regclass") == days
    assert days[0][0] >= 2


def test_the_hub_and_its_commands_run_through_the_pooler(
        pooler: PgBouncer, postgres: PostgresServer, db_url: str, broker: MosquittoServer,
        prefix: str, private_dir: Path) -> None:
    pooled = pooler.url_for(db_url)
    port = free_port()
    hub = processes.hub(private_dir, broker_url=broker.url, db_url=pooled, prefix=prefix,
                        batch_max_age_s="0.2", http_port=str(port)).start()
    agent = processes.agent(private_dir, broker_url=broker.url, prefix=prefix,
                            device_id="pooled-1", interval_s="0.25")
    try:
        wait_hub_subscribed(hub)
        agent.start()
        wait_rows(db_url, 10, timeout_s=60)

        def devices() -> list[dict[str, object]]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/devices", timeout=5) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]

        wait_for(lambda: [d["device_id"] for d in devices()] == ["pooled-1"], 20,
                 "the API to list the device")
    finally:
        agent.stop()
        hub.stop()
    seqs = [row[0] for row in query(db_url, "select seq from metrics order by seq")]
    assert seqs == list(range(1, len(seqs) + 1))
    assert "Traceback" not in hub.log() and " ERROR " not in hub.log(), hub.log()[-3000:]

    for command in (["status"], ["export", "--start", "1h", "-o", "-"]):
        done = subprocess.run([sys.executable, "-m", "hub.main", *command, "--db", pooled],
                              cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert "pooled-1" in done.stdout
