"""Alert rules as pure functions: readings and device states in, changes out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hub.alerts import (
    DEFAULT_RULES,
    MIB,
    DeviceState,
    OpenAlert,
    Reading,
    Rule,
    Run,
    SessionSpan,
    alert_payload,
    evaluate,
    fold,
    reading_values,
    rules_from_table,
    window_s,
)

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TEMP = Rule("cpu_temperature_high", "above", "cpu_celsius", 80.0, 60.0, 75.0, unit="°C",
            description="CPU temperature high")


def online(now: datetime = T0, last: datetime | None = T0) -> DeviceState:
    return DeviceState("pi-1", "online", T0 - timedelta(hours=1), 1.0, last)


def temps(values: list[float | None], start: datetime = T0) -> list[Reading]:
    return [Reading(start + timedelta(seconds=i), {"cpu_celsius": v})
            for i, v in enumerate(values)]


def by_name(name: str) -> Rule:
    return next(r for r in DEFAULT_RULES if r.name == name)


def test_threshold_alert_opens_only_after_the_duration_has_passed() -> None:
    short = temps([85.0] * 60)  # 59 s from first to last
    assert evaluate([TEMP], online(), fold([TEMP], short), {}, T0) == []
    long = temps([85.0] * 61)
    (change,) = evaluate([TEMP], online(), fold([TEMP], long), {}, T0)
    assert change.action == "open" and change.started_at == T0
    assert change.peak_value == 85.0 and "peaked at 85.0 °C" in change.message


def test_a_dip_below_the_threshold_restarts_the_duration() -> None:
    readings = temps([85.0] * 40 + [79.0] + [85.0] * 40)
    assert evaluate([TEMP], online(), fold([TEMP], readings), {}, T0) == []


def test_open_alert_stays_open_above_the_clear_level_and_closes_below_it() -> None:
    opened = {"cpu_temperature_high": OpenAlert("pi-1", "cpu_temperature_high", T0, 90.0)}
    hovering = temps([78.0, 77.0])
    assert evaluate([TEMP], online(), fold([TEMP], hovering), opened, T0) == []
    cooled = temps([78.0, 74.0])
    (change,) = evaluate([TEMP], online(), fold([TEMP], cooled), opened, T0)
    assert change.action == "close" and change.ended_at == T0 + timedelta(seconds=1)
    assert change.peak_value == 90.0


def test_open_alert_reports_a_new_peak() -> None:
    opened = {"cpu_temperature_high": OpenAlert("pi-1", "cpu_temperature_high", T0, 85.0)}
    runs = fold([TEMP], temps([86.0, 92.5, 88.0]))
    (change,) = evaluate([TEMP], online(), runs, opened, T0)
    assert change.action == "update" and change.peak_value == 92.5
    assert change.started_at == T0 and change.value == 88.0


def test_missing_sensor_never_fires() -> None:
    assert evaluate([TEMP], online(), fold([TEMP], temps([None] * 100)), {}, T0) == []


def test_under_voltage_fires_on_the_first_reading() -> None:
    values = reading_values({"throttling_under_voltage_now": True})
    rules = [by_name("under_voltage")]
    (change,) = evaluate(rules, online(), fold(rules, [Reading(T0, values)]), {}, T0)
    assert change.action == "open" and change.value == 1.0


def test_throttling_flags_combine_and_unknown_flags_are_none() -> None:
    assert reading_values({"throttling_freq_capped_now": True,
                           "throttling_throttled_now": False})["throttled"] == 1.0
    assert reading_values({})["throttled"] is None
    assert reading_values({"memory_swap_in_bytes_per_s": 3.0,
                           "memory_swap_out_bytes_per_s": None})["swap_bytes_per_s"] == 3.0


def test_swap_thrashing_uses_in_plus_out_rate() -> None:
    rule = by_name("swap_thrashing")
    rows = [Reading(T0 + timedelta(seconds=i),
                    reading_values({"memory_swap_in_bytes_per_s": 0.6 * MIB,
                                    "memory_swap_out_bytes_per_s": 0.6 * MIB}))
            for i in range(61)]
    (change,) = evaluate([rule], online(), fold([rule], rows), {}, T0)
    assert change.action == "open" and "1.2 MiB/s" in change.message


def test_device_offline_longer_than_n_intervals_opens_and_closes_when_back() -> None:
    rule = by_name("device_offline")  # 60 intervals
    since = T0 - timedelta(seconds=61)
    offline = DeviceState("pi-1", "offline", since, 1.0, since)
    (change,) = evaluate([rule], offline, {}, {}, T0)
    assert change.action == "open" and change.started_at == since
    assert evaluate([rule], offline, {}, {}, since + timedelta(seconds=30)) == []
    back = evaluate([rule], online(), {}, {"device_offline": OpenAlert(
        "pi-1", "device_offline", since, 61.0)}, T0)
    assert [c.action for c in back] == ["close"]


def test_offline_interval_scales_with_the_device_interval() -> None:
    rule = by_name("device_offline")
    since = T0 - timedelta(seconds=200)
    slow = DeviceState("pi-1", "offline", since, 10.0, since)  # 60 intervals = 600 s
    assert evaluate([rule], slow, {}, {}, T0) == []


def test_no_data_while_online_opens_after_n_intervals_of_silence() -> None:
    rule = by_name("no_data")  # 10 intervals
    last = T0 - timedelta(seconds=11)
    (change,) = evaluate([rule], online(last=last), {}, {}, T0)
    assert change.action == "open" and change.started_at == last + timedelta(seconds=1)
    assert evaluate([rule], online(last=T0 - timedelta(seconds=5)), {}, {}, T0) == []


def test_no_data_does_not_fire_for_an_offline_device() -> None:
    rule = by_name("no_data")
    offline = DeviceState("pi-1", "offline", T0 - timedelta(hours=1), 1.0,
                          T0 - timedelta(hours=1))
    assert evaluate([rule], offline, {}, {}, T0) == []


def test_disabled_rule_never_fires() -> None:
    (rule,) = [r for r in rules_from_table({"under_voltage": {"enabled": False}})
               if r.name == "under_voltage"]
    values = reading_values({"throttling_under_voltage_now": True})
    assert evaluate([rule], online(), fold([rule], [Reading(T0, values)]), {}, T0) == []


def test_rules_table_overrides_thresholds() -> None:
    rules = {r.name: r for r in rules_from_table(
        {"cpu_temperature_high": {"threshold": 70, "duration_s": 5}})}
    assert rules["cpu_temperature_high"].threshold == 70.0
    assert rules["cpu_temperature_high"].duration_s == 5.0
    assert rules["memory_pressure"] == by_name("memory_pressure")


@pytest.mark.parametrize(("table", "message"), [
    ({"cpu_hot": {}}, "unknown alert rule 'cpu_hot'"),
    ({"no_data": {"threshold": "ten"}}, "no_data.threshold = 'ten' is not a number"),
    ({"no_data": {"enabled": 1}}, "no_data.enabled = 1 is not true or false"),
    ({"no_data": {"colour": 1}}, "no_data.colour is not a setting of a rule"),
    ({"no_data": 5}, "must be a table"),
])
def test_rules_table_rejects_mistakes_with_a_clear_message(table: dict[str, object],
                                                           message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        rules_from_table(table)


def test_window_covers_the_longest_enabled_duration() -> None:
    assert window_s(DEFAULT_RULES) >= max(r.duration_s for r in DEFAULT_RULES)


def test_payload_of_an_open_alert_carries_start_and_peak() -> None:
    (change,) = evaluate([TEMP], online(), fold([TEMP], temps([85.0] * 61)), {}, T0)
    payload = alert_payload(change, TEMP)
    assert payload["started_at"] == T0.isoformat() and payload["peak_value"] == 85.0
    assert payload["unit"] == "°C"


# --- duplicate_device -----------------------------------------------------------------------
def sessions_state(*spans: SessionSpan) -> DeviceState:
    return DeviceState("pi-1", "online", T0 - timedelta(hours=1), 1.0, T0, spans)


def span(session: str, host: str | None, start_s: float, end_s: float) -> SessionSpan:
    return SessionSpan(session, host, T0 + timedelta(seconds=start_s),
                       T0 + timedelta(seconds=end_s))


def test_two_machines_sending_at_once_raise_one_alert_naming_both_hostnames():
    rule = by_name("duplicate_device")
    device = sessions_state(span("aaaa1111", "pi-kitchen", 0, 60), span("bbbb2222", "pi-shed",
                                                                        5, 61))
    (change,) = evaluate([rule], device, {}, {}, T0 + timedelta(seconds=61))
    assert change.action == "open" and change.rule == "duplicate_device"
    assert "'pi-kitchen'" in change.message and "'pi-shed'" in change.message
    assert "own device_id" in change.message
    assert change.started_at == T0 + timedelta(seconds=5)


def test_copies_of_one_image_with_one_hostname_are_still_told_apart():
    device = sessions_state(span("aaaa1111", "raspberrypi", 0, 60),
                            span("bbbb2222", "raspberrypi", 0, 60))
    (change,) = evaluate([by_name("duplicate_device")], device, {}, {}, T0)
    assert "same hostname" in change.message


def test_a_restart_is_not_a_duplicate():
    # One machine: the new session starts after the old one's last reading (even when the
    # old one's spooled readings arrive while the new one runs).
    device = sessions_state(span("old", "pi", 0, 30), span("new", "pi", 31, 90))
    assert evaluate([by_name("duplicate_device")], device, {}, {}, T0) == []


def test_an_overlap_of_an_interval_or_two_is_not_a_duplicate():
    # A clock stepped back by NTP between two runs of one agent.
    device = sessions_state(span("old", "pi", 0, 30), span("new", "pi", 28.5, 90))
    assert evaluate([by_name("duplicate_device")], device, {}, {}, T0) == []


def test_the_duplicate_alert_closes_when_one_machine_stops():
    rule = by_name("duplicate_device")
    open_alert = {rule.name: OpenAlert("pi-1", rule.name, T0, 2.0)}
    device = sessions_state(span("bbbb2222", "pi-shed", 5, 200))
    (change,) = evaluate([rule], device, {}, open_alert, T0 + timedelta(seconds=200))
    assert change.action == "close"


def scores(values: list[float | None]) -> dict[str, Run]:
    """The anomaly rule's run over readings one second apart with these scores."""
    return fold([by_name("anomaly")], [Reading(T0 + timedelta(seconds=i), {"anomaly_score": v})
                                       for i, v in enumerate(values)])


