"""The agent's MQTT connection driven by its own loop (no paho thread), on a real Mosquitto
that a test kills and starts again."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import shared.mqtt as mqtt_module
from shared.config import parse_broker_url
from shared.mqtt import RECONNECT_MAX_S, MqttConnection, Will
from tests.integration.test_security import Client
from tests.servers import MosquittoServer, wait_for


class Driven:
    """A driven connection and what its callbacks saw."""

    def __init__(self, url: str, will: Will | None = None) -> None:
        self.conn = MqttConnection(f"driven-{uuid.uuid4().hex[:8]}", parse_broker_url(url),
                                   will=will, network_thread=False)
        self.acked: list[int] = []
        self.connects = 0
        self.conn.on_published = lambda mid, accepted: self.acked.append(mid)
        self.conn.on_connected = self._connected

    def _connected(self) -> None:
        self.connects += 1

    def until(self, condition: object, what: str, timeout_s: float = 15.0) -> None:
        """Call service() as the agent's loop does until ``condition()`` holds."""
        def step() -> bool:
            self.conn.service()
            return bool(condition())  # type: ignore[operator]
        wait_for(step, timeout_s, what)


@pytest.fixture
def own_broker(work_root: Path) -> Iterator[MosquittoServer]:
    server = MosquittoServer(work_root / f"driven-{uuid.uuid4().hex[:6]}",
                             persistence=False).start()
    yield server
    server.stop()


def test_publishes_and_reads_acknowledgements_without_a_network_thread(
        broker: MosquittoServer, prefix: str) -> None:
    watcher = Client(broker.port, f"watch-{prefix}").connect().subscribe(f"{prefix}/#")
    threads_before = {t.ident for t in threading.enumerate()}
    driven = Driven(broker.url)
    driven.conn.start()
    try:
        driven.until(lambda: driven.conn.connected, "the CONNACK")
        assert driven.connects == 1
        mids = [driven.conn.publish(f"{prefix}/m", f"{i}".encode()) for i in range(5)]
        # Written at publish time: the subscriber gets them before any service() call.
        wait_for(lambda: len(watcher.topics()) == 5, 10, "the five messages")
        driven.until(lambda: sorted(driven.acked) == sorted(mids), "five PUBACKs")
        # The connect attempt's thread has ended: nothing of ours runs in the background.
        wait_for(lambda: {t.ident for t in threading.enumerate()} <= threads_before, 10,
                 "the connect thread to end")
    finally:
        driven.conn.stop()
        watcher.stop()


def test_reconnects_after_the_broker_restarts_and_announces_again(
        own_broker: MosquittoServer, prefix: str) -> None:
    driven = Driven(own_broker.url)
    driven.conn.start()
    try:
        driven.until(lambda: driven.conn.connected, "the first CONNACK")
        own_broker.kill()
        driven.until(lambda: not driven.conn.connected, "the loss to be noticed")
        own_broker.start()
        # Attempts back off from 1 s, doubling; the broker was down only briefly.
        driven.until(lambda: driven.conn.connected, "the reconnect", RECONNECT_MAX_S + 10)
        assert driven.connects == 2 and driven.conn.generation == 2
        mid = driven.conn.publish(f"{prefix}/after", b"x")
        driven.until(lambda: mid in driven.acked, "a PUBACK on the new connection")
    finally:
        driven.conn.stop()


def test_a_broker_that_is_down_at_start_is_a_wait_not_an_error(
        own_broker: MosquittoServer, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    own_broker.kill()
    driven = Driven(own_broker.url)
    driven.conn.start()
    try:
        driven.until(lambda: "is unreachable" in caplog.text, "the one outage line")
        assert not driven.conn.connected
        # The next attempt is scheduled, not made at every call.
        assert driven.conn.service_due_in() > 0
        own_broker.start()
        driven.until(lambda: driven.conn.connected, "the connection", RECONNECT_MAX_S + 10)
        assert caplog.text.count("is unreachable") == 1
    finally:
        driven.conn.stop()


def test_stop_disconnects_cleanly_so_the_last_will_is_not_sent(
        broker: MosquittoServer, prefix: str) -> None:
    watcher = Client(broker.port, f"watch-{prefix}").connect().subscribe(f"{prefix}/#")
    driven = Driven(broker.url, will=Will(f"{prefix}/status", b"offline"))
    driven.conn.start()
    driven.until(lambda: driven.conn.connected, "the CONNACK")
    driven.conn.stop()
    # A marker published after the stop arrives after anything the stop caused.
    Client(broker.port, f"marker-{prefix}").connect().publish(f"{prefix}/marker")
    wait_for(lambda: f"{prefix}/marker" in watcher.topics(), 10, "the marker")
    assert f"{prefix}/status" not in watcher.topics()
    watcher.stop()


def test_a_host_name_that_cannot_be_resolved_at_all_is_one_line_not_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    host = "a" * 64 + ".invalid"  # a DNS label is at most 63 bytes: refused before any lookup
    failures: list[BaseException | None] = []
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: failures.append(args.exc_value)
    try:
        driven = Driven(f"mqtt://{host}:1883")
        driven.conn.start()
        driven.until(lambda: "is unreachable" in caplog.text, "the one outage line")
        assert "label" in caplog.text and not failures
        assert not driven.conn.connected
    finally:
        threading.excepthook = previous_hook


def test_an_idle_connection_serviced_only_when_due_stays_up(
        own_broker: MosquittoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # An agent with an interval longer than the keepalive publishes nothing for a while:
    # paho must ping from service(), called no more often than service_due_in() asks.
    monkeypatch.setattr(mqtt_module, "KEEPALIVE_S", 2)
    monkeypatch.setattr(mqtt_module, "IDLE_SERVICE_S", 2 / 3)
    driven = Driven(own_broker.url)
    driven.conn.start()
    try:
        driven.until(lambda: driven.conn.connected, "the CONNACK")
        calls = 0
        end = time.monotonic() + 5 * 2  # the broker drops a client silent for 1.5 keepalives
        while time.monotonic() < end:
            time.sleep(driven.conn.service_due_in())  # as the agent's loop waits
            driven.conn.service()
            calls += 1
        assert driven.conn.connected and driven.connects == 1
        assert calls <= 10 / (2 / 3) + 2  # woken only when due
        assert "exceeded timeout" not in own_broker.log()
    finally:
        driven.conn.stop()
