"""Readings due over a window, minute by minute at the interval of then (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hub.read import Minute, expected_readings

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def minute(i: int, readings: int, covered_s: float, interval_max: float) -> Minute:
    return Minute(T0 + timedelta(minutes=i), readings, covered_s, interval_max)


def test_a_steady_stream_expects_what_it_holds_and_one_missing_reading_shows() -> None:
    full = [minute(i, 60, 60.0, 1.0) for i in range(3)]
    assert expected_readings(T0, T0 + timedelta(minutes=3), full) == 180
    one_short = [minute(0, 60, 60.0, 1.0), minute(1, 59, 59.0, 1.0), minute(2, 60, 60.0, 1.0)]
    assert expected_readings(T0, T0 + timedelta(minutes=3), one_short) == 180


def test_a_change_of_interval_overrunning_a_minute_cancels_its_neighbours_shortfall() -> None:
    # 1 s until 10:01:37, then 10 s, each reading stamped at the start of what it covers:
    # 10:01's 37 + 3 readings cover 67 s (the last runs 7 s into 10:02), and 10:02 up to
    # the window's end at 10:02:37 holds 3 readings (:07, :17, :27) covering 30 of 37 s.
    minutes = [minute(0, 60, 60.0, 1.0), minute(1, 40, 67.0, 10.0), minute(2, 3, 30.0, 10.0)]
    end = T0 + timedelta(minutes=2, seconds=37)
    assert expected_readings(T0, end, minutes) == 103
    # A reading really missing at 10 s (:17) still shows, beside the overrun.
    minutes[2] = minute(2, 2, 20.0, 10.0)
    assert expected_readings(T0, end, minutes) == 103


def test_silent_minutes_are_due_at_the_interval_the_device_came_back_with() -> None:
    minutes = [minute(0, 60, 60.0, 1.0), minute(3, 12, 60.0, 5.0)]
    # 10:01 and 10:02 silent: 120 s at 5 s.
    assert expected_readings(T0, T0 + timedelta(minutes=4), minutes) == 60 + 24 + 12
    # Silent at the end: at the last interval; a window without readings: at ``before``'s.
    assert expected_readings(T0, T0 + timedelta(minutes=6), minutes) == 60 + 24 + 12 + 24
    assert expected_readings(T0, T0 + timedelta(minutes=1), [],
                             minute(-5, 30, 60.0, 2.0)) == 30
