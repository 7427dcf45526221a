"""The baseline for bench/hub_ingest.py: the least a hub can do to store these messages.

paho (MQTT 3.1.1, clean session, automatic acks on receipt) → a list; every 0.5 s the list
is decoded with orjson (no validation: the ts string becomes a datetime, nothing else is
checked), flattened with the same column getter as fleetpulse, and written with one binary
COPY straight into ``metrics`` (no temporary table, no ON CONFLICT, no device table).

    python3 -m bench.minimal_hub --broker-port 1883 --db postgresql://… --prefix bench --qos 1

Runs until SIGTERM; prints the rows it stored to stderr at exit.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import paho.mqtt.client as paho  # noqa: E402
import psycopg  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.types.json import set_json_dumps  # noqa: E402

from shared.schema import metrics_columns, metrics_row  # noqa: E402

FLUSH_S = 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--qos", type=int, default=1)
    args = parser.parse_args()

    set_json_dumps(orjson.dumps)
    columns = metrics_columns()
    copy_sql = sql.SQL("copy metrics ({}) from stdin (format binary)").format(
        sql.SQL(", ").join(sql.Identifier(c.name) for c in columns))
    types = [c.pg_type.replace("double precision", "float8") for c in columns]
    conn = psycopg.connect(args.db, autocommit=False)

    inbox: list[bytes] = []
    lock = threading.Lock()
    stop = threading.Event()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        with lock:
            inbox.append(message.payload)

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe(f"{args.prefix}/+/metrics", qos=args.qos)

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-minimal-hub",
                         protocol=paho.MQTTv311, clean_session=True)
    client.max_queued_messages_set(0)
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect("127.0.0.1", args.broker_port, keepalive=30)
    client.loop_start()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())

    stored = 0
    next_flush = time.monotonic() + FLUSH_S
    while True:
        stopping = stop.wait(max(0.0, next_flush - time.monotonic()))
        next_flush += FLUSH_S
        with lock:
            batch = inbox[:]
            inbox.clear()
        if batch:
            received_at = datetime.now(UTC)
            rows = []
            for payload in batch:
                message = orjson.loads(payload)
                message["ts"] = datetime.fromisoformat(message["ts"])
                rows.append(metrics_row(message, received_at))
            with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                copy.set_types(types)
                for row in rows:
                    copy.write_row(row)
            conn.commit()
            stored += len(rows)
        if stopping:
            break
    client.disconnect()
    client.loop_stop()
    conn.close()
    print(f"minimal hub: stored {stored} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
