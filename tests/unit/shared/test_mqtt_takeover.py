"""Telling a connection taken over by another client (same client id) from an outage.

Driven through the paho callbacks with the reason codes paho 2.2 passes; no network.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import shared.mqtt
from shared.config import parse_broker_url
from shared.mqtt import SESSION_TAKEN_OVER, UNSPECIFIED_ERROR, MqttConnection


@dataclass(frozen=True)
class Reason:
    value: int

    @property
    def is_failure(self) -> bool:
        return self.value >= 0x80


OK = Reason(0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(shared.mqtt.time, "monotonic", fake)
    return fake


def connection() -> tuple[MqttConnection, list[float]]:
    mqtt = MqttConnection("fleetpulse-agent-pi", parse_broker_url("mqtt://127.0.0.1:1"),
                          network_thread=False)
    taken: list[float] = []
    mqtt.on_taken_over = lambda: taken.append(shared.mqtt.time.monotonic())
    return mqtt, taken


def cycle(mqtt: MqttConnection, clock: Clock, reason: Reason, connected_s: float,
          reconnect_s: float) -> None:
    mqtt._handle_connect(None, None, None, OK, None)
    clock.now += connected_s
    mqtt._handle_disconnect(None, None, None, reason, None)
    clock.now += reconnect_s
    mqtt._handle_connect(None, None, None, OK, None)


def test_session_taken_over_reason_code_counts(clock: Clock) -> None:
    mqtt, taken = connection()
    cycle(mqtt, clock, Reason(SESSION_TAKEN_OVER), connected_s=300, reconnect_s=20)
    assert len(taken) == 1


def test_a_socket_closed_right_after_connecting_and_reconnected_at_once_counts(
        clock: Clock) -> None:
    # What Mosquitto 2.0.11 does when another client connects with the same id.
    mqtt, taken = connection()
    cycle(mqtt, clock, Reason(UNSPECIFIED_ERROR), connected_s=1.0, reconnect_s=0.1)
    assert len(taken) == 1


@pytest.mark.parametrize(("connected_s", "reconnect_s"), [
    (3600.0, 0.1),   # a long-lived connection lost: an outage, not a takeover
    (1.0, 30.0),     # the broker was away for a while: a restart
])
def test_outages_and_restarts_do_not_count(clock: Clock, connected_s: float,
                                           reconnect_s: float) -> None:
    mqtt, taken = connection()
    cycle(mqtt, clock, Reason(UNSPECIFIED_ERROR), connected_s, reconnect_s)
    assert taken == []


def test_other_reasons_do_not_count(clock: Clock) -> None:
    mqtt, taken = connection()
    cycle(mqtt, clock, Reason(0x82), connected_s=1.0, reconnect_s=0.1)  # protocol error
    cycle(mqtt, clock, Reason(0x8B), connected_s=1.0, reconnect_s=0.1)  # server shutting down
    assert taken == []