def test_anomaly_alert_opens_after_its_duration_and_closes_below_its_clear_level() -> None:
    rule = by_name("anomaly")
    d = int(rule.duration_s)
    assert reading_values({"anomaly_score": 0.7})["anomaly_score"] == 0.7
    assert evaluate([rule], online(), scores([0.8] * d), {}, T0) == []  # d - 1 seconds
    gap = [0.8] * (d // 2) + [None] + [0.8] * (d - d // 2)
    assert evaluate([rule], online(), scores(gap), {}, T0) == []
    (change,) = evaluate([rule], online(), scores([0.1, *[0.6] * (d - 2), 0.9, 0.7, 0.6]), {},
                         T0)
    assert change.action == "open" and change.started_at == T0 + timedelta(seconds=1)
    assert "scored up to 0.90" in change.message and "threshold 0.5" in change.message
    opened = {"anomaly": OpenAlert("pi-1", "anomaly", T0, 0.9)}
    assert evaluate([rule], online(), scores([0.9, 0.4]), opened, T0) == []  # above clear
    (closed,) = evaluate([rule], online(), scores([0.9, 0.2]), opened, T0)
    assert closed.action == "close" and closed.ended_at == T0 + timedelta(seconds=1)


# --- runs: readings folded in a round at a time ---------------------------------------------
def test_readings_folded_round_by_round_give_the_runs_of_one_fold() -> None:
    readings = temps([70.0, *[85.0] * 30, 79.0, *[90.0] * 40, 74.0, 73.0, None, 81.0])
    whole = fold([TEMP], readings)
    rounds: dict[str, Run] = {}
    for start in range(0, len(readings), 7):
        fold([TEMP], readings[start:start + 7], rounds)
    assert rounds == whole
    run = whole[TEMP.name]
    assert run.since == run.held_since == readings[-1].ts and run.value == 81.0
    assert run.cleared_at == readings[-4].ts  # back within clear (74) after the 90s


def test_a_run_longer_than_any_window_keeps_its_start_and_worst_value() -> None:
    hot = [85.0] * 3600
    hot[100] = 97.0
    (change,) = evaluate([TEMP], online(), fold([TEMP], temps(hot)), {}, T0)
    assert change.started_at == T0 and change.peak_value == 97.0


def test_an_open_alert_closes_at_the_first_reading_back_within_clear_of_an_earlier_round():
    opened = {TEMP.name: OpenAlert("pi-1", TEMP.name, T0, 90.0)}
    runs = fold([TEMP], temps([90.0, 74.0, 73.0]))
    fold([TEMP], temps([72.0], start=T0 + timedelta(seconds=3)), runs)
    (change,) = evaluate([TEMP], online(), runs, opened, T0)
    assert change.action == "close" and change.ended_at == T0 + timedelta(seconds=1)
