"""Settings changed remotely: parsing, checking, merging and the report (agent/remote.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.remote import (
    BOUNDS,
    FILE_NAME,
    Refused,
    RemoteState,
    apply_change,
    config_message,
    effective,
    load_state,
    parse_set,
    refusal,
    save_state,
    state_from_json,
)
from shared.config import AgentSettings

LOCAL = {"interval_s": 1.0, "process_period_s": 10.0, "process_top_n": 10}


@pytest.mark.parametrize(("setting", "payload", "want"), [
    ("interval_s", b"5", {"interval_s": 5.0}),
    ("interval_s", b"0.1", {"interval_s": 0.1}),
    ("interval_s", b" 3600 ", {"interval_s": 3600.0}),
    ("interval_s", b"null", {"interval_s": None}),
    ("process_period_s", b"0", {"process_period_s": 0.0}),
    ("process_period_s", b"1", {"process_period_s": 1.0}),
    ("process_top_n", b"50", {"process_top_n": 50}),
    ("process_top_n", b"20.0", {"process_top_n": 20}),
    (None, b'{"interval_s": 2, "process_top_n": 3}', {"interval_s": 2.0, "process_top_n": 3}),
    (None, b"{}", {}),
    (None, b"", {}),
    ("interval_s", b"", {}),
])
def test_parse_set_accepts_values_in_bounds(setting: str | None, payload: bytes,
                                            want: dict[str, object]) -> None:
    change = parse_set(setting, payload)
    assert change == want
    assert [type(v) for v in change.values()] == [type(v) for v in want.values()]


@pytest.mark.parametrize(("setting", "payload", "reason"), [
    ("interval_s", b"0.09", "interval_s: 0.09 is out of bounds (from 0.1 s to 3600 s)"),
    ("interval_s", b"3601", "out of bounds"),
    ("interval_s", b"0", "out of bounds"),
    ("interval_s", b"-1", "out of bounds"),
    ("interval_s", b'"5"', 'interval_s: "5" is not a number'),
    ("interval_s", b"true", "is not a number"),
    ("interval_s", b"NaN", "is not a number"),
    ("interval_s", b"Infinity", "is not a number"),
    ("interval_s", b"five", "not JSON: 'five'"),
    ("interval_s", b"\xff\xfe", "not JSON"),
    ("process_period_s", b"0.5", "0 (off) or from 1 s to 3600 s"),
    ("process_top_n", b"0", "process_top_n: 0 is out of bounds (from 1 to 50)"),
    ("process_top_n", b"51", "out of bounds"),
    ("process_top_n", b"2.5", "process_top_n: 2.5 is not a whole number"),
    ("colour", b"5", "unknown setting 'colour' (known: interval_s, process_period_s, "
                     "process_top_n)"),
    (None, b"[1, 2]", "not a JSON object"),
    (None, b"5", "not a JSON object"),
    (None, b"{bad", "not JSON"),
])
def test_parse_set_refuses_with_a_reason(setting: str | None, payload: bytes,
                                         reason: str) -> None:
    with pytest.raises(Refused) as caught:
        parse_set(setting, payload)
    assert reason in caught.value.reason


def test_a_document_with_one_bad_field_is_refused_whole_naming_every_problem() -> None:
    with pytest.raises(Refused) as caught:
        parse_set(None, b'{"interval_s": 2, "process_top_n": 99, "x": 1}')
    reason = caught.value.reason
    assert "process_top_n: 99 is out of bounds" in reason and "unknown setting 'x'" in reason
    assert reason.endswith("(nothing changed)") and "interval_s" not in reason.split(";")[0]


def test_apply_change_sets_and_null_removes() -> None:
    remote = apply_change({}, {"interval_s": 5.0, "process_top_n": 3})
    assert remote == {"interval_s": 5.0, "process_top_n": 3}
    assert apply_change(remote, {"interval_s": None}) == {"process_top_n": 3}
    assert apply_change(remote, {}) == remote


def test_remote_values_win_over_local_ones_and_say_so() -> None:
    values, sources = effective(LOCAL, {"interval_s": 5.0})
    assert values == {"interval_s": 5.0, "process_period_s": 10.0, "process_top_n": 10}
    assert sources == {"interval_s": "remote", "process_period_s": "local",
                       "process_top_n": "local"}


def test_every_remote_setting_is_an_agent_setting_and_its_default_is_in_bounds() -> None:
    defaults = AgentSettings()
    for name, bound in BOUNDS.items():
        value = getattr(defaults, name)
        assert isinstance(value, bound.kind)
        assert bound.low <= value <= bound.high


def test_config_message_reports_settings_sources_bounds_and_the_last_refusal() -> None:
    state = RemoteState({"process_top_n": 3}, changed_at=100.0,
                        last_refusal=refusal(101.0, "p/d/set", b"x" * 500, "not JSON"))
    message = config_message("dev 1", LOCAL, state)
    assert message["settings"] == {"interval_s": 1.0, "process_period_s": 10.0,
                                   "process_top_n": 3}
    assert message["source"]["process_top_n"] == "remote"
    assert message["bounds"]["process_period_s"] == {"min": 1.0, "max": 3600.0,
                                                     "zero_is_off": True, "type": "number"}
    assert message["bounds"]["process_top_n"]["type"] == "integer"
    assert message["last_refusal"] == {"at": 101.0, "topic": "p/d/set", "payload": "x" * 200,
                                       "reason": "not JSON"}
    assert message["v"] == 1 and message["device_id"] == "dev 1"
    json.dumps(message, allow_nan=False)  # valid JSON


def test_state_survives_a_save_and_load(tmp_path: Path) -> None:
    state = RemoteState({"interval_s": 0.5}, 12.5, refusal(13.0, "t", b"p", "why"))
    assert save_state(tmp_path / "st", state)
    assert load_state(tmp_path / "st") == state
    assert not (tmp_path / "st" / (FILE_NAME + ".partial")).exists()


def test_a_missing_or_broken_state_file_means_no_remote_setting(tmp_path: Path) -> None:
    assert load_state(tmp_path) == RemoteState()
    (tmp_path / FILE_NAME).write_text("{not json")
    assert load_state(tmp_path) == RemoteState()


def test_a_kept_value_no_longer_in_bounds_is_dropped() -> None:
    state = state_from_json({"settings": {"interval_s": 0.01, "process_top_n": 5, "old": 1},
                             "changed_at": "yesterday", "last_refusal": {"at": 1}})
    assert state == RemoteState({"process_top_n": 5})
    assert state_from_json([1]) == RemoteState()
