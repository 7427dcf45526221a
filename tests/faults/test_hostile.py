"""A hostile client floods a real hub with generated bad payloads mixed with valid ones.

The hub must never stop; every bad message becomes a quarantine record with a reason,
every valid one a row. Which is which is decided by construction (each generator below
makes only bad messages of its kind, checked against the pure validator), so the test
also proves the generators' messages are really refused.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from hub.ingest.validate import Accepted, Limits, validate
from shared.schema import STATUS_VALUES
from tests import processes
from tests.processes import Process, query, wait_hub_subscribed
from tests.servers import MosquittoServer, PostgresServer, wait_for
from tests.unit.hub.messages import metrics

EXAMPLES = int(os.environ.get("FLEETPULSE_HOSTILE_EXAMPLES", "8"))
PER_EXAMPLE = 400
MAX_PAYLOAD = 16 * 1024
SKEW_S = 60
_counter = itertools.count()


class Target:
    def __init__(self, broker: MosquittoServer, hub: Process, db_url: str, prefix: str) -> None:
        self.broker, self.hub, self.db_url, self.prefix = broker, hub, db_url, prefix
        self.expected_rows = 0
        self.expected_quarantine: set[tuple[str, bytes]] = set()
        self.sent = 0


@pytest.fixture(scope="module")
def target(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir: Path = tmp_path_factory.mktemp("hostile")
    db_url = postgres.create_database("hostile")
    prefix = f"fphostile-{uuid.uuid4().hex[:8]}"
    broker = MosquittoServer(workdir / "mqtt", persistence=False).start()
    hub = processes.hub(workdir, broker_url=broker.url, db_url=db_url, prefix=prefix,
                        max_payload_bytes=str(MAX_PAYLOAD), max_future_skew_s=str(SKEW_S),
                        batch_max_age_s="0.2").start()
    try:
        wait_hub_subscribed(hub)
        yield Target(broker, hub, db_url, prefix)
    finally:
        hub.stop()
        broker.stop()


# --- generators: each makes one kind of message --------------------------------------------

def _leaf_paths(node: object, path: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaf_paths(v, (*path, k))]
    return [path]


_PATHS = [p for p in _leaf_paths(metrics()) if p not in (("device_id",),)]


def _get(node: dict, path: tuple) -> object:
    for key in path:
        node = node[key]
    return node


def _set(node: dict, path: tuple, value: object) -> None:
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


_SAMPLE = metrics()
_NUMBERS = [p for p in _PATHS if type(_get(_SAMPLE, p)) in (int, float) and p != ("v",)]
_COUNTERS = [p for p in _PATHS if type(_get(_SAMPLE, p)) is int and p not in (("v",),)]


def valid(device: str) -> tuple[str, bytes, str]:
    seq = next(_counter) + 1  # unique: each valid reading must become its own row
    return ("metrics", orjson.dumps(metrics(device_id=device, seq=seq)), "valid")


@st.composite
def wrong_type(draw: st.DrawFn, device: str) -> tuple[str, bytes, str]:
    message = metrics(device_id=device)
    path = draw(st.sampled_from(_PATHS))
    current = _get(message, path)
    small = st.integers(min_value=-(2**63), max_value=2**63 - 1)
    if current is None:  # a nullable field: an object is never a right kind
        replacement: object = {"oops": 1}
    else:
        replacement = draw(st.one_of(
            st.text(max_size=8), st.lists(small, max_size=2),
            st.dictionaries(st.text(max_size=3), small, max_size=1), st.booleans(),
        ).filter(lambda v: type(v) is not type(current)))
    _set(message, path, replacement)
    return ("metrics", orjson.dumps(message), "wrong type")


@st.composite
def missing_field(draw: st.DrawFn, device: str) -> tuple[str, bytes, str]:
    message = metrics(device_id=device)
    path = draw(st.sampled_from(_PATHS))
    parent = _get(message, path[:-1]) if len(path) > 1 else message
    del parent[path[-1]]
    return ("metrics", orjson.dumps(message), "missing field")


@st.composite
def not_a_number(draw: st.DrawFn, device: str) -> tuple[str, bytes, str]:
    path = draw(st.sampled_from(_NUMBERS))
    marker = 9_191_919_191
    message = metrics(device_id=device)
    _set(message, path, marker)
    literal = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"]))
    return ("metrics", orjson.dumps(message).replace(b"9191919191", literal), "nan/inf")


@st.composite
def out_of_range(draw: st.DrawFn, device: str) -> tuple[str, bytes, str]:
    path = draw(st.sampled_from(_COUNTERS))
    value = draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63)))
    message = metrics(device_id=device)
    marker = 9_191_919_191
    _set(message, path, marker)
    return ("metrics", orjson.dumps(message).replace(b"9191919191", str(value).encode()),
            "out of range")


@st.composite
def not_utf8(draw: st.DrawFn, device: str) -> tuple[str, bytes, str]:
    payload = orjson.dumps(metrics(device_id=device))
    junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80"]))
    at = payload.index(b'"session_id":"') + len(b'"session_id":"')
    return ("metrics", payload[:at] + junk + payload[at:], "not utf-8")


@st.composite
def garbage(draw: st.DrawFn, device: str) -> tuple[str, bytes, str]:
    kind = draw(st.sampled_from(["metrics", "meta", "status"]))
    # Hypothesis also draws constants from the code under test: b"online" is a valid status.
    payload = draw(st.binary(max_size=200).filter(lambda b: b.decode("latin-1")
                                                  not in STATUS_VALUES))
    return (kind, payload, "garbage")


@st.composite
def oversized(draw: st.DrawFn, device: str) -> tuple[str, bytes, str]:
    message = metrics(device_id=device)
    size = draw(st.integers(min_value=MAX_PAYLOAD + 1, max_value=4 * MAX_PAYLOAD))
    message["disk"]["partitions"] = [dict(message["disk"]["partitions"][0])
                                     for _ in range(size // 100)]
    return ("metrics", orjson.dumps(message), "oversized")


@st.composite
def bad_version(draw: st.DrawFn, device: str) -> tuple[str, bytes, str]:
    message = metrics(device_id=device)
    message["v"] = draw(st.one_of(st.integers(-(2**63), 2**63 - 1).filter(lambda v: v != 1),
                                  st.text(max_size=3),
                                  st.none(), st.sampled_from([1.5, "1", [1]])))
    if draw(st.booleans()):
        del message["v"]
    return ("metrics", orjson.dumps(message), "schema version")


@st.composite
def spoofed(draw: st.DrawFn, device: str) -> tuple[str, bytes, str]:
    other = draw(st.sampled_from(["victim-1", "victim-2", device + "x"]))
    return ("metrics", orjson.dumps(metrics(device_id=other)), "spoofed")


@st.composite
def from_the_future(draw: st.DrawFn, device: str) -> tuple[str, bytes, str]:
    ahead = draw(st.floats(min_value=SKEW_S + 5, max_value=10 * 365 * 86400))
    epoch = (datetime.now(timezone.utc) + timedelta(seconds=ahead)).timestamp()
    return ("metrics", orjson.dumps(metrics(device_id=device, epoch_s=epoch)), "future")


BAD = [wrong_type, missing_field, not_a_number, out_of_range, not_utf8, garbage, oversized,
       bad_version, spoofed, from_the_future]


@st.composite
def hostile_message(draw: st.DrawFn) -> tuple[str, bytes, str]:
    device = draw(st.sampled_from(["h-1", "h-2", "h-3", "h-4", "h-5", "h-6", "bad id", "x" * 70]))
    if draw(st.integers(0, 3)) == 0:
        kind, payload, label = valid("h-ok")
        return (f"h-ok/{kind}", payload, label)
    kind, payload, label = draw(st.sampled_from(BAD).flatmap(lambda g: g(device)))
    return (f"{device}/{kind}", payload, label)


def publish_all(target: Target, messages: list[tuple[str, bytes]]) -> None:
    done = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    acked = itertools.count(1)
    client.on_publish = lambda *a: next(acked) == len(messages) and done.set()
    client.connect("127.0.0.1", target.broker.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1)
        assert done.wait(60), "the broker did not acknowledge every hostile message"
    finally:
        client.loop_stop()
        client.disconnect()


# No shrinking: each example is a run against real servers; a failure prints its seed.
# Each example is 400 messages, some of 64 KiB: Hypothesis warns that their
# repr is large (Hypothesis 6.155 here), which says nothing about the hub.
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture,
                                 HealthCheck.large_base_example])
@given(st.lists(hostile_message(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
def test_hostile_traffic_is_quarantined_and_valid_traffic_stored(
        target: Target, batch: list[tuple[str, bytes, str]]) -> None:
    now = datetime.now(timezone.utc)
    limits = Limits(MAX_PAYLOAD, SKEW_S)
    messages = []
    for suffix, payload, label in batch:
        topic = f"{target.prefix}/{suffix}"
        verdict = validate(topic, payload, now, target.prefix, limits)
        if label == "valid":
            assert isinstance(verdict, Accepted), verdict
            target.expected_rows += 1
        else:
            assert not isinstance(verdict, Accepted), (label, payload[:300])
            assert verdict.reason
            target.expected_quarantine.add((topic, hashlib.sha256(payload).digest()))
        messages.append((topic, payload))
    publish_all(target, messages)
    target.sent += len(messages)

    def settled() -> bool:
        rows = query(target.db_url, "select count(*) from metrics")[0][0]
        quarantined = query(target.db_url, "select count(*) from quarantine")[0][0]
        return rows == target.expected_rows and quarantined == len(target.expected_quarantine)

    wait_for(settled, 60, f"{target.expected_rows} rows and "
             f"{len(target.expected_quarantine)} quarantine records", interval_s=0.2)
    assert target.hub.running(), target.hub.log()[-3000:]
    assert query(target.db_url, "select count(*) from quarantine where reason = ''")[0][0] == 0


def test_hub_survived_the_flood(target: Target) -> None:
    """Runs after the flood (same module): the hub is alive and logged no traceback."""
    assert target.hub.running()
    assert "Traceback" not in target.hub.log()
    reasons = query(target.db_url, "select split_part(reason, ':', 1), count(*) from quarantine "
                    "group by 1 order by 2 desc")
    print(f"hostile: sent {target.sent}, rows {target.expected_rows}, quarantined "
          f"{len(target.expected_quarantine)} distinct; reasons: {reasons[:8]}")
