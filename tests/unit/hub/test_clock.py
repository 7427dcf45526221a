"""Readings stamped by an unsynchronised clock are placed by the hub's clock, idempotently."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from hub.clock import ClockPlacer, decide_offset, place
from hub.ingest.validate import Accepted, Limits, Rejected, validate
from tests.unit.hub.messages import metrics

RECEIVED = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
BOOT_1970 = datetime(1970, 1, 1, 0, 0, 30, tzinfo=UTC)
LIMITS = Limits(max_age_days=30)


class FakeOffsets:
    """The clock_offsets table: the first offset recorded for a session wins."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[int, str]] = {}
        self.calls = 0

    def clock_offset(self, device_id: str, session_id: str, offset_ms: int, reason: str,
                     decided_at: datetime) -> int:
        self.calls += 1
        self.rows.setdefault((device_id, session_id), (offset_ms, reason))
        return self.rows[(device_id, session_id)][0]


def unsynced(ts: datetime, seq: int = 1, session: str = "s1", synced: bool | None = False):
    message = metrics(seq=seq, epoch_s=ts.timestamp(), session_id=session)
    message["clock_synced"] = synced
    return validate("fp/pi-1/metrics", orjson.dumps(message), RECEIVED, "fp", LIMITS)


def test_the_offset_is_the_clocks_error_measured_with_the_readings_age() -> None:
    # Taken 10 s before it reached the hub, stamped 1970-01-01 00:00:30.
    offset = decide_offset(BOOT_1970, RECEIVED, 10.0, LIMITS)
    assert BOOT_1970 + timedelta(milliseconds=offset.offset_ms) == RECEIVED - timedelta(
        seconds=10)


def test_a_right_clock_that_is_merely_unsynchronised_is_not_moved() -> None:
    # A desktop without NTP: its clock is right; 80 ms is the network, not the clock.
    ts = RECEIVED - timedelta(milliseconds=80)
    assert decide_offset(ts, RECEIVED, 0.0, LIMITS).offset_ms == 0
    # Spooled for an hour, sent with its age: still not moved.
    assert decide_offset(ts - timedelta(hours=1), RECEIVED, 3600.0, LIMITS).offset_ms == 0


def test_without_an_age_only_an_impossible_stamp_is_moved() -> None:
    assert decide_offset(RECEIVED - timedelta(hours=5), RECEIVED, None, LIMITS).offset_ms == 0
    moved = decide_offset(BOOT_1970, RECEIVED, None, LIMITS)
    assert BOOT_1970 + timedelta(milliseconds=moved.offset_ms) == RECEIVED
    assert "older than the 30 days" in moved.reason


def test_placing_keeps_the_agents_stamp() -> None:
    result = unsynced(BOOT_1970)
    assert isinstance(result, Accepted)
    placed = place(result, 1000)
    assert (placed.value.ts, placed.agent_ts) == (BOOT_1970 + timedelta(seconds=1), BOOT_1970)
    assert placed.value.seq == 1 and result.value.ts == BOOT_1970  # a copy, moved
    assert place(result, 0) is result


def test_a_sessions_readings_share_one_offset_so_redeliveries_keep_their_key() -> None:
    store = FakeOffsets()
    placer = ClockPlacer(store, LIMITS)
    first = placer.apply(unsynced(BOOT_1970, seq=1), RECEIVED, 2.0)
    later = placer.apply(unsynced(BOOT_1970 + timedelta(seconds=5), seq=6),
                         RECEIVED + timedelta(seconds=5), 0.5)
    assert isinstance(first, Accepted) and isinstance(later, Accepted)
    assert first.value.ts == RECEIVED - timedelta(seconds=2)
    assert later.value.ts == RECEIVED + timedelta(seconds=3)  # the same offset, not 0.5 s
    assert first.agent_ts == BOOT_1970
    # A restarted hub (an empty cache) redelivered the first reading: the same ts.
    again = ClockPlacer(store, LIMITS).apply(unsynced(BOOT_1970, seq=1),
                                             RECEIVED + timedelta(minutes=3), 0.0)
    assert isinstance(again, Accepted) and again.value.ts == first.value.ts
    assert store.calls == 2  # one look-up per session per hub


def test_synchronised_unknown_and_rejected_messages_pass_unchanged() -> None:
    placer = ClockPlacer(FakeOffsets(), LIMITS)
    for synced in (True, None):
        result = unsynced(RECEIVED, synced=synced)
        assert placer.apply(result, RECEIVED, None) is result
    refused = Rejected("bad", "pi-1")
    assert placer.apply(refused, RECEIVED, None) is refused


def test_a_clock_that_jumps_within_a_session_is_quarantined_not_misfiled() -> None:
    placer = ClockPlacer(FakeOffsets(), LIMITS)
    assert isinstance(placer.apply(unsynced(BOOT_1970), RECEIVED, 0.0), Accepted)
    # Someone set the date by hand a year ahead: the session's offset no longer fits.
    jumped = placer.apply(unsynced(BOOT_1970 + timedelta(days=365), seq=2), RECEIVED, 0.0)
    assert isinstance(jumped, Rejected) and "ahead of the hub's clock" in jumped.reason


def test_the_age_adds_the_agents_wait_and_the_brokers() -> None:
    from hub.ingest.receive import age_from_properties
    from shared.schema import AGE_EXPIRY_S

    # Held 1.5 s by the agent, then 120 s at the broker while the hub was away.
    assert age_from_properties((("age-ms", "1500"),), AGE_EXPIRY_S - 120) == 121.5
    assert age_from_properties((("age-ms", "1500"),), None) == 1.5
    assert age_from_properties((), AGE_EXPIRY_S - 120) is None  # no age: not the agent's
    assert age_from_properties((("age-ms", "soon"),), None) is None
    assert age_from_properties((("age-ms", "-5"),), None) is None
