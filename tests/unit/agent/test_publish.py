"""The outbox with a fake transport: nothing is lost while the broker is away."""

from __future__ import annotations

import itertools

from agent.publish import Outbox
from agent.spool import EncodedReading, Spool


class FakeTransport:
    def __init__(self, connected: bool = True) -> None:
        self.connected = connected
        self.sent: dict[int, bytes] = {}
        self.properties: dict[bytes, tuple[tuple[str, str], ...]] = {}
        self._mids = itertools.count(1)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                user_properties: tuple[tuple[str, str], ...] = (),
                expiry_s: int | None = None) -> int:
        mid = next(self._mids)
        self.sent[mid] = payload
        self.properties[payload] = user_properties
        return mid


def make(tmp_path, connected=True, **kwargs):
    transport = FakeTransport(connected)
    spool = Spool(tmp_path / "spool.db", max_bytes=10**7, max_age_s=10**7)
    outbox = Outbox(transport, spool, "fp/d/metrics", **kwargs)
    return outbox, transport, spool


def r(seq: int) -> EncodedReading:
    return EncodedReading("s", seq, 1000.0 + seq, f"reading {seq}".encode())


def ack_all(outbox: Outbox, transport: FakeTransport) -> list[bytes]:
    payloads = [transport.sent[mid] for mid in sorted(transport.sent)]
    for mid in sorted(transport.sent):
        outbox.on_published(mid, True)
    transport.sent.clear()
    return payloads


def test_connected_readings_are_published_and_nothing_is_written_to_disk(tmp_path):
    outbox, transport, spool = make(tmp_path)
    for seq in range(1, 4):
        outbox.submit(r(seq), now=seq)
        outbox.pump(now=seq, now_epoch_s=1000 + seq)
    assert list(transport.sent.values()) == [b"reading 1", b"reading 2", b"reading 3"]
    ack_all(outbox, transport)
    outbox.pump(now=100, now_epoch_s=1100)
    assert len(spool) == 0 and outbox.pending() == 0


def test_readings_wait_and_are_spooled_in_one_batch_while_the_broker_is_away(tmp_path):
    outbox, transport, spool = make(tmp_path, connected=False, flush_s=10)
    outbox.pump(now=0, now_epoch_s=1000)
    for seq in range(1, 6):
        outbox.submit(r(seq), now=seq)
        outbox.pump(now=seq, now_epoch_s=1000 + seq)
    assert len(spool) == 0  # not one write per reading
    outbox.pump(now=10, now_epoch_s=1010)
    assert len(spool) == 5
    assert transport.sent == {}


def test_spool_is_replayed_in_order_at_a_bounded_rate_after_reconnect(tmp_path):
    outbox, transport, spool = make(tmp_path, connected=False, flush_s=1,
                                    replay_rate_per_s=10, window=1000)
    outbox.pump(now=0, now_epoch_s=1000)
    for seq in range(1, 51):
        outbox.submit(r(seq), now=0.5)
    outbox.pump(now=1, now_epoch_s=1001)
    assert len(spool) == 50
    transport.connected = True
    outbox.pump(now=2, now_epoch_s=1002)  # one second of tokens
    assert len(transport.sent) == 10
    replayed = ack_all(outbox, transport)
    for step in range(3, 10):
        outbox.pump(now=step, now_epoch_s=1000 + step)
        replayed += ack_all(outbox, transport)
    outbox.pump(now=10, now_epoch_s=1010)
    assert replayed == [f"reading {i}".encode() for i in range(1, 51)]
    assert len(spool) == 0


def test_live_readings_flow_while_the_spool_is_replayed(tmp_path):
    outbox, transport, spool = make(tmp_path, connected=False, flush_s=1, replay_rate_per_s=1)
    outbox.pump(now=0, now_epoch_s=1000)
    for seq in range(1, 11):
        outbox.submit(r(seq), now=0.5)
    outbox.pump(now=1, now_epoch_s=1001)
    transport.connected = True
    outbox.submit(r(11), now=1.5)
    assert b"reading 11" in transport.sent.values()
    assert len(spool) == 10


def test_unacknowledged_readings_are_spooled_after_flush_s(tmp_path):
    outbox, transport, spool = make(tmp_path, flush_s=5)
    outbox.pump(now=0, now_epoch_s=1000)
    outbox.submit(r(1), now=0)  # sent, but the broker never acknowledges
    outbox.pump(now=5, now_epoch_s=1005)
    assert len(spool) == 1
    # When the acknowledgement finally comes, the spooled copy is forgotten.
    ack_all(outbox, transport)
    outbox.pump(now=6, now_epoch_s=1006)
    assert len(spool) == 0


