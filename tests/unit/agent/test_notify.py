"""The systemd notify protocol's messages, watchdog period and status lines (pure parts),
and the Notifier's sends to a real AF_UNIX datagram socket."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from agent.notify import (
    Notifier,
    StatusTracker,
    format_message,
    format_status,
    socket_address,
    watchdog_period_s,
)

T0 = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC


def test_message_is_newline_separated_key_value_lines() -> None:
    assert format_message(READY=1, STATUS="connected; spool 0 readings") == \
        b"READY=1\nSTATUS=connected; spool 0 readings"
    assert format_message(WATCHDOG=1) == b"WATCHDOG=1"


def test_a_value_with_a_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="single line"):
        format_message(STATUS="a\nREADY=1")


def test_a_leading_at_sign_means_the_abstract_namespace() -> None:
    assert socket_address("@/org/systemd/notify") == b"\0/org/systemd/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


@pytest.mark.parametrize(("environ", "expected"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_pings_at_half_of_watchdog_usec_when_it_is_ours(
        environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_period_s(environ, pid=42) == expected


def test_status_says_connection_and_spool() -> None:
    assert format_status("mqtts://hub:8883", connected=True, ever_connected=True,
                         since_epoch_s=T0, spool_readings=0) == \
        "connected to mqtts://hub:8883; spool 0 readings"
    assert format_status("mqtts://hub:8883", connected=False, ever_connected=True,
                         since_epoch_s=T0, spool_readings=1) == \
        "broker mqtts://hub:8883 unreachable since 2026-05-28 20:26:40 UTC; spool 1 reading"
    assert format_status("mqtt://hub:1883", connected=False, ever_connected=False,
                         since_epoch_s=T0, spool_readings=1234) == \
        "connecting to mqtt://hub:1883 since 2026-05-28 20:26:40 UTC; spool 1234 readings"


def test_status_tracker_keeps_the_start_of_an_outage() -> None:
    tracker = StatusTracker("mqtt://hub:1883", T0)
    assert tracker.line(connected=False, spool_readings=0, now_epoch_s=T0 + 5).startswith(
        "connecting to mqtt://hub:1883 since 2026-05-28 20:26:40")
    assert tracker.line(connected=True, spool_readings=0, now_epoch_s=T0 + 6) == \
        "connected to mqtt://hub:1883; spool 0 readings"
    lost = tracker.line(connected=False, spool_readings=3, now_epoch_s=T0 + 60)
    assert lost == "broker mqtt://hub:1883 unreachable since 2026-05-28 20:27:40 UTC; " \
        "spool 3 readings"
    # The outage's start stays put while it lasts, so the line changes only with the spool.
    assert tracker.line(connected=False, spool_readings=3, now_epoch_s=T0 + 600) == lost


def _bound(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    return sock


def test_notifier_sends_each_message_as_one_datagram(tmp_path: Path) -> None:
    with _bound(tmp_path / "notify") as sock:
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"),
                             "WATCHDOG_USEC": "2000000"}, pid=1)
        assert notifier.enabled and notifier.watchdog_s == 1.0
        notifier.ready("connecting")
        notifier.status("connecting")  # unchanged: not sent again
        notifier.status("connected")
        notifier.watchdog(100.0)
        notifier.watchdog(100.5)  # not yet due
        assert notifier.watchdog_due_in(100.5) == pytest.approx(0.5)
        notifier.watchdog(101.0)
        notifier.stopping()
        notifier.close()
        received = []
        sock.settimeout(0.2)
        try:
            while True:
                received.append(sock.recv(4096))
        except TimeoutError:
            pass
    assert received == [b"READY=1\nSTATUS=connecting", b"STATUS=connected", b"WATCHDOG=1",
                        b"WATCHDOG=1", b"STOPPING=1\nSTATUS=stopping"]


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"@fleetpulse-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name[1:].encode())
        sock.settimeout(2)
        notifier = Notifier({"NOTIFY_SOCKET": name}, pid=1)
        notifier.ready("up")
        notifier.close()
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_notifier_without_notify_socket_does_nothing() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "2000000"}, pid=1)
    assert not notifier.enabled and notifier.watchdog_s is None
    assert notifier.watchdog_due_in(0.0) == float("inf")
    assert notifier.send(READY=1) is False


def test_a_failed_send_is_logged_once_and_never_raises(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens"),
                         "WATCHDOG_USEC": "1000000"}, pid=1)
    for now in (1.0, 2.0, 3.0):
        notifier.watchdog(now)
    notifier.ready("x")
    notifier.close()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "Cannot notify systemd" in errors[0].getMessage()
