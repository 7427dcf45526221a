
import msgspec
import orjson

from hub.ingest.batch import Ack, Batcher, Inbound
from hub.ingest.validate import _METRICS, decode_metrics_fast, validate
from hub.processes import process_row
from shared.schema import metrics_columns, metrics_row
from tests.unit.hub.messages import NOW, meta_bytes, metrics, metrics_bytes
from tests.unit.hub.test_processes import section

_COLUMN_NAMES = [c.name for c in metrics_columns()]


def inbound(topic: str, payload: bytes, ack: int) -> Inbound:
    return Inbound(topic, payload, NOW, Ack(ack, 1, 0))


def add(batcher: Batcher, message: Inbound, now: float) -> None:
    batcher.add(message, validate(message.topic, message.payload, NOW, "fp"), now)


def test_batch_is_due_by_size_or_by_age():
    by_size = Batcher(max_rows=2, max_age_s=60)
    add(by_size, inbound("fp/pi-1/metrics", metrics_bytes(seq=1), 1), now=0)
    assert not by_size.due(now=1)
    add(by_size, inbound("fp/pi-1/metrics", metrics_bytes(seq=2), 2), now=1)
    assert by_size.due(now=1)

    by_age = Batcher(max_rows=1000, max_age_s=0.5)
    assert by_age.seconds_until_due(now=0) is None
    add(by_age, inbound("fp/pi-1/metrics", metrics_bytes(), 1), now=10)
    assert abs(by_age.seconds_until_due(now=10.2) - 0.3) < 1e-9
    assert not by_age.due(now=10.4) and by_age.due(now=10.5)


def test_an_idle_writer_takes_a_batch_once_it_holds_early_rows_a_busy_one_lets_it_grow():
    batcher = Batcher(max_rows=5, max_age_s=0.5, early_rows=2)
    add(batcher, inbound("fp/pi-1/metrics", metrics_bytes(seq=1), 1), now=0)
    assert not batcher.due(now=0.1, writer_idle=True)  # one row: wait, as a quiet hub does
    add(batcher, inbound("fp/pi-1/metrics", metrics_bytes(seq=2), 2), now=0.1)
    assert batcher.due(now=0.1, writer_idle=True)
    assert not batcher.due(now=0.1, writer_idle=False)  # busy: it grows to max_rows or age
    assert batcher.due(now=0.5, writer_idle=False)
    for seq in range(3, 6):
        add(batcher, inbound("fp/pi-1/metrics", metrics_bytes(seq=seq), seq), now=0.2)
    assert batcher.due(now=0.2, writer_idle=False)


def test_batch_sorts_messages_into_rows_quarantine_and_device_events():
    batcher = Batcher(max_rows=100, max_age_s=1)
    add(batcher, inbound("fp/pi-1/metrics", metrics_bytes(seq=1), 1), 0)
    add(batcher, inbound("fp/pi-1/metrics", b"garbage", 2), 0)
    add(batcher, inbound("fp/pi-1/status", b"online", 3), 0)
    add(batcher, inbound("fp/pi-1/status", b"offline", 4), 0)
    add(batcher, inbound("fp/pi-1/meta", meta_bytes(), 5), 0)
    batch = batcher.take()
    assert batch is not None and batcher.take() is None
    # every message is acknowledged, in arrival order
    assert [a.mid for a in batch.acks] == [1, 2, 3, 4, 5]
    assert len(batch.rows) == 1 and len(batch.rows[0]) == len(metrics_columns())
    assert [q.reason[:26] for q in batch.quarantine] == ["payload is not valid JSON:"]
    assert batch.devices.status["pi-1"][0] == "offline"  # the last word wins
    assert batch.devices.meta["pi-1"][0]["hostname"] == "pi"
    assert "pi-1" in batch.devices.seen


def test_row_carries_the_hub_receive_time():
    batcher = Batcher(max_rows=100, max_age_s=1)
    add(batcher, inbound("fp/pi-1/metrics", metrics_bytes(), 1), 0)
    batch = batcher.take()
    names = [c.name for c in metrics_columns()]
    assert batch.rows[0][names.index("received_at")] == NOW


def test_batch_records_each_sessions_span_and_the_hostname_its_meta_names():
    import orjson

    batcher = Batcher(max_rows=100, max_age_s=60)
    for seq, session in ((1, "a"), (2, "a"), (1, "b")):
        add(batcher, inbound("fp/pi-1/metrics", metrics_bytes(seq=seq, session_id=session,
                                                              epoch_s=NOW.timestamp() - 10 + seq),
                             seq), now=0)
    meta = orjson.loads(meta_bytes())
    add(batcher, inbound("fp/pi-1/meta", orjson.dumps(meta), 9), now=0)
    batch = batcher.take()
    assert batch is not None
    spans = batch.devices.sessions
    assert set(spans) == {("pi-1", "a"), ("pi-1", "b")}
    assert (spans[("pi-1", "a")].last_ts - spans[("pi-1", "a")].first_ts).total_seconds() == 1
    assert batch.devices.session_hosts == {("pi-1", meta["session_id"]): meta["hostname"]}


def _rows_of(payload: bytes) -> list[tuple]:
    batcher = Batcher(max_rows=100, max_age_s=1)
    add(batcher, inbound("fp/pi-1/metrics", payload, 1), 0)
    batch = batcher.take()
    assert batch is not None and not batch.quarantine, batch and batch.quarantine
    return batch.rows


def test_the_row_of_a_decoded_reading_is_the_row_of_its_message_as_dicts():
    # The hub reads the decoded structs (validate.READING); metrics_row reads the message
    # as dicts, as pydantic gives it. Every column the same, the lists of records as their
    # JSON, the processes row at the end.
    message = metrics()
    message["disk"]["partitions"].append({**message["disk"]["partitions"][0], "mountpoint": "/b"})
    message["processes"] = section()
    payload = orjson.dumps(message)
    (row,) = _rows_of(payload)
    reference = list(metrics_row(_METRICS.validate_json(payload), NOW))
    for i, name in enumerate(_COLUMN_NAMES):
        if name in ("disk_partitions", "disk_per_disk", "network_per_interface"):
            reference[i] = msgspec.json.encode(reference[i])
    assert row[:-1] == tuple(reference)
    assert row[-1] == process_row("pi-1", reference[_COLUMN_NAMES.index("ts")], "s1", 2, NOW,
                                  section())


def test_a_message_only_pydantic_reads_gives_the_same_row():
    message = metrics()
    fast = orjson.dumps(message)
    ts = message["ts"]
    message["ts"] = ts.replace("T", " ")  # RFC 3339 allows it; the fast path hands it over
    slow = orjson.dumps(message)
    assert not _fast_accepts(slow) and _fast_accepts(fast)
    assert _rows_of(slow) == _rows_of(fast)


def _fast_accepts(payload: bytes) -> bool:
    try:
        decode_metrics_fast(payload)
    except (msgspec.DecodeError, ValueError):
        return False
    return True