def test_a_full_window_keeps_readings_for_later_instead_of_queueing_in_memory(tmp_path):
    outbox, transport, spool = make(tmp_path, window=2, flush_s=1)
    outbox.pump(now=0, now_epoch_s=1000)
    for seq in range(1, 5):
        outbox.submit(r(seq), now=0)
    assert len(transport.sent) == 2
    outbox.pump(now=1, now_epoch_s=1001)
    assert len(spool) == 4  # two waiting + two unacknowledged for flush_s


def test_refused_readings_are_counted_and_not_resent(tmp_path):
    outbox, transport, spool = make(tmp_path)
    outbox.submit(r(1), now=0)
    (mid,) = transport.sent
    outbox.on_published(mid, False)
    assert outbox.pending() == 0
    assert outbox.stats.refused == 1


def test_close_keeps_everything_unacknowledged_on_disk(tmp_path):
    outbox, transport, spool = make(tmp_path)
    outbox.submit(r(1), now=0)
    transport.connected = False
    outbox.submit(r(2), now=0)
    outbox.close(now_epoch_s=1000)
    assert sorted(x.reading.seq for x in spool.oldest(10)) == [1, 2]


def test_status_and_meta_acks_are_ignored(tmp_path):
    outbox, transport, spool = make(tmp_path)
    outbox.on_published(999, True)  # a mid the outbox never sent
    assert outbox.pending() == 0
    assert outbox.stats.acked == 0


def test_a_reading_never_acknowledged_is_sent_again(tmp_path):
    outbox, transport, spool = make(tmp_path, flush_s=10, ack_timeout_s=5)
    outbox.pump(now=0, now_epoch_s=1000)
    outbox.submit(r(1), now=0)  # the broker (or the client library) loses it
    outbox.pump(now=4, now_epoch_s=1004)
    assert len(transport.sent) == 1
    outbox.pump(now=5, now_epoch_s=1005)
    assert list(transport.sent.values()) == [b"reading 1", b"reading 1"]
    ack_all(outbox, transport)
    assert outbox.pending() == 0 and outbox.stats.resent == 1


def test_readings_taken_before_the_first_connect_are_sent_once_connected(tmp_path):
    outbox, transport, spool = make(tmp_path, connected=False, flush_s=10)
    outbox.pump(now=0, now_epoch_s=1000)
    outbox.submit(r(1), now=0.1)  # the broker is not connected yet
    transport.connected = True
    outbox.pump(now=0.5, now_epoch_s=1000.5)
    assert list(transport.sent.values()) == [b"reading 1"]
    assert len(spool) == 0  # never went to disk


def test_a_reading_stamped_by_an_unsynchronised_clock_is_sent_with_its_age(tmp_path):
    boot = [500.0]
    outbox, transport, spool = make(tmp_path, connected=False, flush_s=10, session_id="s",
                                    boot_clock=lambda: boot[0])
    outbox.pump(now=0, now_epoch_s=1000)
    outbox.submit(EncodedReading("s", 1, 1001.0, b"unsynced", unsynced_boot_s=488.5), now=1)
    outbox.submit(EncodedReading("s", 2, 1002.0, b"synced"), now=2)
    outbox.pump(now=10, now_epoch_s=1010)  # both to the spool: the age survives it
    assert len(spool) == 2
    transport.connected = True
    boot[0] = 520.25
    for step in range(11, 15):
        outbox.pump(now=step, now_epoch_s=1000 + step)
    assert transport.properties[b"unsynced"] == (("age-ms", "31750"),)
    assert transport.properties[b"synced"] == ()


def test_a_reading_of_an_earlier_session_is_sent_without_an_age(tmp_path):
    # Another run's boot clock may be another boot's: its age would mean nothing.
    outbox, transport, _ = make(tmp_path, session_id="new", boot_clock=lambda: 100.0)
    outbox.submit(EncodedReading("old", 7, 900.0, b"old", unsynced_boot_s=50.0), now=1)
    outbox.submit(EncodedReading("new", 1, 901.0, b"new", unsynced_boot_s=99.0), now=1)
    assert transport.properties == {b"old": (), b"new": (("age-ms", "1000"),)}
